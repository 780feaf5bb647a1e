"""Vision transformer (Dosovitskiy et al. 2021) and the masked autoencoder around it (He et al. 2022).

Images are cut into patches, each patch is a token; the blocks are the text models' own
(pre-LN, `layers.Stack`). The MAE encoder sees only the visible patches; a light decoder
takes them back, with a shared mask token at every hidden place, and predicts pixels.
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ssl_jax.config import ConfigError
from ssl_jax.models.layers import Dense, LayerNorm, Stack, TransformerConfig, param_init

# name: (layers, heads, d_model); d_ff is 4 * d_model. The patch size follows the slash.
SIZES = {'Ti': (12, 3, 192), 'S': (12, 6, 384), 'B': (12, 12, 768), 'L': (24, 16, 1024)}


def size(name: str) -> dict:
  """'vit:S/4' -> model fields (patch 4); unknown names fail with the list."""
  try:
    width, patch = name.split(':', 1)[1].split('/')
    layers, heads, d_model = SIZES[width]
    patch = int(patch)
  except (ValueError, KeyError, IndexError):
    raise ConfigError(f'unknown ViT size {name!r}; known: vit:{{{",".join(SIZES)}}}/<patch>, e.g. vit:S/4') from None
  return dict(num_layers=layers, num_heads=heads, d_model=d_model, d_ff=4 * d_model, patch=patch)


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
  def __call__(self, images, keep=None, deterministic: bool = True):
    """images (B, H, W, C) float; keep (B, K) indices of the patches to encode (all if None).

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
    if keep is not None:   # only the visible patches are embedded and encoded
      patches = jnp.take_along_axis(patches, keep[..., None], axis=1)          # (B, K, p*p*C)
      pos = jnp.take_along_axis(pos, keep[..., None], axis=1)                  # (B, K, C)
    x = Dense((cfg.d_model,), (None, 'embed'), cfg.init_std, dtype=cfg.dtype, name='patch_embed')(patches)
    x = x + pos.astype(x.dtype)
    if self.class_token:
      cls = self.param('cls', param_init(cfg.init_std, (None, None, 'embed')), (1, 1, cfg.d_model))
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, cfg.d_model)).astype(x.dtype), x], axis=1)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
    x = Stack(cfg, causal=False, name='blocks')(x, None, deterministic)
    return LayerNorm(cfg, name='ln_f')(x)


class MAE(nn.Module):
  """Masked autoencoder: ViT encoder on visible patches, light decoder over all, pixels out."""
  cfg: TransformerConfig               # the encoder
  decoder_cfg: TransformerConfig       # the decoder (narrower, fewer layers)
  patch: int
  image_size: int
  mask_ratio: float = 0.75             # read by the objective: how many patches hide

  def setup(self):
    self.encoder = ViT(self.cfg, self.patch, self.image_size, class_token=True)

  @nn.compact
  def __call__(self, images, keep, deterministic: bool = True):
    """images (B, H, W, C); keep (B, K) visible patch indices -> predicted pixels (B, N, p*p*C)."""
    dec = self.decoder_cfg
    n = self.encoder.num_patches
    x = self.encoder(images, keep, deterministic)                              # (B, 1 + K, C)
    x = Dense((dec.d_model,), ('embed', None), dec.init_std, dtype=dec.dtype, name='decoder_embed')(x)
    mask_token = self.param('mask_token', param_init(dec.init_std, (None, None, None)), (1, 1, dec.d_model))
    b = x.shape[0]
    tokens = jnp.broadcast_to(mask_token, (b, n, dec.d_model)).astype(x.dtype)
    rows = jnp.arange(b)[:, None]
    tokens = tokens.at[rows, keep].set(x[:, 1:])                               # visible ones back in place
    tokens = tokens + jnp.asarray(sincos_2d(self.image_size // self.patch, dec.d_model), x.dtype)
    y = jnp.concatenate([x[:, :1], tokens], axis=1)                            # (B, 1 + N, D)
    y = Stack(dec, causal=False, name='decoder_blocks')(y, None, deterministic)
    y = LayerNorm(dec, name='decoder_ln')(y)
    pixels = self.patch * self.patch * images.shape[-1]
    return Dense((pixels,), (None, None), dec.init_std, dtype=dec.dtype, name='decoder_pred')(y[:, 1:])


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
    logits = Dense((self.num_classes,), ('embed', None), self.cfg.init_std, dtype=self.cfg.dtype, name='head')(x[:, 0])
    return logits.astype(jnp.float32)                                          # (B, classes)
