"""Fine-tuning heads on a pretrained body: the body's parameters sit under one key (`bert`,
`gpt`; a ViT's under `encoder`, see vit.ViTClassifier), the fresh head under `head`, so a
pretrained tree maps across by that one name.

  BertClassifier  a linear layer on the pooled [CLS] vector, or the tokens' mean (single texts and pairs)
  BertTagger      a linear layer on every hidden state (part of speech, ...)
  BertSpanQA      start and end logits over the tokens (extractive QA)
  GPTClassifier   GPT-1's: a linear layer on the last token's state, plus the LM logits for
                  the auxiliary language-modelling loss
"""

import flax.linen as nn
import jax.numpy as jnp

from ssl_jax.models.bert import BERT
from ssl_jax.models.gpt import GPT
from ssl_jax.models.layers import Dense, Dropout, TransformerConfig


def _head(cfg: TransformerConfig, outputs: int):
  return Dense((outputs,), ('embed', None), cfg.init_std, dtype=cfg.dtype, kernels=cfg.kernels, name='head')


class BertClassifier(nn.Module):
  """Classes from the pooled [CLS] vector (B, classes), or with pool='mean' from the mean of
  the hidden states over the text's tokens (sentence-transformers' pooling, finetune.pool), or
  with per_token from every hidden state (B, T, classes): BertTagger."""
  cfg: TransformerConfig
  num_classes: int
  per_token: bool = False
  pool: str = 'cls'

  @nn.compact
  def __call__(self, tokens, segment_ids=None, padding_mask=None, deterministic: bool = True, pack_ids=None,
               cls_positions=None):
    """Packed rows (data.pack) give `pack_ids` (B, T) and each example's [CLS] position
    `cls_positions` (B, K): the logits are then (B, K, classes), one row an example."""
    out = BERT(self.cfg, name='bert')(tokens, segment_ids, padding_mask, deterministic=deterministic,
                                      return_hidden=True, pack_ids=pack_ids, pool_positions=cls_positions)
    if self.per_token:
      x = out['hidden']                                                     # (B, T, C)
    elif self.pool == 'mean':
      if cls_positions is not None:
        raise ValueError("finetune.pool='mean' reads one example a row: packed rows (data.pack) pool [CLS]")
      keep = (jnp.ones(tokens.shape, bool) if padding_mask is None else padding_mask)[..., None]   # (B, T, 1)
      x = (out['hidden'] * keep).sum(1) / jnp.maximum(keep.sum(1), 1)        # (B, C)
    else:
      x = out['pooled']                                                     # (B, C) or (B, K, C)
    x = Dropout(self.cfg.dropout)(x, deterministic=deterministic)
    return {'logits': _head(self.cfg, self.num_classes)(x).astype(jnp.float32)}


class BertTagger(BertClassifier):
  per_token: bool = True


class BertSpanQA(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, tokens, segment_ids=None, padding_mask=None, deterministic: bool = True):
    out = BERT(self.cfg, name='bert')(tokens, segment_ids, padding_mask, deterministic=deterministic,
                                      return_hidden=True)
    logits = _head(self.cfg, 2)(out['hidden']).astype(jnp.float32)                  # (B, T, 2)
    return {'start_logits': logits[..., 0], 'end_logits': logits[..., 1]}             # (B, T) each


class GPTClassifier(nn.Module):
  cfg: TransformerConfig
  num_classes: int

  @nn.compact
  def __call__(self, tokens, lengths, deterministic: bool = True):
    """tokens (B, T) left-aligned, lengths (B,): the class read at token lengths - 1."""
    body = GPT(self.cfg, name='gpt')
    x = body(tokens, deterministic=deterministic, return_hidden=True)                 # (B, T, C)
    last = jnp.take_along_axis(x, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]  # (B, C)
    last = Dropout(self.cfg.dropout)(last, deterministic=deterministic)
    logits = _head(self.cfg, self.num_classes)(last).astype(jnp.float32)              # (B, classes)
    wte = jnp.asarray(nn.meta.unbox(body.variables['params']['wte']), x.dtype)    # boxed during init
    lm_logits = jnp.einsum('btc,vc->btv', x, wte).astype(jnp.float32)                # (B, T, V), tied
    return {'logits': logits, 'lm_logits': lm_logits}
