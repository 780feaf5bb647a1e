"""Vision transformer (Dosovitskiy et al. 2021), the masked autoencoder around it (He et al. 2022),
the jigsaw puzzle solver around it (Noroozi & Favaro 2016) and a per-cell classifier on it
(colorization, Zhang et al. 2016).

Images are cut into patches, each patch is a token; the blocks are the text models' own
(pre-LN, `layers.Stack`). The MAE encoder sees only the visible patches; a light decoder
takes them back, with a shared mask token at every hidden place, and predicts pixels.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.errors import ConfigError
from ssl_jax.models.layers import Dense, Dropout, LayerNorm, Stack, TransformerConfig, activation_fn, param_init


def patchify(images, patch: int):
  """(B, H, W, C) -> (B, N, patch * patch * C), patches in row-major order."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches, patch: int, height: int, width: int):
  """The inverse of patchify."""
  b, _, d = patches.shape
  c = d // (patch * patch)
  x = patches.reshape(b, height // patch, width // patch, patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, height, width, c)


def sincos_2d(grid: int, dim: int) -> np.ndarray:
  """Fixed 2-D sin-cos position embeddings (grid*grid, dim), as MAE uses."""
  if dim % 4:
    raise ConfigError(f'sin-cos positions need model.d_model divisible by 4, got {dim}')
  omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim // 4))
  ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing='ij')
  out = [f(pos.reshape(-1)[:, None] * omega[None]) for pos in (ys, xs) for f in (np.sin, np.cos)]
  return np.concatenate(out, axis=1).astype(np.float32)


class ViT(nn.Module):
  """Patch embedding + positions (+ an optional class token) + blocks + final LayerNorm."""
  cfg: TransformerConfig
  patch: int
  image_size: int
  class_token: bool = True
  learned_positions: bool = False

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch) ** 2

  @nn.compact
  def __call__(self, images, visible=None, deterministic: bool = True):
    """images (B, H, W, C) float; visible (B, K) indices of the patches to encode (all if None).

    Returns (B, K [+1], C) token states; the class token, if any, first.
    """
    cfg = self.cfg
    if images.shape[1] != self.image_size or images.shape[2] != self.image_size:
      raise ValueError(f'images of {images.shape[1]}x{images.shape[2]}, but the model takes '
                       f'{self.image_size}x{self.image_size}')
    patches = patchify(images, self.patch)                                     # (B, N, p*p*C)
    if self.learned_positions:
      pos = self.param('pos_embed', param_init(cfg.init_std, (None, 'embed')), (self.num_patches, cfg.d_model))
    else:
      pos = jnp.asarray(sincos_2d(self.image_size // self.patch, cfg.d_model))
    pos = jnp.broadcast_to(pos, (patches.shape[0],) + pos.shape)               # (B, N, C)
    if visible is not None:   # only the visible patches are embedded and encoded
      patches = jnp.take_along_axis(patches, visible[..., None], axis=1)          # (B, K, p*p*C)
      pos = jnp.take_along_axis(pos, visible[..., None], axis=1)                  # (B, K, C)
    x = Dense((cfg.d_model,), (None, 'embed'), cfg.init_std, dtype=cfg.dtype, kernels=cfg.kernels,
              name='patch_embed')(patches)
    x = x + pos.astype(x.dtype)
    if self.class_token:
      cls = self.param('cls', param_init(cfg.init_std, (None, None, 'embed')), (1, 1, cfg.d_model))
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, cfg.d_model)).astype(x.dtype), x], axis=1)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    x = Dropout(cfg.dropout)(x, deterministic=deterministic)
    x = Stack(cfg, causal=False, name='blocks')(x, None, deterministic)
    return LayerNorm(cfg, name='ln_f')(x)


class MAE(nn.Module):
  """Masked autoencoder: ViT encoder on visible patches, light decoder over all, pixels out."""
  cfg: TransformerConfig               # the encoder
  decoder_cfg: TransformerConfig       # the decoder (narrower, fewer layers)
  patch: int
  image_size: int

  def setup(self):
    self.encoder = ViT(self.cfg, self.patch, self.image_size, class_token=True)

  @nn.compact
  def __call__(self, images, visible=None, deterministic: bool = True):
    """images (B, H, W, C); visible (B, K) visible patch indices (None: every patch, as the
    context encoder has it) -> predicted pixels (B, N, p*p*C)."""
    dec = self.decoder_cfg
    n = self.encoder.num_patches
    x = self.encoder(images, visible, deterministic)                              # (B, 1 + K, C)
    x = Dense((dec.d_model,), ('embed', None), dec.init_std, dtype=dec.dtype, kernels=dec.kernels,
              name='decoder_embed')(x)
    mask_token = self.param('mask_token', param_init(dec.init_std, (None, None, None)), (1, 1, dec.d_model))
    b = x.shape[0]
    if visible is None:
      tokens = x[:, 1:]                                                        # (B, N, D)
    else:
      tokens = jnp.broadcast_to(mask_token, (b, n, dec.d_model)).astype(x.dtype)
      tokens = tokens.at[jnp.arange(b)[:, None], visible].set(x[:, 1:])           # visible ones back in place
    tokens = tokens + jnp.asarray(sincos_2d(self.image_size // self.patch, dec.d_model), x.dtype)
    y = jnp.concatenate([x[:, :1], tokens], axis=1)                            # (B, 1 + N, D)
    y = Stack(dec, causal=False, name='decoder_blocks')(y, None, deterministic)
    y = LayerNorm(dec, name='decoder_ln')(y)
    pixels = self.patch * self.patch * images.shape[-1]
    return Dense((pixels,), (None, None), dec.init_std, dtype=dec.dtype, kernels=dec.kernels,
                 name='decoder_pred')(y[:, 1:])


class ViTClassifier(nn.Module):
  """A ViT with a linear head on the class token (rotation and jigsaw pretext tasks, fine-tuning)."""
  cfg: TransformerConfig
  patch: int
  image_size: int
  num_classes: int

  def setup(self):
    self.encoder = ViT(self.cfg, self.patch, self.image_size, class_token=True)

  @nn.compact
  def __call__(self, images, deterministic: bool = True):
    x = self.encoder(images, None, deterministic)                              # (B, 1 + N, C)
    cfg = self.cfg
    logits = Dense((self.num_classes,), ('embed', None), cfg.init_std, dtype=cfg.dtype, kernels=cfg.kernels,
                   name='head')(x[:, 0])
    return logits.astype(jnp.float32)                                          # (B, classes)


class ViTCellClassifier(nn.Module):
  """A ViT with a linear head on every patch state, scoring `num_classes` classes for each of
  the patch's cells_per_side x cells_per_side cells (colorization: the colour of each cell)."""
  cfg: TransformerConfig
  patch: int
  image_size: int
  num_classes: int
  cells_per_side: int = 2

  def setup(self):
    self.encoder = ViT(self.cfg, self.patch, self.image_size, class_token=True)

  @nn.compact
  def __call__(self, images, deterministic: bool = True):
    """images (B, H, W, C) -> logits (B, G, G, num_classes), G = H / patch * cells_per_side."""
    x = self.encoder(images, None, deterministic)[:, 1:]                        # (B, N, D)
    cfg, k = self.cfg, self.cells_per_side
    logits = Dense((k * k * self.num_classes,), ('embed', None), cfg.init_std, dtype=cfg.dtype, kernels=cfg.kernels,
                   name='head')(x)                                              # (B, N, k*k*Q)
    side = self.image_size // self.patch
    logits = logits.reshape(x.shape[0], side, side, k, k, self.num_classes).transpose(0, 1, 3, 2, 4, 5)
    return logits.reshape(x.shape[0], side * k, side * k, self.num_classes).astype(jnp.float32)


GRID = 3   # jigsaw: tiles per side


def tile_geometry(image_size: int, tile_size: int):
  """(cell, margin, jitter) of a 3x3 jigsaw grid: cells of `cell` pixels start `margin` pixels
  in; a tile of `tile_size` sits anywhere up to `jitter` pixels into its cell, which leaves a
  random gap between neighbours (so the edges do not simply continue)."""
  cell = image_size // GRID
  if not 0 < tile_size <= cell:
    raise ConfigError(f'jigsaw.tile_size={tile_size} must be at least 1 and fit a cell of {cell} pixels '
                      f'(data.image_size={image_size} // {GRID})')
  return cell, (image_size - GRID * cell) // 2, cell - tile_size


def centred_offsets(batch: int, image_size: int, tile_size: int):
  """(B, 9, 2) offsets that put every tile in the middle of its cell (no jitter)."""
  _, _, jitter = tile_geometry(image_size, tile_size)
  return jnp.full((batch, GRID * GRID, 2), jitter // 2, jnp.int32)


def cut_tiles(images, offsets, tile_size: int):
  """images (B, H, W, C); offsets (B, 9, 2) (y, x) of each tile within its cell, row-major
  cells -> tiles (B, 9, tile, tile, C)."""
  cell, margin, _ = tile_geometry(images.shape[1], tile_size)
  rows, cols = jnp.divmod(jnp.arange(GRID * GRID), GRID)
  corners = margin + jnp.stack([rows, cols], -1) * cell + offsets                   # (B, 9, 2)
  c = images.shape[-1]
  cut = lambda image, yx: jax.lax.dynamic_slice(image, (yx[0], yx[1], 0), (tile_size, tile_size, c))
  return jax.vmap(lambda image, yxs: jax.vmap(lambda yx: cut(image, yx))(yxs))(images, corners)


def normalise_tiles(tiles, eps: float = 1e-5):
  """Each tile to zero mean and unit variance on its own, so that no tile's overall brightness
  or contrast tells where it came from."""
  mean = tiles.mean((-3, -2, -1), keepdims=True)
  var = tiles.var((-3, -2, -1), keepdims=True)
  return (tiles - mean) / jnp.sqrt(var + eps)


class JigsawNet(nn.Module):
  """Context-free network (Noroozi & Favaro 2016) around a ViT: nine tiles are cut from each
  image, each normalised on its own and put in a shuffled order; one encoder, shared by the
  tiles (folded into the batch), encodes each; an MLP on their mean patch states, concatenated
  in the shuffled order, names the permutation (the mean patch states learn where the class
  tokens of a small encoder on small tiles do not: benchmarks/PERFORMANCE.md)."""
  cfg: TransformerConfig
  patch: int
  image_size: int
  tile_size: int
  num_permutations: int
  hidden: int                          # the MLP's hidden width

  def setup(self):
    self.encoder = ViT(self.cfg, self.patch, self.tile_size, class_token=True)

  def encode_tiles(self, images, offsets=None, deterministic: bool = True):
    """images (B, H, W, C) -> the encoder's states of each tile (B, 9, 1 + n, D), tiles in
    cell order, cut at offsets (B, 9, 2) (centred if None) and normalised."""
    b = images.shape[0]
    if offsets is None:
      offsets = centred_offsets(b, self.image_size, self.tile_size)
    tiles = normalise_tiles(cut_tiles(images, offsets, self.tile_size))               # (B, 9, t, t, C)
    x = self.encoder(tiles.reshape((-1,) + tiles.shape[2:]), None, deterministic)     # (B*9, 1 + n, D)
    return x.reshape((b, GRID * GRID) + x.shape[1:])

  @nn.compact
  def __call__(self, images, offsets=None, order=None, deterministic: bool = True):
    """images (B, H, W, C) in [0, 1]; offsets (B, 9, 2) of the tiles in their cells; order (B, 9): the
    shuffle, position k showing the tile of cell order[k] (None: unshuffled) -> logits (B, P)."""
    x = self.encode_tiles(images, offsets, deterministic)[:, :, 1:].mean(2)            # (B, 9, D) mean patch states
    if order is not None:
      x = jnp.take_along_axis(x, order[..., None], axis=1)                            # shuffled
    cfg = self.cfg
    x = Dense((self.hidden,), (None, 'embed', 'mlp'), cfg.init_std, in_axes=2, dtype=cfg.dtype, kernels=cfg.kernels,
              name='fc')(x)
    x = activation_fn(cfg.activation)(x)                                               # (B, H)
    logits = Dense((self.num_permutations,), ('mlp', None), cfg.init_std, dtype=cfg.dtype, kernels=cfg.kernels,
                   name='head')(x)
    return logits.astype(jnp.float32)                                                 # (B, P)
