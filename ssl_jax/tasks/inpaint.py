"""Context encoder (Pathak et al. 2016): hide the centre of each image, reconstruct its pixels.

The central square (inpaint.hole of the side: half) is filled with the mean pixel; the ViT
encoder sees the whole image so filled, MAE's light decoder (vit.MAE, every patch kept)
predicts every patch. The L2 loss counts only the hole and a border of inpaint.overlap pixels
of context around it, the border weighted inpaint.overlap_weight times (Pathak et al.'s 10x),
which ties the fill to what surrounds it. Pixels are compared standardised by the ImageNet
mean and deviation, so the hole's fill is zero there.
"""


import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import flops, storage
from ssl_jax.models.vit import unpatchify
from ssl_jax.tasks import Task, masked_image, vision

MEAN = np.array([0.485, 0.456, 0.406], np.float32)   # what the hole is filled with
STD = np.array([0.229, 0.224, 0.225], np.float32)


def hole_box(image_size: int, hole: float):
  """(start, side) of the hidden central square."""
  side = int(round(image_size * hole))
  if not 0 < side < image_size:
    raise ValueError(f'inpaint.hole={hole} hides {side} of {image_size} pixels: it must hide some, not all')
  return (image_size - side) // 2, side


def hide_centre(images, hole: float):
  """images (B, H, W, C) with the central square filled with the mean pixel."""
  start, side = hole_box(images.shape[1], hole)
  inside = np.zeros(images.shape[1:3], bool)
  inside[start:start + side, start:start + side] = True
  return jnp.where(inside[None, :, :, None], jnp.asarray(MEAN, images.dtype), images)


def loss_weights(image_size: int, hole: float, overlap: int, overlap_weight: float) -> np.ndarray:
  """(H, W) weight of each pixel in the loss: 1 in the hole, overlap_weight on the border of
  `overlap` pixels around it, 0 elsewhere."""
  start, side = hole_box(image_size, hole)
  weights = np.zeros((image_size, image_size), np.float32)
  outer = slice(max(start - overlap, 0), start + side + overlap)
  weights[outer, outer] = overlap_weight
  weights[start:start + side, start:start + side] = 1.0
  return weights


def reconstruction_loss(pred, target, weights):
  """Weighted mean over pixels of the channel-mean squared error: pred, target (B, H, W, C)."""
  per_pixel = ((pred - target) ** 2).mean(-1)                                         # (B, H, W)
  return (per_pixel * weights).sum() / (weights.sum() * pred.shape[0])


def reconstruct(model, params, images, hole: float, deterministic: bool = True, rng=None):
  """The model's image (B, H, W, C) in standardised pixels, from images with the hole filled."""
  size = images.shape[1]
  pixels = model.apply({'params': params}, hide_centre(images, hole), None, deterministic=deterministic,
                       rngs={'dropout': rng} if rng is not None else {})              # (B, N, p*p*C)
  return unpatchify(pixels.astype(jnp.float32), model.patch, size, size)


def loss_fn(model, params, batch, rng, train: bool, hole: float, overlap: int, overlap_weight: float):
  images = batch['images']
  pred = reconstruct(model, params, images, hole, deterministic=not train, rng=rng)
  target = (images - MEAN) / STD
  loss = reconstruction_loss(pred, target, jnp.asarray(loss_weights(images.shape[1], hole, overlap, overlap_weight)))
  return loss, {'loss': loss}


def flops_per_step(config):
  return flops.mae_train_flops(config, config.train.batch_size, mask_ratio=0.0)   # the encoder sees every patch


def report(setup, params) -> str:
  """reconstructions.png: held-out images, with the centre hidden, and repainted (the hole
  and its border taken from the model)."""
  model, images, m = setup.model, vision.held_out_images(setup), setup.config.inpaint
  pred = jax.jit(lambda p, x: reconstruct(model, p, x, m.hole))(params, images)     # (B, H, W, 3)
  painted = loss_weights(images.shape[1], m.hole, m.overlap, 1.0) > 0
  repainted = jnp.where(painted[None, :, :, None], pred * STD + MEAN, images)
  rows = [('original', images), ('hidden', hide_centre(images, m.hole)), ('repainted', repainted)]
  path = vision.save_grid(storage.join(setup.workdir, 'reconstructions.png'), rows,
                          f'context encoder: centre {m.hole:.0%} of the side hidden, {m.overlap}-pixel border')
  return f'reconstructions: {path}'


SETTINGS = {
    'hole': (0.5, 'side of the hidden central square, as a share of the image\'s side'),
    'overlap': (2, 'pixels of context around the hole that are reconstructed too'),
    'overlap_weight': (10.0, 'their weight in the loss (the hole\'s is 1)'),
}
TASK = Task('inpaint', vision.make_data, masked_image.model_inputs, loss_fn, flops_per_step,
            group='inpaint', settings=SETTINGS,
            loss_arguments=lambda config, data: {key: config.inpaint[key] for key in SETTINGS},
            probe=vision.probe, report=report)
