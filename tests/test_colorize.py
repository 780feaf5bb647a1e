"""Colorization: Lab colours, the bins and their rebalancing, soft targets, a run end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

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
  assert len(bins) == 265 and not bins.flags.writeable
  assert len(colorize.ab_bins(20.0)) < len(bins)
  colours = np.random.default_rng(1).random((20_000, 3))
  ab = colorize.rgb_to_lab(colours, np)[:, 1:]
  nearest = bins[colorize.nearest_bins(ab, bins)]
  assert np.abs(nearest - ab).max() <= 5.0 + 1e-6      # every colour sits in its own bin's square
  assert set(map(tuple, np.floor(bins / 10).astype(int))) >= set(map(tuple, np.floor(ab / 10).astype(int)))


def test_soft_targets_spread_over_the_nearest_bins():
  bins = jnp.asarray(colorize.ab_bins(10.0))
  ab = jnp.asarray([[3.0, -4.0], [40.0, 41.0]])
  nearest, weights = colorize.soft_targets(ab, bins, 5.0)
  assert nearest.shape == weights.shape == (2, 5)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
  distances = ((ab[:, None] - bins[nearest]) ** 2).sum(-1)
  assert (jnp.diff(distances, axis=-1) >= 0).all() and (jnp.diff(weights, axis=-1) <= 0).all()
  np.testing.assert_array_equal(nearest[:, 0], colorize.nearest_bins(np.asarray(ab), np.asarray(bins)))


def test_rebalancing_weighs_rare_colours_up_and_averages_one():
  rng = np.random.default_rng(2)
  images = (rng.random((40, 8, 8, 3)) * 255).astype(np.uint8)
  images[:30] = images[:30].mean(-1, keepdims=True).astype(np.uint8)     # mostly grey: a = b = 0 common
  weights = colorize.rebalancing_weights(images, 2, 10.0, 5.0, 0.5)
  bins = colorize.ab_bins(10.0)
  grey_bin = colorize.nearest_bins(np.zeros((1, 2)), bins)[0]
  red_bin = colorize.nearest_bins(np.array([[80.0, 67.0]]), bins)[0]
  assert weights[grey_bin] < 1.0 < weights[red_bin]
  assert weights.max() / weights.min() <= 1 / 0.5 / (0.5 / len(bins)) * 1.0001     # bounded by the uniform's share
  np.testing.assert_allclose(colorize.rebalancing_weights(images, 2, 10.0, 5.0, 1.0), 1.0, rtol=1e-5)  # no rebalancing


def test_the_loss_learns_colour_from_lightness():
  from ssl_jax import trainer  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  config = tiny_config('', 'vit_colorize.py', **{'data.image_size': 16, 'train.batch_size': 8})
  s = trainer.setup(config, os.path.join(os.environ.get('TMPDIR', '/tmp'), 'colorize_learns'), compile_steps=False)
  assert s.config.model.num_classes == 265 and s.model.num_classes == 265
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
  for _ in range(40):
    params, opt, loss, m = step(params, opt)
    first = float(loss) if first is None else first
  assert float(loss) < 0.6 * first and float(m['accuracy']) > 0.2


def test_a_colorization_run_writes_its_pictures_and_probes_grey_images(tmp_path):
  from ssl_jax import inference, trainer  # pylint: disable=import-outside-toplevel
  settings = {'train.steps': 2, 'train.checkpoint_every': 2, 'train.eval_every': 2, 'train.batch_size': 8,
              'train.eval_batches': 1, 'data.image_size': 16}
  workdir = str(tmp_path / 'colorize')
  last = trainer.train_and_evaluate(tiny_config('', 'vit_colorize.py', **settings), workdir)
  assert 'train_accuracy' in last and 'eval_accuracy' in last and np.isfinite(last['eval_loss'])
  assert os.path.getsize(os.path.join(workdir, 'colorizations.png')) > 1000
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['num_classes'] == 265          # the run's resolved config
  result = inference.eval_command(tiny_config('', 'vit_colorize.py', **settings), workdir)
  assert 0.0 <= result['probe_accuracy'] <= 1.0 and result['probe_C'] > 0
