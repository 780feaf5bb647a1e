"""Jigsaw puzzles (Noroozi & Favaro 2016): cut each image into a 3x3 grid of tiles, shuffle them
by one of N fixed permutations, predict which.

The permutations are chosen once, far apart (greedy maximin Hamming distance over all 9!), so
that telling them apart needs every tile's place. Each tile is normalised on its own and sits
at a random spot in its cell (a gap to its neighbours), so edges and overall brightness give
little away. Offsets and permutation of each example are drawn inside the step from the
step's key folded with the example's global index, so a resumed run sets the same puzzles.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax import flops, storage
from ssl_jax.errors import ConfigError
from ssl_jax.models import vit
from ssl_jax.tasks import Task, vision

TILES = vit.GRID * vit.GRID
MAX_PERMUTATIONS = 1000


@functools.lru_cache(maxsize=1)
def _all_orders() -> np.ndarray:
  """All 9! orders of the tiles, one per column (9, 362880), in lexicographic order."""
  return np.array(list(itertools.permutations(range(TILES))), np.int8).T.copy()


@functools.lru_cache(maxsize=None)
def permutations(count: int) -> np.ndarray:
  """(count, 9) tile orders, greedily far apart: the identity first, then each time the order
  whose smallest Hamming distance to those chosen is largest (the first such, so the set is
  the same on every run and host). Read-only: the cache hands out the one array."""
  if not 1 <= count <= MAX_PERMUTATIONS:
    raise ConfigError(f'jigsaw.num_permutations={count} must be in 1..{MAX_PERMUTATIONS}')
  orders = _all_orders()
  nearest = np.full(orders.shape[1], TILES, np.int8)   # Hamming distance to the nearest chosen
  chosen = [0]
  for _ in range(count - 1):
    agree = np.zeros(orders.shape[1], np.int8)
    for position in range(TILES):   # places where every order agrees with the newest chosen one
      agree += orders[position] == orders[position, chosen[-1]]
    np.minimum(nearest, TILES - agree, out=nearest)
    chosen.append(int(np.argmax(nearest)))
  out = orders[:, chosen].T.astype(np.int32)
  out.setflags(write=False)
  return out


def hamming(orders: np.ndarray) -> np.ndarray:
  """(P, P) Hamming distances between the rows of (P, 9) orders."""
  return (orders[:, None] != orders[None]).sum(-1)


def draw_puzzles(rng, index, image_size: int, tile_size: int, count: int):
  """Per example global index: tile offsets (B, 9, 2) within their cells, and the permutation
  (B,) in 0..count-1."""
  _, _, jitter = vit.tile_geometry(image_size, tile_size)

  def draw(i):
    offset_key, order_key = jax.random.split(jax.random.fold_in(rng, i))
    return (jax.random.randint(offset_key, (TILES, 2), 0, jitter + 1),
            jax.random.randint(order_key, (), 0, count))
  return jax.vmap(draw)(index)


def model_inputs(batch) -> dict:
  return dict(images=batch['images'])   # for init: unshuffled tiles at the centres of their cells


def loss_fn(model, params, batch, rng, train: bool):
  offsets, labels = draw_puzzles(jax.random.fold_in(rng, 3), batch['index'], model.image_size, model.tile_size,
                                 model.num_permutations)                              # (B, 9, 2), (B,)
  order = jnp.asarray(permutations(model.num_permutations))[labels]                   # (B, 9)
  logits = model.apply({'params': params}, batch['images'], offsets, order, deterministic=not train,
                       rngs={'dropout': rng})                                         # (B, P)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  accuracy = (logits.argmax(-1) == labels).mean()
  return loss, {'loss': loss, 'accuracy': accuracy}


def flops_per_step(config):
  return flops.jigsaw_train_flops(config, config.train.batch_size)


def probe(setup, params) -> dict:
  """The linear probe on what the encoder was trained to see: each image's nine tiles, centred
  in their cells and normalised, their mean patch features concatenated (B, 9 * D)."""
  model = setup.model
  encode = lambda x: model.apply({'params': params}, x, method=model.encode_tiles)[:, :, 1:].mean(2).reshape(
      x.shape[0], -1)
  return vision.probe(setup, params, encode)


def mosaic(tiles: np.ndarray, gap: int = 1) -> np.ndarray:
  """(B, 9, t, t, C) tiles laid out 3x3 in their order, with white gaps -> (B, S, S, C)."""
  b, _, t, _, c = tiles.shape
  side = vit.GRID * t + (vit.GRID - 1) * gap
  out = np.ones((b, side, side, c), np.float32)
  for k in range(TILES):
    y, x = divmod(k, vit.GRID)
    out[:, y * (t + gap):y * (t + gap) + t, x * (t + gap):x * (t + gap) + t] = tiles[:, k]
  return out


def report(setup, params) -> str:
  """jigsaw.png: held-out puzzles as shuffled, and the tiles put back by the model's answer."""
  model, images = setup.model, vision.held_out_images(setup)
  offsets, labels = draw_puzzles(jax.random.key(setup.config.seed), jnp.arange(len(images)), model.image_size,
                                 model.tile_size, model.num_permutations)
  orders = permutations(model.num_permutations)
  order = orders[np.asarray(labels)]                                                 # (B, 9)
  logits = jax.jit(lambda p, x, at, o: model.apply({'params': p}, x, at, o))(params, images, offsets, order)
  guess = orders[np.asarray(logits.argmax(-1))]                                      # (B, 9)
  tiles = np.asarray(vit.cut_tiles(images, offsets, model.tile_size))                # (B, 9, t, t, C)
  rows = np.arange(len(images))[:, None]
  shuffled = tiles[rows, order]                                    # position k shows the tile of cell order[k]
  solved = np.empty_like(shuffled)
  solved[rows, guess] = shuffled                                   # each tile back to the cell the model names
  right = int((guess == order).all(1).sum())
  path = vision.save_grid(storage.join(setup.workdir, 'jigsaw.png'),
                          [('shuffled', mosaic(shuffled)), ("model's order", mosaic(solved))],
                          f'jigsaw, {model.num_permutations} permutations: {right} of {len(images)} solved')
  return f'jigsaw puzzles: {path}'


SETTINGS = {
    'tile_size': (0, 'side of each of the 3x3 tiles in pixels (a multiple of model.patch)'),
    'num_permutations': (100, 'the tile orders to tell apart (at most 1000)'),
    'hidden': (1024, 'hidden width of the MLP on the nine tiles\' features'),
}
TASK = Task('jigsaw', vision.make_data, model_inputs, loss_fn, flops_per_step, group='jigsaw', settings=SETTINGS,
            probe=probe, report=report)
