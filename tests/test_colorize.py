"""Colorization: Lab colours, the bins and their rebalancing, soft targets, a run end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from ssl_jax.tasks import colorize


def test_lab_round_trips_and_matches_known_colours():
  rgb = np.random.default_rng(0).random((4, 8, 8, 3))
  lab = colorize.rgb_to_lab(rgb, np)
  np.testing.assert_allclose(np.asarray(colorize.lab_to_rgb(jnp.asarray(lab, jnp.float32))), rgb, atol=1e-4)
  np.testing.assert_allclose(np.asarray(colorize.rgb_to_lab(jnp.asarray(rgb, jnp.float32))), lab, atol=1e-3)
  known = colorize.rgb_to_lab(np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]]), np)
  np.testing.assert_allclose(known, [[100, 0, 0], [53.24, 80.09, 67.20], [32.30, 79.19, -107.86], [53.39, 0, 0]],
                             atol=0.02)


def test_the_encoder_sees_the_lightness_and_no_colour():
  images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  lab, grey_lab = colorize.rgb_to_lab(images), colorize.rgb_to_lab(colorize.grey(images))
  np.testing.assert_allclose(grey_lab[..., 0], lab[..., 0], atol=2e-3)
  assert np.abs(grey_lab[..., 1:]).max() < 2e-3 and np.abs(lab[..., 1:]).max() > 20
  # Two images of one lightness and other colours (inside the gamut) look the same to the encoder.
  rng = np.random.default_rng(3)
  lightness = rng.uniform(30, 70, (2, 16, 16, 1))
  one, other = (np.concatenate([lightness, rng.uniform(-15, 15, (2, 16, 16, 2))], -1) for _ in range(2))
  one, other = (colorize.lab_to_rgb(jnp.asarray(x, jnp.float32)) for x in (one, other))
  assert np.abs(np.asarray(one - other)).max() > 0.05
  np.testing.assert_allclose(np.asarray(colorize.grey(one)), np.asarray(colorize.grey(other)), atol=1e-4)


def test_the_bins_cover_the_srgb_gamut_and_nothing_else():
  bins = colorize.ab_bins(10.0)
  assert len(bins) == 268 and not bins.flags.writeable
  assert len(colorize.ab_bins(20.0)) < len(bins)
  rng = np.random.default_rng(1)
  corners = np.array(np.meshgrid([0, 255], [0, 255], [0, 255])).reshape(3, -1).T
  colours = np.concatenate([rng.integers(0, 256, (100_000, 3)), corners]) / 255.0   # 8-bit, inside and on the cube
  ab = colorize.rgb_to_lab(colours, np)[:, 1:]
  nearest = colorize.nearest_bins(ab, bins, 10.0)
  assert np.abs(bins[nearest] - ab).max() <= 5.0 + 1e-6    # every colour sits in its own bin's square
  assert set(map(tuple, np.floor(bins / 10).astype(int))) >= set(map(tuple, np.floor(ab / 10).astype(int)))
  # The look-up finds the nearest bin, also for colours outside every bin's square.
  anywhere = np.concatenate([ab[:2000], rng.uniform(-130, 130, (2000, 2))])
  distances = ((anywhere[:, None] - bins) ** 2).sum(-1)
  found = colorize.nearest_bins(anywhere, bins, 10.0)
  np.testing.assert_allclose(distances[np.arange(len(anywhere)), found], distances.min(1))


def test_soft_targets_spread_over_the_nearest_bins():
  bins = jnp.asarray(colorize.ab_bins(10.0))
  ab = jnp.asarray([[3.0, -4.0], [42.0, 41.0]])
  nearest, weights = colorize.soft_targets(ab, bins, 5.0)
  assert nearest.shape == weights.shape == (2, 5)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
  distances = ((ab[:, None] - bins[nearest]) ** 2).sum(-1)
  assert (jnp.diff(distances, axis=-1) >= 0).all() and (jnp.diff(weights, axis=-1) <= 0).all()
  np.testing.assert_array_equal(nearest[:, 0], colorize.nearest_bins(np.asarray(ab), np.asarray(bins), 10.0))


def test_rebalancing_weighs_rare_colours_up_and_averages_one():
  rng = np.random.default_rng(2)
  images = (rng.random((40, 8, 8, 3)) * 255).astype(np.uint8)
  images[:30] = images[:30].mean(-1, keepdims=True).astype(np.uint8)     # mostly grey: a = b = 0 common
  weights = colorize.rebalancing_weights(images, 2, 10.0, 5.0, 0.5)
  bins = colorize.ab_bins(10.0)
  grey_bin = colorize.nearest_bins(np.zeros((1, 2)), bins, 10.0)[0]
  red_bin = colorize.nearest_bins(np.array([[80.0, 67.0]]), bins, 10.0)[0]
  assert weights[grey_bin] < 1.0 < weights[red_bin]
  assert weights.max() / weights.min() <= 1 / 0.5 / (0.5 / len(bins)) * 1.0001     # bounded by the uniform's share
  np.testing.assert_allclose(colorize.rebalancing_weights(images, 2, 10.0, 5.0, 1.0), 1.0, rtol=1e-5)  # no rebalancing


def test_the_loss_learns_colour_from_lightness(tmp_path):
  from ssl_jax import trainer  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  config = tiny_config('', 'vit_colorize.py', **{'data.image_size': 16, 'train.batch_size': 8})
  s = trainer.setup(config, str(tmp_path / 'learns'), compile_steps=False)
  assert s.config.model.num_classes == 268 and s.model.num_classes == 268
  batch = s.data.train.batch(0)
  params = s.init_fn(jax.random.key(0)).params
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    (loss, m), grads = jax.value_and_grad(lambda p: s.loss_fn(s.model, p, batch, jax.random.key(0), False),
                                          has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss, m

  first = None
  for _ in range(80):
    params, opt, loss, m = step(params, opt)
    first = first or (float(loss), float(m['accuracy']))
  assert float(loss) < 0.5 * first[0] and float(m['accuracy']) > first[1] + 0.3   # at the start: 3.67, 0.0


def test_a_colorization_run_writes_its_pictures_and_probes_grey_images(tmp_path, monkeypatch):
  from ssl_jax import inference, trainer  # pylint: disable=import-outside-toplevel
  from ssl_jax.tasks import vision  # pylint: disable=import-outside-toplevel
  settings = {'train.steps': 2, 'train.checkpoint_every': 2, 'train.eval_every': 2, 'train.batch_size': 8,
              'train.eval_batches': 1, 'data.image_size': 16}
  workdir = str(tmp_path / 'colorize')
  last = trainer.train_and_evaluate(tiny_config('', 'vit_colorize.py', **settings), workdir)
  assert 'train_accuracy' in last and 'eval_accuracy' in last and np.isfinite(last['eval_loss'])
  assert os.path.getsize(os.path.join(workdir, 'colorizations.png')) > 1000
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['num_classes'] == 268          # the run's resolved config
  # What the probe's encoder is given, recorded from inside its compiled program.
  seen, encoder_of = [], vision.mean_patch_features

  def spied(setup, params):
    encode = encoder_of(setup, params)

    def spy(images):
      jax.debug.callback(lambda x: seen.append(np.asarray(x)), images)
      return encode(images)
    return spy

  monkeypatch.setattr(vision, 'mean_patch_features', spied)
  result = inference.eval_command(tiny_config('', 'vit_colorize.py', **settings), workdir)
  assert 0.0 <= result['probe_accuracy'] <= 1.0 and result['probe_C'] > 0
  seen = np.concatenate(seen)                                   # (N, H, W, 3)
  assert len(seen) >= 16 and seen.std() > 0.05                 # the probe's images, not a blank
  assert np.abs(seen - seen.mean(-1, keepdims=True)).max() < 2e-3, 'the probe saw colour'   # R = G = B: grey


@pytest.mark.parametrize('override, words', [
    ({'model.patch': 3, 'data.image_size': 15}, 'model.patch=3 must be even'),
    ({'model.num_classes': 200}, 'colorize.grid=10 makes 268 colour bins'),
])
def test_a_head_that_cannot_colour_its_cells_is_a_config_error(tmp_path, override, words):
  from ssl_jax import trainer  # pylint: disable=import-outside-toplevel
  from ssl_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel
  with pytest.raises(ConfigError, match=words):
    trainer.setup(tiny_config('', 'vit_colorize.py', **{'train.batch_size': 8, **override}), str(tmp_path / 'w'),
                  compile_steps=False)
