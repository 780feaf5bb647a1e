"""Masked-patch inpainting (MAE): hide a random 75% of each image's patches, reconstruct their pixels.

Which patches hide is drawn inside the step from the step's key folded with each example's
global index, so a resumed run hides the very same patches. The encoder sees only the
visible ones; the loss is the MSE over the hidden patches only, on pixels normalised per
patch (MAE's best-performing target).
"""

import jax
import jax.numpy as jnp

from ssl_jax import flops
from ssl_jax.models.vit import patchify
from ssl_jax.tasks import vision

make_data = vision.make_data   # the task interface's image data and linear probe
probe = vision.probe


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
  if keep is None:   # for init: the parameters do not depend on how many patches are kept
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

