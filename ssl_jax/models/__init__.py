"""Model registry: one entry per family, built from the `model` block of a config."""

from ssl_jax.models import bert, gpt
from ssl_jax.models.layers import TransformerConfig
from ssl_jax.config import ConfigError

# family -> (module class, overrides of TransformerConfig that define the family)
FAMILIES = {
    'gpt': (gpt.GPT, dict(pre_norm=True, ln_eps=1e-5)),
    'bert': (bert.BERT, dict(pre_norm=False, ln_eps=1e-12)),
}


def transformer_config(config) -> TransformerConfig:
  """The TransformerConfig a run's config describes (vocab_size and max_len resolved)."""
  m = config.model
  if m.family not in FAMILIES:
    raise ConfigError(f'unknown model.family {m.family!r}; known: {", ".join(FAMILIES)}')
  if m.d_model % m.num_heads:
    raise ConfigError(f'model.d_model={m.d_model} is not divisible by model.num_heads={m.num_heads}')
  if m.vocab_size <= 0:
    raise ConfigError('model.vocab_size is unset: it comes from the tokenizer')
  _, family = FAMILIES[m.family]
  return TransformerConfig(
      num_layers=m.num_layers, num_heads=m.num_heads, d_model=m.d_model, d_ff=m.d_ff,
      vocab_size=m.vocab_size, max_len=m.max_len or config.data.seq_len, dropout=m.dropout,
      bias=m.bias, activation=m.activation, dtype=m.dtype, remat=m.remat, **family)


def build(config):
  """Returns (flax module, TransformerConfig) for the config's model family."""
  cfg = transformer_config(config)
  module, _ = FAMILIES[config.model.family]
  return module(cfg), cfg
