"""BERT encoder (Devlin et al. 2019): token + position + segment embeddings, post-LN blocks,
a tanh pooler on [CLS], the masked-LM head (computed only at the masked positions, its
output layer tied to the word embeddings) and the next-sentence head on the pooled vector.

Its named sizes (the paper's and google-research/bert's smaller ones) are in ssl_jax/models/sizes.py.
"""

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.kernels.ops import tied_logits
from ssl_jax.models.layers import (Dense, Dropout, LayerNorm, Stack, TransformerConfig, activation_fn, check_length,
                                   param_init, segment_positions)

TYPE_VOCAB_SIZE = 2


class BERT(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, tokens, segment_ids=None, padding_mask=None, masked_positions=None,
               deterministic: bool = True, return_hidden: bool = False, pack_ids=None, pool_positions=None):
    """tokens, segment_ids, padding_mask: (B, T); masked_positions: (B, P) indices into T.
    (segment_ids are BERT's token types, sentence A or B.)

    Packed examples (several short ones a row, data.pack): `pack_ids` (B, T) numbers each
    token's example (consecutive runs of one id); attention stays inside each and positions
    restart at its first token. `pool_positions` (B, K) are the examples' [CLS] tokens: the
    pooled vectors are then (B, K, C), one an example.

    Returns a dict: `hidden` (B, T, C), `pooled` (B, C), `nsp_logits` (B, 2) and
    `mlm_logits` (B, P, V) at the masked positions (at every position if none are given);
    with return_hidden, only `hidden` and `pooled` (the body a fine-tuning head sits on).
    """
    cfg = self.cfg
    _, t = tokens.shape
    check_length(t, cfg)
    if segment_ids is None:
      segment_ids = jnp.zeros_like(tokens)
    dtype = cfg.compute_dtype
    word = self.param('word_embeddings', param_init(cfg.init_std, ('vocab', 'embed')), (cfg.vocab_size, cfg.d_model))
    position = self.param('position_embeddings', param_init(cfg.init_std, (None, 'embed')), (cfg.max_len, cfg.d_model))
    segment = self.param('token_type_embeddings', param_init(cfg.init_std, (None, 'embed')),
                         (TYPE_VOCAB_SIZE, cfg.d_model))
    positions = position[:t] if pack_ids is None else position[segment_positions(pack_ids)]   # (T or B, T, C)
    x = (jnp.asarray(word, dtype)[tokens] + jnp.asarray(positions, dtype)
         + jnp.asarray(segment, dtype)[segment_ids])                               # (B, T, C)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    x = LayerNorm(cfg, name='embeddings_ln')(x)
    x = Dropout(cfg.dropout)(x, deterministic=deterministic)
    x = Stack(cfg, causal=False, name='blocks')(x, padding_mask, deterministic, False, None, pack_ids)  # (B, T, C)
    cls = x[:, 0] if pool_positions is None else jnp.take_along_axis(x, pool_positions[..., None], axis=1)
    pooled = jnp.tanh(Dense((cfg.d_model,), ('embed', 'mlp'), cfg.init_std, dtype=cfg.dtype,
                            name='pooler')(cls))                                    # (B, C) (or B, K, C) from [CLS]
    if return_hidden:
      return {'hidden': x, 'pooled': pooled}
    nsp_logits = Dense((2,), ('mlp', None), cfg.init_std, dtype=cfg.dtype, kernels=cfg.kernels,
                       name='nsp')(pooled)                                          # (B, 2)
    h = x if masked_positions is None else jnp.take_along_axis(x, masked_positions[..., None], axis=1)  # (B, P, C)
    h = nn.with_logical_constraint(h, ('batch', 'length', 'embed'))
    # Its output axis has a name of its own, which the rules table splits over 'tensor' (as 'mlp')
    # except on CPU: with data, fsdp and tensor all > 1, XLA:CPU got the gradients of the
    # LayerNorm after it wrong (seen with jax 0.10.2).
    h = Dense((cfg.d_model,), ('embed', 'mlm_transform'), cfg.init_std, dtype=cfg.dtype, kernels=cfg.kernels,
              name='mlm_transform')(h)
    h = LayerNorm(cfg, name='mlm_ln')(activation_fn(cfg.activation)(h))
    bias = self.param('mlm_bias', nn.with_logical_partitioning(nn.initializers.zeros_init(), ('vocab',)),
                      (cfg.vocab_size,))
    mlm_logits = tied_logits(h, jnp.asarray(word, dtype), bias, cfg.kernels)     # (B, P, V), tied
    return {'hidden': x, 'pooled': pooled, 'nsp_logits': nsp_logits.astype(jnp.float32),
            'mlm_logits': mlm_logits.astype(jnp.float32)}
