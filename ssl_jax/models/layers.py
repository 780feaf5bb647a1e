"""The blocks every family shares: one attention, one MLP, one transformer block.

Parameters carry logical axis names (`embed`, `heads`, `kv`, `mlp`, `vocab`) and
activations are constrained by name (`batch`, `length`, `embed`); the rules table in
`ssl_jax/parallel.py` maps names onto the mesh, so nothing here knows the mesh.
"""

import dataclasses
import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssl_jax.kernels import ops
from ssl_jax.kernels.attention import attention


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """The shape and numerics of a stack of transformer blocks."""
  num_layers: int = 4
  num_heads: int = 4
  d_model: int = 128
  d_ff: int = 512
  vocab_size: int = 256
  max_len: int = 256
  dropout: float = 0.0
  bias: bool = True
  activation: str = 'gelu_tanh'   # gelu_tanh (GPT-2) | gelu (erf, BERT)
  pre_norm: bool = True           # GPT-2 style; False = post-LN (BERT, GPT-1)
  ln_eps: float = 1e-5
  init_std: float = 0.02
  dtype: str = 'float32'          # compute dtype; parameters are float32
  kernels: str = 'xla'            # xla | cpu: which formulation of products and norms (ssl_jax/kernels)
  attention: str = 'xla'          # xla | cpu | cudnn | splash | splash_interpret (ssl_jax/kernels/attention.py)
  remat: str = 'none'            # none | dots | full (REMAT_POLICIES)
  scan_layers: bool = False       # one scanned block (parameters stacked under 'h'): compiles in O(1) layers
  # Llama's (ssl_jax/models/llama.py); the other families ignore them.
  num_kv_heads: int = 0           # key/value heads (grouped-query attention; 1 = multi-query); 0 = num_heads
  rope_theta: float = 10000.0     # rotary base
  rope_scaling: float = 0.0       # Llama-3's rotary frequency scaling factor (0 = none)
  tie_embeddings: bool = True     # output projection = input embedding (else its own lm_head)

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


def check_length(length: int, cfg: TransformerConfig) -> None:
  """Learned positions end at max_len: a longer sequence is an error, not a silent clip."""
  if length > cfg.max_len:
    raise ValueError(f'sequence of {length} tokens is longer than the model\'s {cfg.max_len} positions')


def segment_positions(segment_ids):
  """(B, T) positions counting from the first token of each run of equal segment ids (packed
  documents or examples: each starts at position 0)."""
  t = segment_ids.shape[1]
  index = jnp.broadcast_to(jnp.arange(t), segment_ids.shape)
  starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
  return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)


def param_init(std: float, names):
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def zeros_init(names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def activation_fn(name: str):
  if name == 'gelu_tanh':
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == 'gelu':   # 0.5 x (1 + erf(x / sqrt 2)): jax.nn.gelu's erfc form is 3.4x slower on CPU
    return lambda x: 0.5 * x * (1 + jax.lax.erf(x * jnp.asarray(1 / math.sqrt(2), x.dtype)))
  if name == 'relu':
    return jax.nn.relu
  raise ValueError(f'unknown activation {name!r} (gelu_tanh, gelu, relu)')


class Dense(nn.Module):
  """y = x . kernel + bias, contracting the last `in_axes` axes of x (kernel: in_shape + features).

  Written out rather than nn.DenseGeneral, whose flattened initialiser does not mix with
  logically partitioned parameters.
  """
  features: Tuple[int, ...]
  names: Tuple[Optional[str], ...]   # logical names of the kernel's axes
  std: float
  in_axes: int = 1
  use_bias: bool = True
  dtype: str = 'float32'
  kernels: str = 'xla'

  @nn.compact
  def __call__(self, x):
    features = tuple(self.features)
    kernel = self.param('kernel', param_init(self.std, self.names), x.shape[-self.in_axes:] + features)
    y = ops.contract(x, kernel, self.in_axes, self.dtype, self.kernels)
    if self.use_bias:
      bias = self.param('bias', zeros_init(self.names[self.in_axes:]), features)
      y = ops.add_bias(y, bias.astype(self.dtype), self.kernels)
    return y


class LayerNorm(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    scale_init = nn.with_logical_partitioning(nn.initializers.ones_init(), ('embed',))
    impl = cfg.kernels if x.dtype == jnp.float32 else 'xla'
    return ops.layer_norm(cfg.ln_eps, cfg.bias, scale_init, zeros_init(('embed',)), cfg.compute_dtype, impl,
                          name='LayerNorm_0')(x)


class Dropout(nn.Module):
  """Inverted dropout (nn.Dropout's contract: `rate`, `deterministic`, the 'dropout' rng),
  with its keep mask hashed from the element index and two 32-bit seeds of the key.

  An integer hash (two rounds of lowbias32) costs a small fraction of jax.random's threefry
  an element (figures in benchmarks/PERFORMANCE.md). The mask is a pure function of (key, shape), the same under any sharding (the index is
  the global one); the index is taken modulo 2^32.
  """
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    keep = keep_mask(self.make_rng('dropout'), x.shape, self.rate)
    return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros((), x.dtype))


def _hash32(x):
  """lowbias32 (C. Wellons' integer hash search): a bijection of uint32 with low bias."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def keep_mask(key, shape, rate: float):
  """Bernoulli(1 - rate) booleans of `shape`, from `key` (probability exact to 2^-32)."""
  seeds = jax.random.bits(key, (2,), jnp.uint32)
  index, stride = jnp.zeros(shape, jnp.uint32), 1
  for axis in reversed(range(len(shape))):     # the flat index, modulo 2^32
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
    stride *= shape[axis]
  bits = _hash32(_hash32((index * jnp.uint32(0x9E3779B9)) ^ seeds[0]) ^ seeds[1])
  return bits >= jnp.uint32(min(round(rate * 2**32), 2**32 - 1))


class Attention(nn.Module):
  """Multi-head self-attention with a fused QKV projection.

  Attention-probability dropout is not applied (fused kernels do not expose it); the
  residual dropout after the output projection is.

  With `decode`, keys and values are also written into a `cache` collection (Flax's
  pattern: apply with mutable=['cache']): `key` and `value` (B, S, nh, hs) and `index`,
  the next free slot. The call that creates the cache (model.init with decode) takes S
  from its input's length; later calls write their T tokens at `index` and attend over
  all S slots, padding_mask (B, S) then marking the slots that hold real tokens.
  `segment_ids` (B, T) (packed documents or examples) keeps each query to its own segment.
  """
  cfg: TransformerConfig
  out_std: float

  @nn.compact
  def __call__(self, x, *, causal: bool, padding_mask: Optional[jax.Array] = None, decode: bool = False,
               segment_ids=None):
    cfg = self.cfg
    qkv = Dense((3, cfg.num_heads, cfg.head_dim), ('embed', 'qkv', 'heads', 'kv'), cfg.init_std,
                use_bias=cfg.bias, dtype=cfg.dtype, kernels=cfg.kernels, name='qkv')(x)   # (B, T, 3, nh, hs)
    q, k, v = ops.split_qkv(qkv, cfg.kernels)                                           # (B, T, nh, hs)
    q = nn.with_logical_constraint(q, ('batch', 'length', 'heads', 'kv'))
    k, v, query_offset = kv_cache(self, k, v, decode)
    y = attention(q, k, v, causal, padding_mask, query_offset, cfg.attention, segment_ids)   # (B, T, nh, hs)
    y = Dense((cfg.d_model,), ('heads', 'kv', 'embed'), self.out_std, in_axes=2,
              use_bias=cfg.bias, dtype=cfg.dtype, kernels=cfg.kernels, name='out')(y)   # (B, T, C)
    return y


def kv_cache(module: nn.Module, k, v, decode: bool):
  """With `decode`, writes k, v (B, T, kv heads, hs) into `module`'s `cache` collection (see
  Attention) and returns the whole cache's (B, S, kv heads, hs) and the first query's slot;
  otherwise k, v and None."""
  if not decode:
    return k, v, None
  creating = not module.has_variable('cache', 'key')
  cached_k = module.variable('cache', 'key', jnp.zeros, k.shape, k.dtype)   # (B, S, kv heads, hs)
  cached_v = module.variable('cache', 'value', jnp.zeros, v.shape, v.dtype)
  index = module.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
  if creating:
    return k, v, None
  query_offset = index.value
  cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, query_offset, 0, 0))
  cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, query_offset, 0, 0))
  index.value = query_offset + k.shape[1]
  return cached_k.value, cached_v.value, query_offset


class MLP(nn.Module):
  cfg: TransformerConfig
  out_std: float

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    h = Dense((cfg.d_ff,), ('embed', 'mlp'), cfg.init_std, use_bias=cfg.bias, dtype=cfg.dtype,
              kernels=cfg.kernels, name='fc')(x)                                            # (B, T, F)
    h = nn.with_logical_constraint(h, ('batch', 'length', 'mlp'))
    h = activation_fn(cfg.activation)(h)
    return Dense((cfg.d_model,), ('mlp', 'embed'), self.out_std, use_bias=cfg.bias, dtype=cfg.dtype,
                 kernels=cfg.kernels, name='proj')(h)                                       # (B, T, C)


class Block(nn.Module):
  """Attention then MLP, each with a residual; LayerNorm before (pre-LN) or after (post-LN).
  Its positions are learned ones added below the stack: `positions` is taken and unused."""
  cfg: TransformerConfig
  causal: bool

  @nn.compact
  def __call__(self, x, padding_mask=None, deterministic: bool = True, decode: bool = False, positions=None,
               segment_ids=None):
    del positions
    cfg = self.cfg
    # GPT-2: residual projections scaled by 1/sqrt(2 * layers) at init.
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers) if cfg.pre_norm else cfg.init_std
    drop = lambda h: Dropout(cfg.dropout)(h, deterministic=deterministic)
    attn = Attention(cfg, out_std, name='attn')
    mlp = MLP(cfg, out_std, name='mlp')
    if cfg.pre_norm:
      x = x + drop(attn(LayerNorm(cfg, name='ln1')(x), causal=self.causal, padding_mask=padding_mask,
                            decode=decode, segment_ids=segment_ids))
      x = x + drop(mlp(LayerNorm(cfg, name='ln2')(x)))
    else:
      x = LayerNorm(cfg, name='ln1')(x + drop(attn(x, causal=self.causal, padding_mask=padding_mask,
                                                decode=decode, segment_ids=segment_ids)))
      x = LayerNorm(cfg, name='ln2')(x + drop(mlp(x)))
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


# What a block keeps from its forward pass for the backward pass (`model.remat`):
#   none: everything (fastest, most memory); dots: the outputs of the weight matmuls only,
#   recomputing attention scores, norms and activations; full: only the block's input.
REMAT_POLICIES = {
    'none': None,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'full': jax.checkpoint_policies.nothing_saveable,
}


class Stack(nn.Module):
  """`num_layers` blocks, each rematerialised in the backward pass as `cfg.remat` says.

  `block` is the block's module (layers.Block unless a family brings its own). Each block is
  also given each token's `positions` and packed documents' `segment_ids` when either is set."""
  cfg: TransformerConfig
  causal: bool
  block: Optional[type] = None

  @nn.compact
  def __call__(self, x, padding_mask=None, deterministic: bool = True, decode: bool = False, positions=None,
               segment_ids=None):
    extra = () if positions is None and segment_ids is None else (positions, segment_ids)
    if self.cfg.scan_layers:
      scanned = nn.scan(_ScanStep, variable_axes={'params': 0, 'cache': 0},
                        split_rngs={'params': True, 'dropout': True}, in_axes=nn.broadcast,
                        length=self.cfg.num_layers, metadata_params={nn.PARTITION_NAME: 'layers'})
      x, _ = scanned(self.cfg, self.causal, deterministic, decode, self.block, name='h')(x, padding_mask, *extra)
      return x
    block = self.block or Block
    if self.cfg.remat != 'none':
      block = nn.remat(block, static_argnums=(3, 4), policy=REMAT_POLICIES[self.cfg.remat])
    for i in range(self.cfg.num_layers):
      x = block(self.cfg, self.causal, name=f'h_{i}')(x, padding_mask, deterministic, decode, *extra)
    return x


class _ScanStep(nn.Module):
  """One block as a scan step: (carry, padding mask) -> (carry, nothing)."""
  cfg: TransformerConfig
  causal: bool
  deterministic: bool
  decode: bool
  block: Optional[type] = None

  @nn.compact
  def __call__(self, x, padding_mask, *extra):
    block = self.block or Block
    if self.cfg.remat != 'none':
      block = nn.remat(block, static_argnums=(3, 4), policy=REMAT_POLICIES[self.cfg.remat])
    return block(self.cfg, self.causal, name='block')(x, padding_mask, self.deterministic, self.decode, *extra), None
