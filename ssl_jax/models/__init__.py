"""Models built from the `model` block of a config; the families are ssl_jax/models/families.py."""

from ssl_jax.errors import ConfigError
from ssl_jax.models import families, sizes
from ssl_jax.models.layers import REMAT_POLICIES, TransformerConfig


def run_transformer_config(config, choice) -> TransformerConfig:
  """The TransformerConfig a run's config describes (vocab_size and max_len resolved), built
  from the kernels, attention and dtype of `choice` (ssl_jax.kernels.choose)."""
  m = config.model
  family = families.get(m.family)
  sizes.check_shape(m)
  if m.d_model % m.num_heads:
    raise ConfigError(f'model.d_model={m.d_model} is not divisible by model.num_heads={m.num_heads}')
  vision = family.text is None
  if m.vocab_size <= 0 and not vision:
    raise ConfigError('model.vocab_size is unset: it comes from the tokenizer')
  if vision and (m.patch <= 0 or config.data.image_size % m.patch):
    raise ConfigError(f'model.patch={m.patch} must divide data.image_size={config.data.image_size}')
  remat = {False: 'none', True: 'full'}.get(m.remat, m.remat)   # workdirs saved when it was a bool
  if remat not in REMAT_POLICIES:
    raise ConfigError(f'model.remat={m.remat!r}: expected one of {", ".join(REMAT_POLICIES)}')
  return families.transformer_config(
      m.family, num_layers=m.num_layers, num_heads=m.num_heads, d_model=m.d_model, d_ff=m.d_ff,
      vocab_size=max(m.vocab_size, 0), max_len=m.max_len or config.data.seq_len, dropout=m.dropout,
      bias=m.bias, activation=m.activation, dtype=choice.dtype, kernels=choice.kernels,
      attention=choice.attention, remat=remat, scan_layers=m.scan_layers, **_llama_fields(m),
      **({'ln_eps': m.ln_eps} if m.ln_eps else {}))


def _llama_fields(m) -> dict:
  """The llama family's keys (the other families ignore them)."""
  if m.num_kv_heads < 0 or m.num_heads % (m.num_kv_heads or m.num_heads):
    raise ConfigError(f'model.num_kv_heads={m.num_kv_heads} does not divide model.num_heads={m.num_heads}')
  return dict(num_kv_heads=m.num_kv_heads, rope_theta=m.rope_theta or 10000.0, rope_scaling=m.rope_scaling,
              tie_embeddings=m.tie_embeddings)


def build(config, choice):
  """Returns (flax module, TransformerConfig) for the config's model family, its kernels as
  `choice` (ssl_jax.kernels.choose) says."""
  cfg = run_transformer_config(config, choice)
  return families.get(config.model.family).build(config, cfg), cfg
