"""Rotation prediction (Gidaris et al. 2018): turn each image by 0, 90, 180 or 270 degrees; predict which.

With `rotation.all_turns` (the paper's way, and the default of experiments/vit_rotation.py)
every image of the batch appears in all four turns, so telling them apart takes the image's
orientation, not its content; otherwise each image gets one turn, drawn inside the step from
the step's key folded with the example's global index (a resumed run turns the same images
the same way).
"""

import jax
import jax.numpy as jnp
import optax

from ssl_jax import flops
from ssl_jax.tasks import Task, vision

TURNS = 4


def rotate(images, turns):
  """images (B, H, W, C) square; turns (B,) in 0..3 quarter turns counter-clockwise."""
  options = [lambda im, k=k: jnp.rot90(im, k, axes=(0, 1)) for k in range(TURNS)]
  return jax.vmap(lambda im, k: jax.lax.switch(k, options, im))(images, turns)


def model_inputs(batch) -> dict:
  return dict(images=batch['images'])


def all_turns(images):
  """(B, H, W, C) -> (4B, H, W, C) and turns (4B,): every image in each of the four turns."""
  turned = jnp.stack([jnp.rot90(images, k, axes=(1, 2)) for k in range(TURNS)], 1)  # (B, 4, H, W, C)
  turns = jnp.broadcast_to(jnp.arange(TURNS), turned.shape[:2])
  return turned.reshape((-1,) + images.shape[1:]), turns.reshape(-1)


def loss_fn(model, params, batch, rng, train: bool, every_turn: bool = False):
  if every_turn:
    images, turns = all_turns(batch['images'])
  else:
    turns = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(jax.random.fold_in(rng, 2), i), (), 0,
                                                  TURNS))(batch['index'])              # (B,)
    images = rotate(batch['images'], turns)
  logits = model.apply({'params': params}, images, deterministic=not train, rngs={'dropout': rng})  # (B, 4)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, turns).mean()
  accuracy = (logits.argmax(-1) == turns).mean()
  return loss, {'loss': loss, 'accuracy': accuracy}


def flops_per_step(config):
  turns = TURNS if config.rotation.all_turns else 1
  return flops.vit_classifier_train_flops(config, config.train.batch_size * turns)


TASK = Task('rotation', vision.make_data, model_inputs, loss_fn, flops_per_step, group='rotation',
            settings={'all_turns': (False, 'every image in all four turns (4x the batch), not one drawn turn')},
            loss_arguments=lambda config, data: {'every_turn': config.rotation.all_turns}, probe=vision.probe)
