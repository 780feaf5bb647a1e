"""Rotation prediction (Gidaris et al. 2018): turn each image by 0, 90, 180 or 270 degrees; predict which.

The turn of each example is drawn inside the step from the step's key folded with the
example's global index, so a resumed run turns the very same images the same way.
"""

import jax
import jax.numpy as jnp
import optax

from ssl_jax import flops
from ssl_jax.tasks import vision

make_data = vision.make_data   # the task interface's image data and linear probe
probe = vision.probe
TURNS = 4


def rotate(images, turns):
  """images (B, H, W, C) square; turns (B,) in 0..3 quarter turns counter-clockwise."""
  options = [lambda im, k=k: jnp.rot90(im, k, axes=(0, 1)) for k in range(TURNS)]
  return jax.vmap(lambda im, k: jax.lax.switch(k, options, im))(images, turns)


def model_inputs(batch) -> dict:
  return dict(images=batch['images'])


def loss_fn(model, params, batch, rng, train: bool):
  turns = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(jax.random.fold_in(rng, 2), i), (), 0, TURNS))(
      batch['index'])                                                                 # (B,)
  logits = model.apply({'params': params}, rotate(batch['images'], turns), deterministic=not train,
                       rngs={'dropout': rng})                                         # (B, 4)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, turns).mean()
  accuracy = (logits.argmax(-1) == turns).mean()
  return loss, {'loss': loss, 'accuracy': accuracy}


def flops_per_step(config):
  return flops.vit_classifier_train_flops(config, config.train.batch_size)
