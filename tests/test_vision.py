"""ViT, the MAE objective, image data and a resumed vision run."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.data import images as images_lib
from ssl_jax.models import sizes, vit
from ssl_jax.models.layers import TransformerConfig
from ssl_jax.tasks import masked_image
from conftest import SHARED_DATA, read_metrics, tiny_config

CFG = TransformerConfig(num_layers=2, num_heads=2, d_model=32, d_ff=64, vocab_size=0, max_len=1, ln_eps=1e-6)
DEC = TransformerConfig(num_layers=1, num_heads=2, d_model=16, d_ff=32, vocab_size=0, max_len=1, ln_eps=1e-6)


def test_patchify_round_trip_and_named_sizes():
  images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  patches = vit.patchify(images, 4)
  assert patches.shape == (2, 64, 48)
  np.testing.assert_array_equal(patches[0, 1], images[0, :4, 4:8].reshape(-1))   # row-major patches
  np.testing.assert_array_equal(vit.unpatchify(patches, 4, 32, 32), images)
  assert sizes.decode('vit:S/4') == dict(num_layers=12, num_heads=6, d_model=384, d_ff=1536, patch=4)
  with pytest.raises(ValueError, match='vit:S/4'):
    sizes.decode('vit:XL/4')


def test_vit_and_mae_shapes():
  images = jnp.zeros((3, 32, 32, 3))
  encoder = vit.ViT(CFG, 4, 32)
  params = nn.meta.unbox(encoder.init(jax.random.key(0), images)['params'])
  assert encoder.apply({'params': params}, images).shape == (3, 65, 32)            # class token + 64 patches
  visible = jnp.tile(jnp.arange(16)[None], (3, 1))
  assert encoder.apply({'params': params}, images, visible).shape == (3, 17, 32)
  mae = vit.MAE(CFG, DEC, 4, 32)
  params = nn.meta.unbox(mae.init(jax.random.key(0), images, visible)['params'])
  assert mae.apply({'params': params}, images, visible).shape == (3, 64, 48)


def test_mask_ratio_is_exact_and_masks_follow_the_example_index():
  rng = jax.random.key(3)
  visible, hidden = masked_image.draw_visible(rng, jnp.arange(16), 64, masked_image.num_visible(64, 0.75))
  assert visible.shape == (16, 16)
  np.testing.assert_array_equal(hidden.sum(1), np.full(16, 48))                    # exactly 75% hidden
  assert not np.asarray(hidden)[np.arange(16)[:, None], np.asarray(visible)].any()    # visible ones are not hidden
  again, _ = masked_image.draw_visible(rng, jnp.arange(8, 24), 64, 16)
  np.testing.assert_array_equal(again[:8], visible[8:])                               # same index, same mask


def test_reconstruction_loss_ignores_predictions_for_visible_patches():
  target = jax.random.normal(jax.random.key(0), (2, 64, 48))
  pred = jax.random.normal(jax.random.key(1), (2, 64, 48))
  _, hidden = masked_image.draw_visible(jax.random.key(2), jnp.arange(2), 64, 16)
  changed = jnp.where(hidden[..., None], pred, pred + 100.0)                       # only visible ones move
  assert masked_image.reconstruction_loss(changed, target, hidden) == pytest.approx(
      float(masked_image.reconstruction_loss(pred, target, hidden)), rel=1e-6)
  moved_hidden = jnp.where(hidden[..., None], pred + 1.0, pred)
  assert masked_image.reconstruction_loss(moved_hidden, target, hidden) != pytest.approx(
      float(masked_image.reconstruction_loss(pred, target, hidden)), rel=1e-3)


def test_image_folder_and_augmentation_are_deterministic(tmp_path):
  from PIL import Image
  for c in ('cat', 'dog'):
    os.makedirs(tmp_path / c)
    for i in range(3):
      Image.fromarray(np.full((40, 40, 3), 40 * i + (c == 'dog') * 100, np.uint8)).save(tmp_path / c / f'{i}.png')
  images, labels, classes = images_lib.load(str(tmp_path), 32)
  assert images.shape == (6, 32, 32, 3) and classes == ['cat', 'dog'] and list(labels) == [0, 0, 0, 1, 1, 1]
  a = images_lib.ImageBatches(images, labels, 4, seed=0).batch(5)
  b = images_lib.ImageBatches(images, labels, 4, seed=0).batch(5)
  np.testing.assert_array_equal(a['images'], b['images'])
  assert a['images'].dtype == np.float32 and a['images'].max() <= 1.0
  (tmp_path / 'broken').mkdir()
  (tmp_path / 'broken' / 'x.png').write_bytes(b'not an image')
  with pytest.raises(images_lib.DataError, match='not a readable image'):
    images_lib.load(str(tmp_path), 32)


def test_cifar_folder_loads_when_present():
  path = os.path.join(SHARED_DATA, 'cifar10', 'test')
  if not os.path.exists(path):
    pytest.skip(f'{path} is absent: the shared data sets sit beside the repository in CI')
  images, labels, classes = images_lib.load(path, 32)
  assert images.shape == (1000, 32, 32, 3) and len(classes) == 10 and np.bincount(labels).tolist() == [100] * 10


def test_mae_run_resumes_exactly(tmp_path, capfd):
  # Dropout 0.1, and masks and augmentation drawn per (seed, step, example): all must repeat.
  from test_train import assert_resume_is_exact, fresh_losses_from, losses
  settings = {'train.steps': 6, 'train.checkpoint_every': 3, 'train.eval_every': 3, 'train.batch_size': 8,
              'train.eval_batches': 1, 'model.decoder_d_model': 16, 'model.decoder_heads': 2,
              'model.decoder_layers': 1, 'model.d_ff': 64, 'model.dropout': 0.1}
  reference = assert_resume_is_exact(tmp_path, capfd, tiny_config('', 'vit_mae.py', **settings))
  without = fresh_losses_from(tiny_config('', 'vit_mae.py', **{**settings, 'model.dropout': 0.0}), 0, 1)
  assert without[0] != losses(reference)[1]


def test_eval_fits_a_linear_probe_for_the_trained_and_the_random_encoder(tmp_path):
  from ssl_jax import inference, trainer
  settings = {'train.steps': 2, 'train.checkpoint_every': 2, 'train.eval_every': 2, 'train.batch_size': 8,
              'train.eval_batches': 1, 'model.decoder_d_model': 16, 'model.decoder_heads': 2,
              'model.decoder_layers': 1, 'model.d_ff': 64}
  workdir = str(tmp_path / 'mae')
  trainer.train_and_evaluate(tiny_config('', 'vit_mae.py', **settings), workdir)
  assert os.path.getsize(os.path.join(workdir, 'reconstructions.png')) > 1000          # written at the end
  trained = inference.eval_command(tiny_config('', 'vit_mae.py', **settings), workdir)
  random = inference.eval_command(tiny_config('', 'vit_mae.py', **settings, init='random'), workdir)
  assert trained['step'] == 2 and random['step'] == 0 and random['init'] == 'random'
  from ssl_jax import probe
  for result in (trained, random):
    assert 0.0 <= result['probe_accuracy'] <= 1.0
    assert result['probe_C'] in probe.CS and sorted(float(c) for c in result['probe_sweep']) == list(probe.CS)
  logged = read_metrics(workdir)[-2:]
  assert [r.get('probe_accuracy') for r in logged] == [trained['probe_accuracy'], random['probe_accuracy']]


def test_linear_probe_learns_a_separable_problem():
  from ssl_jax import probe
  rng = np.random.default_rng(0)
  x = rng.normal(size=(400, 8)).astype(np.float32)
  y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
  result = probe.linear_probe(x[:300], y[:300], x[300:], y[300:], 2)
  assert result['accuracy'] > 0.95 and result['C'] in probe.CS and len(result['sweep']) == len(probe.CS)


def test_rotation_turns_each_image_by_its_own_quarter_turns():
  from ssl_jax.tasks import rotation
  images = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
  turned = rotation.rotate(images, jnp.array([0, 1, 2, 3]))
  for k in range(4):
    np.testing.assert_array_equal(turned[k], np.rot90(np.asarray(images[k]), k, axes=(0, 1)))
  every, turns = rotation.all_turns(images[:2])                # each image in all four turns, in order
  assert every.shape == (8, 8, 8, 3) and turns.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
  for i in range(8):
    np.testing.assert_array_equal(every[i], np.rot90(np.asarray(images[i // 4]), i % 4, axes=(0, 1)))


def test_rotation_run_trains_and_reports_accuracy(tmp_path):
  from ssl_jax import trainer
  settings = {'train.steps': 2, 'train.checkpoint_every': 2, 'train.eval_every': 2, 'train.batch_size': 8,
              'train.eval_batches': 1, 'model.d_ff': 64}
  last = trainer.train_and_evaluate(tiny_config('', 'vit_rotation.py', **settings), str(tmp_path / 'rot'))
  assert 0.0 <= last['eval_accuracy'] <= 1.0 and 'train_accuracy' in last


def test_jigsaw_permutations_are_far_apart_and_the_same_every_time():
  from ssl_jax.config import ConfigError
  from ssl_jax.tasks import jigsaw
  orders = jigsaw.permutations(100)
  assert orders.shape == (100, 9) and jigsaw.permutations(100) is orders                # cached per count
  np.testing.assert_array_equal(np.sort(orders, 1), np.tile(np.arange(9), (100, 1)))   # each a permutation
  np.testing.assert_array_equal(orders[0], np.arange(9))                               # starts at the identity
  np.testing.assert_array_equal(jigsaw.permutations.__wrapped__(100), orders)          # recomputed: the same
  distances = jigsaw.hamming(orders)[np.triu_indices(100, 1)]
  print(f'100 permutations: Hamming distance min {distances.min()}, mean {distances.mean():.4f}')
  assert distances.min() == 6 and distances.mean() == pytest.approx(8.0269, abs=1e-4)
  assert len({tuple(o) for o in jigsaw.permutations(1000)}) == 1000
  for bad in (0, 1001):
    with pytest.raises(ConfigError, match='num_permutations'):
      jigsaw.permutations(bad)


def test_jigsaw_tiles_puzzles_and_network_shapes():
  from ssl_jax.tasks import jigsaw
  images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  offsets, labels = jigsaw.draw_puzzles(jax.random.key(1), jnp.arange(2), 32, 8, 100)
  assert offsets.shape == (2, 9, 2) and labels.shape == (2,)
  assert int(offsets.min()) >= 0 and int(offsets.max()) <= 2 and 0 <= int(labels.min()) <= int(labels.max()) < 100
  again, _ = jigsaw.draw_puzzles(jax.random.key(1), jnp.arange(1, 3), 32, 8, 100)
  np.testing.assert_array_equal(again[0], offsets[1])                                # same index, same puzzle
  tiles = vit.cut_tiles(images, offsets, 8)
  assert tiles.shape == (2, 9, 8, 8, 3)
  y, x = 1 + 10 + int(offsets[1, 5, 0]), 1 + 20 + int(offsets[1, 5, 1])                # cell (1, 2), 1-pixel margin
  np.testing.assert_array_equal(tiles[1, 5], images[1, y:y + 8, x:x + 8])
  normal = vit.normalise_tiles(tiles)
  np.testing.assert_allclose(normal.mean((2, 3, 4)), 0, atol=1e-5)
  np.testing.assert_allclose(normal.std((2, 3, 4)), 1, atol=1e-3)
  net = vit.JigsawNet(CFG, 4, 32, 8, 100, 64)
  params = nn.meta.unbox(net.init(jax.random.key(0), images)['params'])
  order = jnp.asarray(jigsaw.permutations(100))[labels]
  assert net.apply({'params': params}, images, offsets, order).shape == (2, 100)
  assert net.apply({'params': params}, images, method=net.encode_tiles).shape == (2, 9, 5, 32)


def test_jigsaw_loss_falls_on_a_fixed_batch():
  import optax
  from ssl_jax.tasks import jigsaw
  net = vit.JigsawNet(CFG, 4, 32, 8, 8, 64)
  batch = {'images': jax.random.uniform(jax.random.key(0), (16, 32, 32, 3)), 'index': jnp.arange(16)}
  params = nn.meta.unbox(net.init(jax.random.key(0), batch['images'])['params'])
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt):
    (loss, m), grads = jax.value_and_grad(jigsaw.loss_fn, argnums=1, has_aux=True)(
        net, params, batch, jax.random.key(5), True)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, m

  opt = tx.init(params)
  losses = []
  for _ in range(30):
    params, opt, m = step(params, opt)
    losses.append(float(m['loss']))
  assert losses[0] == pytest.approx(np.log(8), abs=0.3) and losses[-1] < 0.5 * losses[0]


def test_jigsaw_run_trains_and_reports_accuracy(tmp_path):
  from ssl_jax import trainer
  settings = {'train.steps': 2, 'train.checkpoint_every': 2, 'train.eval_every': 2, 'train.batch_size': 8,
              'train.eval_batches': 1, 'model.d_ff': 64, 'jigsaw.hidden': 64}
  last = trainer.train_and_evaluate(tiny_config('', 'vit_jigsaw.py', **settings), str(tmp_path / 'jigsaw'))
  assert 0.0 <= last['eval_accuracy'] <= 1.0 and 'train_accuracy' in last
  assert os.path.getsize(tmp_path / 'jigsaw' / 'jigsaw.png') > 1000                   # puzzles and solutions
  assert last['train_loss'] == pytest.approx(np.log(100), abs=0.5)


def test_inpaint_hides_the_centre_and_weighs_its_border():
  from ssl_jax.tasks import inpaint
  images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  hidden = inpaint.hide_centre(images, 0.5)
  assert hidden.shape == images.shape
  np.testing.assert_allclose(hidden[:, 8:24, 8:24], np.broadcast_to(inpaint.MEAN, (2, 16, 16, 3)))
  outside = np.ones((32, 32), bool)
  outside[8:24, 8:24] = False
  np.testing.assert_array_equal(np.asarray(hidden)[:, outside], np.asarray(images)[:, outside])
  weights = inpaint.loss_weights(32, 0.5, 2, 10.0)
  assert weights.shape == (32, 32) and (weights == 1).sum() == 16 * 16 and (weights == 10).sum() == 20 * 20 - 16 * 16
  assert weights[6, 6] == 10 and weights[5, 5] == 0 and weights[26, 26] == 0 and weights[25, 25] == 10


def test_inpaint_loss_ignores_predictions_outside_the_hole_and_border():
  from ssl_jax.tasks import inpaint
  target = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  pred = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  weights = jnp.asarray(inpaint.loss_weights(32, 0.5, 2, 10.0))
  counted = (weights > 0)[None, :, :, None]
  loss = float(inpaint.reconstruction_loss(pred, target, weights))
  assert float(inpaint.reconstruction_loss(jnp.where(counted, pred, pred + 100.0), target, weights)) == pytest.approx(
      loss, rel=1e-6)
  border_moved = pred.at[:, 6, 10].add(1.0)                       # one pixel of the border, one of the hole
  hole_moved = pred.at[:, 12, 10].add(1.0)
  lb, lh = (float(inpaint.reconstruction_loss(p, target, weights)) for p in (border_moved, hole_moved))
  assert lb != pytest.approx(loss, rel=1e-4) and lh != pytest.approx(loss, rel=1e-4)
  assert inpaint.reconstruction_loss(target, target, weights) == 0.0
  mae = vit.MAE(CFG, DEC, 4, 32)
  params = nn.meta.unbox(mae.init(jax.random.key(0), target)['params'])
  assert inpaint.reconstruct(mae, params, target, 0.5).shape == (2, 32, 32, 3)         # every patch predicted


def test_inpaint_run_trains(tmp_path):
  from ssl_jax import trainer
  settings = {'train.steps': 4, 'train.checkpoint_every': 4, 'train.eval_every': 4, 'train.batch_size': 8,
              'train.eval_batches': 1, 'train.warmup_steps': 1, 'model.decoder_d_model': 16,
              'model.decoder_heads': 2, 'model.decoder_layers': 1, 'model.d_ff': 64}
  workdir = str(tmp_path / 'inpaint')
  last = trainer.train_and_evaluate(tiny_config('', 'vit_inpaint.py', **settings), workdir)
  losses = [r['train_loss'] for r in read_metrics(workdir) if 'train_loss' in r]
  assert len(losses) == 4 and np.isfinite(losses).all() and losses[-1] < losses[0] and 'eval_loss' in last
  assert os.path.getsize(os.path.join(workdir, 'reconstructions.png')) > 1000
