"""GPT decoder: learned positions, pre-LN blocks, final LayerNorm, tied input/output embedding.

Its named sizes (GPT-1, GPT-2, GPT-3 and CPU ones) are in ssl_jax/models/sizes.py.
Parameter names follow GPT-2's layout (wte, wpe, h_i, ln_f) so its weights map across.
"""

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.kernels.ops import tied_cross_entropy, tied_logits
from ssl_jax.models.layers import (Dropout, LayerNorm, Stack, TransformerConfig, check_length, param_init,
                                   segment_positions)


class GPT(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, tokens, deterministic: bool = True, return_hidden: bool = False, *, positions=None,
               padding_mask=None, decode: bool = False, targets=None, segment_ids=None):
    """tokens (B, T) int -> logits (B, T, vocab) in float32 (or the final hidden states);
    with `targets` (B, T), the per-token cross-entropy (B, T) instead of the logits, computed
    without holding them all (kernels.ops.tied_cross_entropy), as nanoGPT's model returns its loss.

    Decoding (ssl_jax/generate.py) passes `decode` (keys and values go to the `cache`
    collection, see layers.Attention), each row's `positions` (B, T) (rows are left-padded
    to one length) and padding_mask (B, S) over the cache's slots.

    `segment_ids` (B, T) packs several documents into a row (consecutive runs of one id, as
    Llama's): attention stays inside each, and the learned positions restart at its first token.
    """
    cfg = self.cfg
    _, t = tokens.shape
    wte = self.param('wte', param_init(cfg.init_std, ('vocab', 'embed')), (cfg.vocab_size, cfg.d_model))
    wpe = self.param('wpe', param_init(cfg.init_std, (None, 'embed')), (cfg.max_len, cfg.d_model))
    if positions is None and segment_ids is not None:
      check_length(t, cfg)
      positions = segment_positions(segment_ids)                         # (B, T)
    if positions is None:
      check_length(t, cfg)
      position_embeddings = wpe[:t]                                      # (T, C)
    else:
      position_embeddings = wpe[positions]                               # (B, T, C)
    x = jnp.asarray(wte, cfg.compute_dtype)[tokens] + position_embeddings.astype(cfg.compute_dtype)  # (B, T, C)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    x = Dropout(cfg.dropout)(x, deterministic=deterministic)
    x = Stack(cfg, causal=True, name='blocks')(x, padding_mask, deterministic, decode, None, segment_ids)
    x = LayerNorm(cfg, name='ln_f')(x)
    if return_hidden:
      return x
    if targets is not None:
      constrain = lambda logits: nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))
      whole_rows = lambda table: nn.with_logical_constraint(table, ('vocab', None))
      return tied_cross_entropy(x, jnp.asarray(wte, cfg.compute_dtype), targets, cfg.kernels, constrain, whole_rows)
    logits = tied_logits(x, jnp.asarray(wte, cfg.compute_dtype), impl=cfg.kernels)   # (B, T, V), tied
    logits = nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))
    return logits.astype(jnp.float32)

