"""Colorization (Zhang, Isola and Efros 2016): the encoder sees the grey image; a light head
predicts the colour of every cell (2x2 cells a patch: half the image's side, as Zhang et al.
predict at a quarter of theirs).

Colour is CIE Lab's (a, b); the encoder sees only L, as the neutral grey image of the same
lightness. The head classifies each cell's (a, b) into quantised bins rather than regressing
it: colour given lightness is multimodal (a grey shirt may be red or blue), and the
squared error's best answer is the mean of the modes, a desaturated brown that teaches the
encoder little about what the object is. The loss is Zhang et al.'s: cross-entropy against
a soft target (the 5 bins nearest the true colour, Gaussian weights of width colorize.sigma),
each cell weighted by class rebalancing: the inverse of its colour's smoothed frequency on
the training images, mixed with the uniform (colorize.rebalance), so that the common
unsaturated colours do not drown the rest. The bins are the ab squares of side
colorize.grid that 8-bit sRGB colours reach (268 at the default 10).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import flops, storage
from ssl_jax.errors import ConfigError
from ssl_jax.tasks import Task, vision

NEAREST = 5               # bins a soft target spreads over
PRIOR_IMAGES = 10_000     # training images the colour prior is counted on (evenly spaced)
# sRGB (D65) to CIE XYZ, and the white point.
RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                       [0.2126729, 0.7151522, 0.0721750],
                       [0.0193339, 0.1191920, 0.9503041]])
WHITE = np.array([0.95047, 1.0, 1.08883])
DELTA = 6 / 29


def rgb_to_lab(rgb, xp=jnp):
  """(..., 3) sRGB in [0, 1] -> (..., 3) L in [0, 100], a, b. xp=np computes on the host in float64."""
  linear = xp.where(rgb <= 0.04045, rgb / 12.92, ((xp.maximum(rgb, 0.04045) + 0.055) / 1.055) ** 2.4)
  xyz = linear @ xp.asarray(RGB_TO_XYZ.T / WHITE, dtype=linear.dtype)
  f = xp.where(xyz > DELTA ** 3, xp.cbrt(xyz), xyz / (3 * DELTA ** 2) + 4 / 29)
  return xp.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_to_rgb(lab):
  """(..., 3) L, a, b -> sRGB in [0, 1] (colours outside the gamut clipped)."""
  fy = (lab[..., 0] + 16) / 116
  f = jnp.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
  xyz = jnp.where(f > DELTA, f ** 3, 3 * DELTA ** 2 * (f - 4 / 29)) * jnp.asarray(WHITE, f.dtype)
  linear = jnp.clip(xyz @ jnp.asarray(np.linalg.inv(RGB_TO_XYZ).T, f.dtype), 0.0, 1.0)
  return jnp.where(linear <= 0.0031308, 12.92 * linear, 1.055 * jnp.maximum(linear, 0.0031308) ** (1 / 2.4) - 0.055)


def grey(images):
  """(B, H, W, 3) -> the same lightness with no colour (a = b = 0): what the encoder sees."""
  return grey_of(rgb_to_lab(images))


def grey_of(lab):
  """The grey image of a Lab image (B, H, W, 3), as sRGB."""
  return lab_to_rgb(lab * jnp.asarray([1.0, 0.0, 0.0], lab.dtype))


def cell_colours(lab, cell: int):
  """(B, H, W, 3) Lab -> (B, H/cell, W/cell, 2): each cell's mean (a, b)."""
  b, h, w, _ = lab.shape
  return lab[..., 1:].reshape(b, h // cell, cell, w // cell, cell, 2).mean(axis=(2, 4))


@functools.lru_cache(maxsize=None)
def ab_bins(grid: float) -> np.ndarray:
  """(Q, 2) centres of the ab squares of side `grid` that some 8-bit sRGB colour falls in
  (computed on the host in float64, so every platform and host gets the same bins). The
  colours on the RGB cube's six faces reach every (a, b) the cube does: a column of constant
  (a, b) through the gamut ends on its surface, which is the faces' image."""
  levels = np.arange(256) / 255.0
  u, v = (x.reshape(-1) for x in np.meshgrid(levels, levels, indexing='ij'))
  faces = [np.stack(np.roll([np.full_like(u, side), u, v], axis, axis=0), -1)
           for axis in range(3) for side in (0.0, 1.0)]                                  # 6 x (65536, 3)
  squares = np.unique(np.floor(rgb_to_lab(np.concatenate(faces), np)[:, 1:] / grid).astype(np.int64), axis=0)
  out = ((squares + 0.5) * grid).astype(np.float32)
  out.setflags(write=False)
  return out


def nearest_bins(ab: np.ndarray, bins: np.ndarray, grid: float) -> np.ndarray:
  """(M, 2) colours -> (M,) index of each one's nearest bin (host). The bins are the centres
  of grid squares, so a colour whose own square is a bin is nearest its centre: a table
  look-up; the few others (averages that leave the gamut's squares) search every bin."""
  squares = np.floor(np.asarray(bins, np.float64) / grid).astype(np.int64)               # (Q, 2)
  low = squares.min(0)
  table = np.full(tuple(squares.max(0) - low + 1), -1, np.int64)
  table[tuple((squares - low).T)] = np.arange(len(bins))
  at = np.floor(ab / grid).astype(np.int64) - low                                          # (M, 2)
  inside = ((at >= 0) & (at < table.shape)).all(-1)
  found = np.full(len(ab), -1, np.int64)
  found[inside] = table[tuple(at[inside].T)]
  rest = np.flatnonzero(found < 0)
  found[rest] = ((ab[rest, None] - bins) ** 2).sum(-1).argmin(-1)
  return found


def rebalancing_weights(images: np.ndarray, cell: int, grid: float, sigma: float, mix: float) -> np.ndarray:
  """(Q,) weight of each colour bin: 1 / ((1 - mix) * smoothed frequency + mix / Q), scaled so
  that the weights' mean under the smoothed frequency is 1 (Zhang et al.'s eq. 4).

  images: uint8 (N, H, W, 3) training images; frequencies are of their cells' colours."""
  bins = ab_bins(grid)
  pick = np.linspace(0, len(images) - 1, min(len(images), PRIOR_IMAGES)).astype(int)
  ab = np.concatenate([cell_colours(rgb_to_lab(images[pick[i:i + 500]] / 255.0, np), cell).reshape(-1, 2)
                       for i in range(0, len(pick), 500)])
  frequency = np.bincount(nearest_bins(ab, bins, grid), minlength=len(bins)) / len(ab)
  kernel = np.exp(-((bins[:, None] - bins[None]) ** 2).sum(-1) / (2 * sigma ** 2))       # (Q, Q)
  smoothed = kernel @ frequency
  smoothed /= smoothed.sum()
  weights = 1.0 / ((1 - mix) * smoothed + mix / len(bins))
  return (weights / (smoothed * weights).sum()).astype(np.float32)


def soft_targets(ab, bins, sigma: float):
  """ab (..., 2) -> (indices (..., 5) of the nearest bins, nearest first; their Gaussian
  weights (..., 5), summing to 1)."""
  distances = ((ab[..., None, :] - bins) ** 2).sum(-1)                                 # (..., Q)
  negative, nearest = jax.lax.top_k(-distances, NEAREST)
  return nearest, jax.nn.softmax(negative / (2 * sigma ** 2), axis=-1)


def model_inputs(batch) -> dict:
  return dict(images=batch['images'])


def loss_fn(model, params, batch, rng, train: bool, bins, weights, sigma: float):
  lab = rgb_to_lab(batch['images'])                                                        # (B, H, W, 3)
  logits = model.apply({'params': params}, grey_of(lab), deterministic=not train, rngs={'dropout': rng})  # (B, G, G, Q)
  ab = cell_colours(lab, lab.shape[1] // logits.shape[1])                                  # (B, G, G, 2)
  nearest, soft = soft_targets(ab, jnp.asarray(bins), sigma)                               # (B, G, G, 5)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  cross_entropy = -(jnp.take_along_axis(log_probs, nearest, axis=-1) * soft).sum(-1)       # (B, G, G)
  loss = (cross_entropy * jnp.asarray(weights)[nearest[..., 0]]).mean()
  accuracy = (logits.argmax(-1) == nearest[..., 0]).mean()
  return loss, {'loss': loss, 'accuracy': accuracy}


def loss_arguments(config, data) -> dict:
  """The bins, and the rebalancing weights counted on the training images."""
  c, bins = config.colorize, ab_bins(config.colorize.grid)
  if config.model.num_classes != len(bins):
    raise ConfigError(f'model.num_classes={config.model.num_classes}, but colorize.grid={c.grid:g} makes '
                      f'{len(bins)} colour bins (leave model.num_classes at 0)')
  return {'bins': bins, 'sigma': c.sigma,
          'weights': rebalancing_weights(data.train.images, cell_side(config), c.grid, c.sigma, c.rebalance)}


def cell_side(config) -> int:
  """Pixels on a side of the cells whose colour the head predicts: 2x2 cells a patch
  (vit.ViTCellClassifier's default)."""
  if config.model.patch % 2:
    raise ConfigError(f'colorize: model.patch={config.model.patch} must be even (the head colours 2x2 cells a patch)')
  return config.model.patch // 2


def make_data(config, workdir: str):
  """The images, and the colour bins as the classes the model predicts."""
  cell_side(config)   # before any image is read
  data = vision.make_data(config, workdir)
  data.classes = tuple(f'a={a:g},b={b:g}' for a, b in ab_bins(config.colorize.grid))
  return data


def flops_per_step(config):
  """The encoder on every patch, and the head's product at each of them."""
  m = config.model
  encoder, _ = flops.vit_classifier_train_flops(config, config.train.batch_size)
  patches = (config.data.image_size // m.patch) ** 2
  head = 6 * config.train.batch_size * patches * m.d_model * 4 * m.num_classes
  return encoder + head, encoder + head


def probe(setup, params) -> dict:
  """The linear probe on what the encoder was trained to see: the grey images."""
  encode = vision.mean_patch_features(setup, params)
  return vision.probe(setup, params, lambda x: encode(grey(x)))


def colourise(model, params, images, grid: float, temperature: float):
  """The model's colours on the images' own lightness: each cell's annealed mean of its
  predicted distribution (Zhang et al.: temperature 0.38, between the mean and the mode)."""
  lab = rgb_to_lab(images)
  logits = model.apply({'params': params}, grey_of(lab))                                   # (B, G, G, Q)
  ab = jax.nn.softmax(logits / temperature, axis=-1) @ jnp.asarray(ab_bins(grid))          # (B, G, G, 2)
  cell = images.shape[1] // logits.shape[1]
  ab = jnp.repeat(jnp.repeat(ab, cell, axis=1), cell, axis=2)                              # (B, H, W, 2)
  return lab_to_rgb(jnp.concatenate([lab[..., :1], ab], -1))


def report(setup, params) -> str:
  """colorizations.png: held-out images, what the encoder saw, and the model's colours."""
  images, c = vision.held_out_images(setup), setup.config.colorize
  painted = jax.jit(lambda p, x: colourise(setup.model, p, x, c.grid, c.temperature))(params, images)
  path = vision.save_grid(storage.join(setup.workdir, 'colorizations.png'),
                          [('original', images), ('grey', grey(images)), ('colourised', painted)],
                          f'colorization: {len(ab_bins(c.grid))} colour bins, annealed mean at T={c.temperature:g}')
  return f'colorizations: {path}'


SETTINGS = {
    'grid': (10.0, 'side of the ab squares colours are quantised into (Zhang et al.: 10)'),
    'sigma': (5.0, 'width (in ab) of the Gaussian over a soft target\'s 5 nearest bins and of the prior\'s smoothing'),
    'rebalance': (0.5, 'share of the uniform mixed into the colour prior before it is inverted: 1 = no rebalancing'),
    'temperature': (0.38, 'colorizations.png: annealed mean of each cell\'s colours (1: the mean; near 0: the mode)'),
}
TASK = Task('colorize', make_data, model_inputs, loss_fn, flops_per_step, group='colorize', settings=SETTINGS,
            loss_arguments=loss_arguments, probe=probe, report=report)
