"""Masked-patch inpainting (MAE): hide a random 75% of each image's patches, reconstruct their pixels.

Which patches hide is drawn inside the step from the step's key folded with each example's
global index, so a resumed run hides the very same patches. The encoder sees only the
visible ones; the loss is the MSE over the hidden patches only, on pixels normalised per
patch (MAE's best-performing target).
"""


import jax
import jax.numpy as jnp

from ssl_jax import flops, storage
from ssl_jax.models.vit import patchify, unpatchify
from ssl_jax.tasks import Task, vision


def num_visible(num_patches: int, mask_ratio: float) -> int:
  return int(round(num_patches * (1 - mask_ratio)))


def draw_visible(rng, index, num_patches: int, count: int):
  """(B, count) visible patch indices and a (B, N) bool mask of hidden patches, per example index."""
  noise = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(rng, i), (num_patches,)))(index)  # (B, N)
  order = jnp.argsort(noise, axis=1)
  visible = jnp.sort(order[:, :count], axis=1)                                         # (B, K)
  hidden = jnp.ones(noise.shape, bool).at[jnp.arange(noise.shape[0])[:, None], visible].set(False)
  return visible, hidden


def patch_stats(images, patch: int, eps: float = 1e-6):
  """(patches (B, N, p*p*3), their means, their deviations (B, N, 1)): the per-patch
  normalisation of MAE's target, and its inverse."""
  patches = patchify(images, patch)
  return patches, patches.mean(-1, keepdims=True), jnp.sqrt(patches.var(-1, keepdims=True) + eps)


def normalized_patches(images, patch: int, eps: float = 1e-6):
  patches, mean, std = patch_stats(images, patch, eps)                              # (B, N, p*p*3)
  return (patches - mean) / std


def pixels_of(pred, images, patch: int, eps: float = 1e-6):
  """Predicted normalised patches (B, N, p*p*3) back to pixels, with each true patch's mean and
  deviation (MAE's own way of showing them: the target was normalised per patch)."""
  _, mean, std = patch_stats(images, patch, eps)
  return unpatchify(pred * std + mean, patch, images.shape[1], images.shape[2])


def reconstruction_loss(pred, target, hidden):
  """Mean squared error over the hidden patches only."""
  per_patch = ((pred - target) ** 2).mean(-1)                                        # (B, N)
  return (per_patch * hidden).sum() / jnp.maximum(hidden.sum(), 1)


def model_inputs(batch, visible=None) -> dict:
  if visible is None:   # for init: the parameters do not depend on how many patches are kept
    visible = jnp.zeros((batch['images'].shape[0], 1), jnp.int32)
  return dict(images=batch['images'], visible=visible)


def loss_fn(model, params, batch, rng, train: bool, mask_ratio: float):
  n = (model.image_size // model.patch) ** 2
  visible, hidden = draw_visible(jax.random.fold_in(rng, 1), batch['index'], n, num_visible(n, mask_ratio))
  pred = model.apply({'params': params}, batch['images'], visible, deterministic=not train,
                     rngs={'dropout': rng})                                          # (B, N, p*p*3)
  loss = reconstruction_loss(pred.astype(jnp.float32), normalized_patches(batch['images'], model.patch), hidden)
  return loss, {'loss': loss}


def flops_per_step(config):
  return flops.mae_train_flops(config, config.train.batch_size, config.mae.mask_ratio)


def report(setup, params) -> str:
  """reconstructions.png: held-out images, their visible patches, and the model's repainting."""
  model, images, mask_ratio = setup.model, vision.held_out_images(setup), setup.config.mae.mask_ratio
  n = (model.image_size // model.patch) ** 2
  visible, hidden = draw_visible(jax.random.key(setup.config.seed), jnp.arange(len(images)), n,
                             num_visible(n, mask_ratio))
  pred = jax.jit(lambda p, x, k: model.apply({'params': p}, x, k))(params, images, visible)   # (B, N, p*p*3)
  size = model.image_size
  hidden_pixels = unpatchify(jnp.broadcast_to(hidden[..., None], pred.shape).astype(jnp.float32),
                             model.patch, size, size) > 0                             # (B, H, W, 3)
  repainted = jnp.where(hidden_pixels, pixels_of(pred.astype(jnp.float32), images, model.patch), images)
  rows = [('original', images), ('visible', jnp.where(hidden_pixels, 0.5, images)),
          ('repainted', repainted)]
  path = vision.save_grid(storage.join(setup.workdir, 'reconstructions.png'), rows,
                          f'MAE: {mask_ratio:.0%} of the patches hidden')
  return f'reconstructions: {path}'


TASK = Task('masked_image', vision.make_data, model_inputs, loss_fn, flops_per_step,
            group='mae', settings={'mask_ratio': (0.75, 'share of each image\'s patches hidden from the encoder')},
            loss_arguments=lambda config, data: {'mask_ratio': config.mae.mask_ratio},
            probe=vision.probe, report=report)
