"""Masked-patch inpainting (MAE): hide a random 75% of each image's patches, reconstruct their pixels.

Which patches hide is drawn inside the step from the step's key folded with each example's
global index, so a resumed run hides the very same patches. The encoder sees only the
visible ones; the loss is the MSE over the hidden patches only, on pixels normalised per
patch (MAE's best-performing target).
"""

import jax
import jax.numpy as jnp

from ssl_jax import flops, probe as probe_lib
from ssl_jax.config import ConfigError
from ssl_jax.data import images as images_lib
from ssl_jax.models.vit import ViT, patchify
from ssl_jax.tasks import Data


def make_data(config, workdir: str) -> Data:
  del workdir
  size, d = config.data.image_size, config.data
  train_images, train_labels, classes = images_lib.load(d.path, size)
  if d.eval_path:
    eval_images, eval_labels, _ = images_lib.load(d.eval_path, size)
  else:
    split = int(len(train_images) * (1 - d.eval_fraction))
    train_images, eval_images = train_images[:split], train_images[split:]
    train_labels, eval_labels = train_labels[:split], train_labels[split:]
  if size % config.model.patch:
    raise ConfigError(f'data.image_size={size} is not a multiple of model.patch={config.model.patch}')
  pi, pc = jax.process_index(), jax.process_count()
  make = lambda x, y, augment: images_lib.ImageBatches(x, y, config.train.batch_size, config.seed, augment,
                                                       process_index=pi, process_count=pc)
  return Data(make(train_images, train_labels, True), make(eval_images, eval_labels, False), None,
              unit='images', units_per_example=1, classes=tuple(classes))


def num_visible(num_patches: int, mask_ratio: float) -> int:
  return int(round(num_patches * (1 - mask_ratio)))


def random_keep(rng, index, num_patches: int, keep: int):
  """(B, keep) visible patch indices and a (B, N) bool mask of hidden patches, per example index."""
  noise = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(rng, i), (num_patches,)))(index)  # (B, N)
  order = jnp.argsort(noise, axis=1)
  visible = jnp.sort(order[:, :keep], axis=1)                                       # (B, K)
  hidden = jnp.ones(noise.shape, bool).at[jnp.arange(noise.shape[0])[:, None], visible].set(False)
  return visible, hidden


def normalized_patches(images, patch: int):
  patches = patchify(images, patch)                                                 # (B, N, p*p*3)
  mean = patches.mean(-1, keepdims=True)
  var = patches.var(-1, keepdims=True)
  return (patches - mean) / jnp.sqrt(var + 1e-6)


def reconstruction_loss(pred, target, hidden):
  """Mean squared error over the hidden patches only."""
  per_patch = ((pred - target) ** 2).mean(-1)                                        # (B, N)
  return (per_patch * hidden).sum() / jnp.maximum(hidden.sum(), 1)


def model_inputs(batch, keep=None) -> dict:
  if keep is None:   # for init: any K of the right size
    keep = jnp.zeros((batch['images'].shape[0], 1), jnp.int32)
  return dict(images=batch['images'], keep=keep)


def loss_fn(model, params, batch, rng, train: bool):
  n = (model.image_size // model.patch) ** 2
  keep, hidden = random_keep(jax.random.fold_in(rng, 1), batch['index'], n, num_visible(n, model.mask_ratio))
  pred = model.apply({'params': params}, batch['images'], keep, deterministic=not train,
                     rngs={'dropout': rng})                                          # (B, N, p*p*3)
  loss = reconstruction_loss(pred.astype(jnp.float32), normalized_patches(batch['images'], model.patch), hidden)
  return loss, {'loss': loss}


def flops_per_step(config):
  return flops.mae_train_flops(config, config.train.batch_size)


def probe(setup, params) -> dict:
  """Linear-probe accuracy on the held-out images, from the encoder's mean patch features."""
  model = setup.model
  encoder = ViT(model.cfg, model.patch, model.image_size)
  encode = lambda x: encoder.apply({'params': params['encoder']}, x)[:, 1:].mean(1)   # (B, D)
  train, held_out = setup.data.train, setup.data.eval
  accuracy = probe_lib.linear_probe(probe_lib.features(encode, train.images), train.labels,
                                    probe_lib.features(encode, held_out.images), held_out.labels,
                                    max(len(setup.data.classes), int(train.labels.max()) + 1))
  return {'probe_accuracy': accuracy}
