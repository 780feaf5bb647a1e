"""The blocks every family shares: one attention, one MLP, one transformer block.

Parameters carry logical axis names (`embed`, `heads`, `kv`, `mlp`, `vocab`) and
activations are constrained by name (`batch`, `length`, `embed`); the rules table in
`ssl_jax/parallel.py` maps names onto the mesh, so nothing here knows the mesh.
"""

import dataclasses
import functools
import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp


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
  remat: str = 'none'            # none | dots | full (REMAT_POLICIES)
  scan_layers: bool = False       # one scanned block (parameters stacked under 'h'): compiles in O(1) layers

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


def check_length(length: int, cfg: TransformerConfig) -> None:
  """Learned positions end at max_len: a longer sequence is an error, not a silent clip."""
  if length > cfg.max_len:
    raise ValueError(f'sequence of {length} tokens is longer than the model\'s {cfg.max_len} positions')


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

  @nn.compact
  def __call__(self, x):
    features = tuple(self.features)
    kernel = self.param('kernel', param_init(self.std, self.names), x.shape[-self.in_axes:] + features)
    # Tokens flattened to one axis: XLA:CPU's backward matmuls are ~1.5x slower when the
    # weight gradient contracts over two token axes (batch, length) instead of one.
    lead = x.shape[:-self.in_axes]
    x = x.reshape((-1,) + x.shape[-self.in_axes:])
    if jax.default_backend() == 'cpu' and kernel.ndim > 2:
      # And the kernel to a matrix: with more than one output (or input) axis, XLA:CPU
      # transposes the gradient into a canonical order before the weight-gradient matmul
      # (a (1152, 2048) copy a layer for a fused QKV at 32 x 64 tokens); matrices it
      # contracts as they are. (Only on CPU: merging a sharded heads axis with others
      # would make GSPMD gather the kernel.)
      k_in = math.prod(kernel.shape[:self.in_axes])
      y = x.reshape(-1, k_in).astype(self.dtype) @ kernel.reshape(k_in, -1).astype(self.dtype)
    else:
      y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=self.in_axes)
    y = y.reshape(lead + features)
    if self.use_bias:
      bias = self.param('bias', zeros_init(self.names[self.in_axes:]), features)
      y = add_bias(y, bias.astype(self.dtype))
    return y


def add_bias(y, bias):
  """y + bias (bias: the trailing axes of y); on CPU its gradient for the bias is a product
  with a vector of ones.

  XLA:CPU rewrites a sum over many elements into a windowed tree of partial sums, and the
  loop it emits for a sum over the token axes walks memory across rows: 8 ms for the bias
  gradient of one (32, 64, 1536) activation of a BERT step, against 0.2 ms for the product.
  The ones pass an optimisation barrier, or XLA turns the product back into that sum.
  """
  if jax.default_backend() != 'cpu':
    return y + bias
  return _add_bias(y, bias, bias.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _add_bias(y, bias, shape):
  del shape
  return y + bias


def _add_bias_fwd(y, bias, shape):
  del shape
  return y + bias, None


def _add_bias_bwd(shape, _, g):
  return g, sum_rows(g, math.prod(shape)).reshape(shape)


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def sum_rows(g, size: int):
  """g summed over all but its trailing `size` elements, as a vector-matrix product."""
  rows = g.reshape(-1, size)
  ones = jax.lax.optimization_barrier(jnp.ones((rows.shape[0],), g.dtype))
  return ones @ rows


class LayerNorm(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    scale_init = nn.with_logical_partitioning(nn.initializers.ones_init(), ('embed',))
    if jax.default_backend() == 'cpu' and cfg.compute_dtype == jnp.float32 and x.dtype == jnp.float32:
      return _CpuLayerNorm(cfg.ln_eps, cfg.bias, scale_init, name='LayerNorm_0')(x)
    return nn.LayerNorm(epsilon=cfg.ln_eps, dtype=cfg.compute_dtype, use_bias=cfg.bias, scale_init=scale_init,
                        bias_init=zeros_init(('embed',)), name='LayerNorm_0')(x)


class _CpuLayerNorm(nn.Module):
  """nn.LayerNorm's parameters and values (statistics in two passes), with the gradients of
  its scale and bias (sums over the tokens) as products with ones, as in `add_bias`: a
  BERT fine-tuning step 1,100 -> 1,066 ms."""
  eps: float
  use_bias: bool
  scale_init: object

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    centred = x - x.mean(-1, keepdims=True)
    normed = centred * jax.lax.rsqrt((centred * centred).mean(-1, keepdims=True) + self.eps)
    y = _scale(normed, self.param('scale', self.scale_init, (d,)))
    return add_bias(y, self.param('bias', zeros_init(('embed',)), (d,))) if self.use_bias else y


@jax.custom_vjp
def _scale(x, scale):
  """x * scale (scale: x's last axis), the gradient for scale a product with ones."""
  return x * scale


def _scale_fwd(x, scale):
  return x * scale, (x, scale)


def _scale_bwd(residuals, g):
  x, scale = residuals
  return g * scale, sum_rows(g * x, scale.size)


_scale.defvjp(_scale_fwd, _scale_bwd)


class Dropout(nn.Module):
  """Inverted dropout (nn.Dropout's contract: `rate`, `deterministic`, the 'dropout' rng),
  with its keep mask hashed from the element index and two 32-bit seeds of the key.

  jax.random's threefry spends ~11 ns an element on a CPU (115 ms, timed alone, for the
  13 dropout sites of a 6x384 BERT at 32 x 64 tokens); two rounds of a 32-bit integer
  hash (lowbias32) cost ~0.2 ns, and that fine-tuning step went from 1,166 to 1,111 ms.
  The mask is a pure function of (key, shape), the same under any sharding (the index is
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


def attention(q, k, v, causal: bool, padding_mask=None, query_offset=None):
  """softmax(q k^T / sqrt(hs) + mask) v over (B, Tq, nh, hs) queries and (B, Tk, nh, hs) keys.

  Training has Tq == Tk. Decoding with a cache has Tk the cache's length: `query_offset`
  is the cache slot of the first query (causality counts from there) and padding_mask
  (B, Tk) says which slots hold real tokens.

  GPUs and TPUs go through `jax.nn.dot_product_attention` (cuDNN flash attention where it
  applies). On CPU the same math written as two einsums is measured faster: its backward
  pass took 1.3 ms against 2.1 ms at B=12, T=64, 4 heads of 32.
  """
  tq, tk = q.shape[1], k.shape[1]
  if jax.default_backend() != 'cpu' and query_offset is None:
    mask = None if padding_mask is None else padding_mask[:, None, None, :]  # (B, 1, 1, T) over keys
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)
  if jax.default_backend() == 'cpu' and causal and query_offset is None and padding_mask is None and tq == tk \
      and tq % CAUSAL_BLOCK == 0 and tq > CAUSAL_BLOCK:
    return _causal_blocks(q, k, v)
  allowed = jnp.ones((1, 1, tq, tk), bool)
  if causal:
    first = 0 if query_offset is None else query_offset
    allowed = (jnp.arange(tk)[None, :] <= first + jnp.arange(tq)[:, None])[None, None]  # (1, 1, Tq, Tk)
  if padding_mask is not None:
    allowed = allowed & padding_mask[:, None, None, :]
  if jax.default_backend() != 'cpu':
    return jax.nn.dot_product_attention(q, k, v, mask=allowed)
  return _attend(q, k, v, allowed)


# Causal self-attention on CPU in blocks of this many queries, each reading only the keys up
# to its own last one: at T = 256, 5/8 of the score matrix is computed, and one layer's
# forward and backward took 74 ms instead of 97 (B 16, 6 heads of 64; blocks of 32 or 128: 80, 77).
CAUSAL_BLOCK = 64


def _attend(q, k, v, allowed):
  scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)  # (B, nh, Tq, Tk)
  scores = jnp.where(allowed, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum('bhqk,bkhd->bqhd', probs, v)


def _causal_blocks(q, k, v):
  out = []
  for start in range(0, q.shape[1], CAUSAL_BLOCK):
    end = start + CAUSAL_BLOCK                                          # keys 0..end-1 are visible to some query
    allowed = (jnp.arange(end)[None, :] <= start + jnp.arange(CAUSAL_BLOCK)[:, None])[None, None]
    out.append(_attend(q[:, start:end], k[:, :end], v[:, :end], allowed))
  return jnp.concatenate(out, axis=1)


def split_qkv(qkv):
  """(B, T, 3, nh, hs) -> q, k, v. On CPU their gradients are stacked back in one pass:
  autodiff of the three slices pads each gradient to the full (B, T, 3, nh, hs) and sums
  the three, which XLA:CPU writes out: three 9.4 MB pads and a summing copy a layer of a
  6x384 BERT at 32 x 64 tokens."""
  if jax.default_backend() == 'cpu':
    return _split_qkv(qkv)
  return _slice_qkv(qkv)


def _slice_qkv(qkv):
  return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


@jax.custom_vjp
def _split_qkv(qkv):
  return _slice_qkv(qkv)


def _split_qkv_fwd(qkv):
  return _split_qkv(qkv), None


def _split_qkv_bwd(_, grads):
  return (jnp.stack(grads, axis=2),)


_split_qkv.defvjp(_split_qkv_fwd, _split_qkv_bwd)


def tied_logits(h, table, bias=None):
  """h (..., C) onto the rows of an embedding table (V, C): logits (..., V), plus `bias` (V,).

  On CPU the backward is written out: autodiff's table gradient contracts the (tokens, V)
  logit gradient over its leading axis, and XLA:CPU first copies that whole gradient into
  a transposed (V, tokens) array (78 MB and ~26 ms a step for the MLM head of a 4x256 BERT
  step: 30,522 x 640 masked positions); contracting h's transpose with it instead copies
  only the (C, V) result. The bias gradient is a product with ones (see `add_bias`).
  """
  if jax.default_backend() == 'cpu':
    return _tied_logits(h, table, bias)
  return _plain_tied_logits(h, table, bias)


def _plain_tied_logits(h, table, bias):
  logits = jnp.einsum('...c,vc->...v', h, table)
  return logits if bias is None else logits + bias


@jax.custom_vjp
def _tied_logits(h, table, bias):
  return _plain_tied_logits(h, table, bias)


def _tied_logits_fwd(h, table, bias):
  return _plain_tied_logits(h, table, bias), (h, table, bias)


def _tied_logits_bwd(saved, g):
  h, table, bias = saved
  rows = h.reshape(-1, h.shape[-1])                            # (N, C)
  g_rows = g.reshape(-1, g.shape[-1])                          # (N, V)
  d_table = jax.lax.dot_general(rows, g_rows, (((0,), (0,)), ((), ()))).T   # (C, V) -> (V, C)
  d_h = (g_rows @ table).reshape(h.shape)
  d_bias = None if bias is None else sum_rows(g, g.shape[-1]).astype(bias.dtype)
  return d_h.astype(h.dtype), d_table.astype(table.dtype), d_bias


_tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)


class Attention(nn.Module):
  """Multi-head self-attention with a fused QKV projection.

  Attention-probability dropout is not applied (fused kernels do not expose it); the
  residual dropout after the output projection is.

  With `decode`, keys and values are also written into a `cache` collection (Flax's
  pattern: apply with mutable=['cache']): `key` and `value` (B, S, nh, hs) and `index`,
  the next free slot. The call that creates the cache (model.init with decode) takes S
  from its input's length; later calls write their T tokens at `index` and attend over
  all S slots, padding_mask (B, S) then marking the slots that hold real tokens.
  """
  cfg: TransformerConfig
  out_std: float

  @nn.compact
  def __call__(self, x, *, causal: bool, padding_mask: Optional[jax.Array] = None, decode: bool = False):
    cfg = self.cfg
    qkv = Dense((3, cfg.num_heads, cfg.head_dim), ('embed', 'qkv', 'heads', 'kv'), cfg.init_std,
                use_bias=cfg.bias, dtype=cfg.dtype, name='qkv')(x)      # (B, T, 3, nh, hs)
    q, k, v = split_qkv(qkv)                                            # (B, T, nh, hs)
    q = nn.with_logical_constraint(q, ('batch', 'length', 'heads', 'kv'))
    query_offset = None
    if decode:
      creating = not self.has_variable('cache', 'key')
      cached_k = self.variable('cache', 'key', jnp.zeros, k.shape, k.dtype)   # (B, S, nh, hs)
      cached_v = self.variable('cache', 'value', jnp.zeros, v.shape, v.dtype)
      index = self.variable('cache', 'index', lambda: jnp.zeros((), jnp.int32))
      if not creating:
        query_offset = index.value
        cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, query_offset, 0, 0))
        cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, query_offset, 0, 0))
        index.value = query_offset + k.shape[1]
        k, v = cached_k.value, cached_v.value                          # (B, S, nh, hs)
    y = attention(q, k, v, causal, padding_mask, query_offset)         # (B, T, nh, hs)
    y = Dense((cfg.d_model,), ('heads', 'kv', 'embed'), self.out_std, in_axes=2,
              use_bias=cfg.bias, dtype=cfg.dtype, name='out')(y)        # (B, T, C)
    return y


class MLP(nn.Module):
  cfg: TransformerConfig
  out_std: float

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    h = Dense((cfg.d_ff,), ('embed', 'mlp'), cfg.init_std, use_bias=cfg.bias, dtype=cfg.dtype,
              name='fc')(x)                                             # (B, T, F)
    h = nn.with_logical_constraint(h, ('batch', 'length', 'mlp'))
    h = activation_fn(cfg.activation)(h)
    return Dense((cfg.d_model,), ('mlp', 'embed'), self.out_std, use_bias=cfg.bias, dtype=cfg.dtype,
                 name='proj')(h)                                        # (B, T, C)


class Block(nn.Module):
  """Attention then MLP, each with a residual; LayerNorm before (pre-LN) or after (post-LN)."""
  cfg: TransformerConfig
  causal: bool

  @nn.compact
  def __call__(self, x, padding_mask=None, deterministic: bool = True, decode: bool = False):
    cfg = self.cfg
    # GPT-2: residual projections scaled by 1/sqrt(2 * layers) at init.
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers) if cfg.pre_norm else cfg.init_std
    drop = lambda h: Dropout(cfg.dropout)(h, deterministic=deterministic)
    attn = Attention(cfg, out_std, name='attn')
    mlp = MLP(cfg, out_std, name='mlp')
    if cfg.pre_norm:
      x = x + drop(attn(LayerNorm(cfg, name='ln1')(x), causal=self.causal, padding_mask=padding_mask,
                            decode=decode))
      x = x + drop(mlp(LayerNorm(cfg, name='ln2')(x)))
    else:
      x = LayerNorm(cfg, name='ln1')(x + drop(attn(x, causal=self.causal, padding_mask=padding_mask,
                                                decode=decode)))
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
  """`num_layers` blocks, each rematerialised in the backward pass as `cfg.remat` says."""
  cfg: TransformerConfig
  causal: bool

  @nn.compact
  def __call__(self, x, padding_mask=None, deterministic: bool = True, decode: bool = False):
    if self.cfg.scan_layers:
      scanned = nn.scan(_ScanStep, variable_axes={'params': 0, 'cache': 0},
                        split_rngs={'params': True, 'dropout': True}, in_axes=nn.broadcast,
                        length=self.cfg.num_layers, metadata_params={nn.PARTITION_NAME: 'layers'})
      x, _ = scanned(self.cfg, self.causal, deterministic, decode, name='h')(x, padding_mask)
      return x
    block = Block
    if self.cfg.remat != 'none':
      block = nn.remat(Block, static_argnums=(3, 4), policy=REMAT_POLICIES[self.cfg.remat])
    for i in range(self.cfg.num_layers):
      x = block(self.cfg, self.causal, name=f'h_{i}')(x, padding_mask, deterministic, decode)
    return x


class _ScanStep(nn.Module):
  """One block as a scan step: (carry, padding mask) -> (carry, nothing)."""
  cfg: TransformerConfig
  causal: bool
  deterministic: bool
  decode: bool

  @nn.compact
  def __call__(self, x, padding_mask):
    block = Block
    if self.cfg.remat != 'none':
      block = nn.remat(Block, static_argnums=(3, 4), policy=REMAT_POLICIES[self.cfg.remat])
    return block(self.cfg, self.causal, name='block')(x, padding_mask, self.deterministic, self.decode), None
