"""Llama decoder: rotary positions, RMSNorm, SwiGLU MLP, grouped-query attention, no biases.

The design of Llama (Touvron et al. 2023) as Llama 2/3, SmolLM, Qwen2 and Mistral share it:
pre-norm blocks with RMSNorm, rotary position embeddings applied to queries and keys
(Hugging Face's rotate-half layout: a head's first half pairs with its second), SwiGLU
(down(silu(gate x) * up x)), `num_kv_heads` key/value heads each serving a group of query
heads, and an output projection tied to the embedding or its own. `cfg.bias` puts biases on
the q, k, v projections only (Qwen2's). Its named sizes are in ssl_jax/models/sizes.py.

Parameter names follow Hugging Face's LlamaForCausalLM (embed_tokens, q_proj, gate_proj,
input_layernorm, norm, lm_head) so its checkpoints map across (ssl_jax/convert/llama.py).
The call signature is GPT's, so clm, generate and fewshot take either.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax.kernels.attention import attention
from ssl_jax.kernels.ops import tied_cross_entropy, tied_logits
from ssl_jax.models.layers import (Dense, Dropout, Stack, TransformerConfig, check_length, kv_cache, param_init,
                                   segment_positions)

# Llama 3.1/3.2's rotary scaling (its released configs): the context it was trained at and the
# wavelength band, in units of that context, between kept and divided frequencies.
LLAMA3_ORIGINAL_CONTEXT = 8192
LLAMA3_LOW_FREQ_FACTOR = 1.0
LLAMA3_HIGH_FREQ_FACTOR = 4.0


def inverse_frequencies(head_dim: int, theta: float, scaling: float = 0.0) -> np.ndarray:
  """(hs / 2,) float32 rotation rates, theta^(-2i / hs); with `scaling` (Llama 3.1's factor),
  wavelengths longer than the original context / low factor are divided by it, those shorter
  than context / high factor kept, and the band between interpolated smoothly."""
  rates = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  if scaling:
    wavelengths = 2 * math.pi / rates
    smooth = (LLAMA3_ORIGINAL_CONTEXT / wavelengths - LLAMA3_LOW_FREQ_FACTOR) / (
        LLAMA3_HIGH_FREQ_FACTOR - LLAMA3_LOW_FREQ_FACTOR)
    interpolated = (1 - smooth) * rates / scaling + smooth * rates
    rates = np.where(wavelengths > LLAMA3_ORIGINAL_CONTEXT / LLAMA3_LOW_FREQ_FACTOR, rates / scaling,
                     np.where(wavelengths < LLAMA3_ORIGINAL_CONTEXT / LLAMA3_HIGH_FREQ_FACTOR, rates, interpolated))
  return rates.astype(np.float32)


def rotate(x, positions, cfg: TransformerConfig):
  """Rotary embedding of x (B, T, heads, hs) at `positions` (T,) or (B, T), rotate-half layout:
  (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), computed in float32."""
  rates = jnp.asarray(inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling))
  angles = positions.astype(jnp.float32)[..., None] * rates                # (T or B, T, hs/2)
  angles = angles[None] if angles.ndim == 2 else angles                    # (B or 1, T, hs/2)
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]  # (B or 1, T, 1, hs/2)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class RMSNorm(nn.Module):
  """x / sqrt(mean(x^2) + eps) * scale, in float32, returned in the compute dtype."""
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones_init(), ('embed',)),
                       (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.cfg.ln_eps)
    return (normed * scale).astype(self.cfg.compute_dtype)


class LlamaAttention(nn.Module):
  """Grouped-query self-attention with rotary positions; the cache (decode) holds only the
  kv heads: (B, S, kv heads, hs)."""
  cfg: TransformerConfig
  out_std: float

  @nn.compact
  def __call__(self, x, positions, padding_mask=None, decode: bool = False, segment_ids=None):
    cfg = self.cfg
    project = lambda heads, name: Dense((heads, cfg.head_dim), ('embed', 'heads', 'kv'), cfg.init_std,
                                        use_bias=cfg.bias, dtype=cfg.dtype, kernels=cfg.kernels, name=name)(x)
    q = rotate(project(cfg.num_heads, 'q_proj'), positions, cfg)      # (B, T, nh, hs)
    k = rotate(project(cfg.kv_heads, 'k_proj'), positions, cfg)       # (B, T, nkv, hs)
    v = project(cfg.kv_heads, 'v_proj')                               # (B, T, nkv, hs)
    q = nn.with_logical_constraint(q, ('batch', 'length', 'heads', 'kv'))
    k, v, query_offset = kv_cache(self, k, v, decode)                 # (B, S, nkv, hs) when decoding
    y = attention(q, k, v, True, padding_mask, query_offset, cfg.attention, segment_ids)   # (B, T, nh, hs)
    return Dense((cfg.d_model,), ('heads', 'kv', 'embed'), self.out_std, in_axes=2, use_bias=False,
                 dtype=cfg.dtype, kernels=cfg.kernels, name='o_proj')(y)   # (B, T, C)


class SwiGLU(nn.Module):
  cfg: TransformerConfig
  out_std: float

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    project = lambda name: Dense((cfg.d_ff,), ('embed', 'mlp'), cfg.init_std, use_bias=False, dtype=cfg.dtype,
                                 kernels=cfg.kernels, name=name)(x)
    h = nn.silu(project('gate_proj')) * project('up_proj')                # (B, T, F)
    h = nn.with_logical_constraint(h, ('batch', 'length', 'mlp'))
    return Dense((cfg.d_model,), ('mlp', 'embed'), self.out_std, use_bias=False, dtype=cfg.dtype,
                 kernels=cfg.kernels, name='down_proj')(h)                 # (B, T, C)


class LlamaBlock(nn.Module):
  """x + attention(norm(x)), then x + SwiGLU(norm(x)); layers.Stack's block for this family."""
  cfg: TransformerConfig
  causal: bool

  @nn.compact
  def __call__(self, x, padding_mask, deterministic: bool, decode: bool, positions, segment_ids=None):
    cfg = self.cfg
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)    # residual projections, as GPT-2's
    drop = lambda h: Dropout(cfg.dropout)(h, deterministic=deterministic)
    x = x + drop(LlamaAttention(cfg, out_std, name='self_attn')(
        RMSNorm(cfg, name='input_layernorm')(x), positions, padding_mask, decode, segment_ids))
    x = x + drop(SwiGLU(cfg, out_std, name='mlp')(RMSNorm(cfg, name='post_attention_layernorm')(x)))
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class Llama(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, tokens, deterministic: bool = True, return_hidden: bool = False, *, positions=None,
               padding_mask=None, decode: bool = False, targets=None, segment_ids=None):
    """tokens (B, T) int -> logits (B, T, vocab) in float32 (or the final hidden states, or with
    `targets` the per-token cross-entropy (B, T)); `positions`, `padding_mask` and `decode` as
    GPT's (ssl_jax/models/gpt.py): rotary positions count from each row's first token.

    `segment_ids` (B, T) packs several documents into a row (consecutive runs of one id):
    attention stays inside each, and positions restart at each one's first token."""
    cfg = self.cfg
    _, t = tokens.shape
    if positions is None:
      check_length(t, cfg)       # the context the model is made for (rotary positions have no table)
      positions = jnp.arange(t) if segment_ids is None else segment_positions(segment_ids)
    embed = self.param('embed_tokens', param_init(cfg.init_std, ('vocab', 'embed')), (cfg.vocab_size, cfg.d_model))
    x = jnp.asarray(embed, cfg.compute_dtype)[tokens]                         # (B, T, C)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    x = Dropout(cfg.dropout)(x, deterministic=deterministic)
    x = Stack(cfg, causal=True, block=LlamaBlock, name='layers')(x, padding_mask, deterministic, decode, positions,
                                                                 segment_ids)
    x = RMSNorm(cfg, name='norm')(x)
    if return_hidden:
      return x
    head = embed if cfg.tie_embeddings else self.param(
        'lm_head', param_init(cfg.init_std, ('vocab', 'embed')), (cfg.vocab_size, cfg.d_model))
    head = jnp.asarray(head, cfg.compute_dtype)                                # (V, C)
    if targets is not None:
      constrain = lambda logits: nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))
      whole_rows = lambda table: nn.with_logical_constraint(table, ('vocab', None))
      return tied_cross_entropy(x, head, targets, cfg.kernels, constrain, whole_rows)
    logits = tied_logits(x, head, impl=cfg.kernels)                            # (B, T, V)
    logits = nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))
    return logits.astype(jnp.float32)
