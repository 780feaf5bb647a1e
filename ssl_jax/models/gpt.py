"""GPT decoder: learned positions, pre-LN blocks, final LayerNorm, tied input/output embedding.

Sizes are named after their papers: GPT-1 (Radford et al. 2018), GPT-2 (2019) and the
GPT-3 family (Brown et al. 2020, Table 2.1), plus small sizes that train on a CPU.
Parameter names follow GPT-2's layout (wte, wpe, h_i, ln_f) so its weights map across.
"""

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.errors import ConfigError
from ssl_jax.kernels.ops import tied_cross_entropy, tied_logits
from ssl_jax.models.layers import Dropout, LayerNorm, Stack, TransformerConfig, check_length, param_init

# name: (layers, heads, d_model, context). d_ff is 4 * d_model for all of them.
SIZES = {
    'gpt:nano': (2, 2, 64, 128),
    'gpt:baby': (4, 4, 128, 64),        # nanoGPT's CPU "baby GPT"
    'gpt:small': (6, 6, 384, 256),      # nanoGPT's shakespeare_char model
    'gpt1': (12, 12, 768, 512),
    'gpt2:124M': (12, 12, 768, 1024),
    'gpt2:350M': (24, 16, 1024, 1024),
    'gpt2:774M': (36, 20, 1280, 1024),
    'gpt2:1.5B': (48, 25, 1600, 1024),
    'gpt3:125M': (12, 12, 768, 2048),
    'gpt3:350M': (24, 16, 1024, 2048),
    'gpt3:760M': (24, 16, 1536, 2048),
    'gpt3:1.3B': (24, 16, 2048, 2048),   # the paper prints 24 heads of 128; 2048 = 16 x 128
    'gpt3:2.7B': (32, 32, 2560, 2048),
    'gpt3:6.7B': (32, 32, 4096, 2048),
    'gpt3:13B': (40, 40, 5120, 2048),    # the paper prints 5140; 40 heads x 128 = 5120
    'gpt3:175B': (96, 96, 12288, 2048),
}


def size(name: str) -> dict:
  """Decodes a named size into model config fields; unknown names fail with the list."""
  if name not in SIZES:
    raise ConfigError(f'unknown GPT size {name!r}; known: {", ".join(SIZES)}')
  layers, heads, d_model, context = SIZES[name]
  return dict(num_layers=layers, num_heads=heads, d_model=d_model, d_ff=4 * d_model,
              max_len=context)


class GPT(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, tokens, deterministic: bool = True, return_hidden: bool = False, *, positions=None,
               padding_mask=None, decode: bool = False, targets=None):
    """tokens (B, T) int -> logits (B, T, vocab) in float32 (or the final hidden states);
    with `targets` (B, T), the per-token cross-entropy (B, T) instead of the logits, computed
    without holding them all (kernels.ops.tied_cross_entropy), as nanoGPT's model returns its loss.

    Decoding (ssl_jax/generate.py) passes `decode` (keys and values go to the `cache`
    collection, see layers.Attention), each row's `positions` (B, T) (rows are left-padded
    to one length) and padding_mask (B, S) over the cache's slots.
    """
    cfg = self.cfg
    _, t = tokens.shape
    wte = self.param('wte', param_init(cfg.init_std, ('vocab', 'embed')), (cfg.vocab_size, cfg.d_model))
    wpe = self.param('wpe', param_init(cfg.init_std, (None, 'embed')), (cfg.max_len, cfg.d_model))
    if positions is None:
      check_length(t, cfg)
      position_embeddings = wpe[:t]                                      # (T, C)
    else:
      position_embeddings = wpe[positions]                               # (B, T, C)
    x = jnp.asarray(wte, cfg.compute_dtype)[tokens] + position_embeddings.astype(cfg.compute_dtype)  # (B, T, C)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    x = Dropout(cfg.dropout)(x, deterministic=deterministic)
    x = Stack(cfg, causal=True, name='blocks')(x, padding_mask, deterministic, decode)
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

