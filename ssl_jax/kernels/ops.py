"""The products, biases, norms and reductions of a train step: the plain formulation every
backend compiles well, and beside each the XLA:CPU one measured faster on CPU.

Each op takes `impl` ('xla' or 'cpu', from kernels.choose): the same values either way,
and the same gradients up to float rounding. The CPU variants mostly give autodiff's
reductions over the token axes another shape: XLA:CPU rewrites a sum over many elements
into a windowed loop that walks memory across rows, and copies a gradient into a
transposed array before some products; accelerators fuse both as they are.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def contract(x, kernel, in_axes: int, dtype, impl: str):
  """x . kernel over x's last `in_axes` axes (kernel: x's trailing shape + output shape)."""
  if impl != 'cpu':
    return jnp.tensordot(x.astype(dtype), kernel.astype(dtype), axes=in_axes)
  # Tokens flattened to one axis: XLA:CPU's backward matmuls are ~1.5x slower when the
  # weight gradient contracts over two token axes (batch, length) instead of one. And
  # the kernel to a matrix: with more than one output (or input) axis, XLA:CPU transposes
  # the gradient into a canonical order before the weight-gradient matmul. (Merging a
  # sharded heads axis with others would make GSPMD gather the kernel: CPU only.)
  lead, features = x.shape[:-in_axes], kernel.shape[in_axes:]
  k_in = math.prod(kernel.shape[:in_axes])
  y = x.reshape(-1, k_in).astype(dtype) @ kernel.reshape(k_in, -1).astype(dtype)
  return y.reshape(lead + features)


def sum_rows(g, size: int):
  """g summed over all but its trailing `size` elements, as a vector-matrix product (CPU).

  The ones pass an optimisation barrier, or XLA turns the product back into a sum.
  """
  rows = g.reshape(-1, size)
  ones = jax.lax.optimization_barrier(jnp.ones((rows.shape[0],), g.dtype))
  return ones @ rows


def add_bias(y, bias, impl: str):
  """y + bias (bias: the trailing axes of y); on CPU the bias gradient is a product with ones."""
  if impl != 'cpu':
    return y + bias
  return _cpu_add_bias(y, bias, bias.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _cpu_add_bias(y, bias, shape):
  del shape
  return y + bias


def _cpu_add_bias_fwd(y, bias, shape):
  del shape
  return y + bias, None


def _cpu_add_bias_bwd(shape, _, g):
  return g, sum_rows(g, math.prod(shape)).reshape(shape)


_cpu_add_bias.defvjp(_cpu_add_bias_fwd, _cpu_add_bias_bwd)


def layer_norm(eps: float, use_bias: bool, scale_init, bias_init, dtype, impl: str, name: str):
  """A LayerNorm module: flax's nn.LayerNorm, or on CPU (float32) one with the same parameters
  and values whose scale and bias gradients are products with ones."""
  if impl == 'cpu' and jnp.dtype(dtype) == jnp.float32:
    return CpuLayerNorm(eps, use_bias, scale_init, bias_init, name=name)
  return nn.LayerNorm(epsilon=eps, dtype=dtype, use_bias=use_bias, scale_init=scale_init,
                      bias_init=bias_init, name=name)


class CpuLayerNorm(nn.Module):
  """nn.LayerNorm's parameters and values (statistics in two passes); see `layer_norm`."""
  eps: float
  use_bias: bool
  scale_init: object
  bias_init: object

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    centred = x - x.mean(-1, keepdims=True)
    normed = centred * jax.lax.rsqrt((centred * centred).mean(-1, keepdims=True) + self.eps)
    y = _cpu_scale(normed, self.param('scale', self.scale_init, (d,)))
    return add_bias(y, self.param('bias', self.bias_init, (d,)), 'cpu') if self.use_bias else y


@jax.custom_vjp
def _cpu_scale(x, scale):
  """x * scale (scale: x's last axis), the gradient for scale a product with ones."""
  return x * scale


def _cpu_scale_fwd(x, scale):
  return x * scale, (x, scale)


def _cpu_scale_bwd(residuals, g):
  x, scale = residuals
  return g * scale, sum_rows(g * x, scale.size)


_cpu_scale.defvjp(_cpu_scale_fwd, _cpu_scale_bwd)


def split_qkv(qkv, impl: str):
  """(B, T, 3, nh, hs) -> q, k, v. On CPU their gradients are stacked back in one pass:
  autodiff of the three slices pads each gradient to the full (B, T, 3, nh, hs) and sums
  the three, which XLA:CPU writes out (three pads and a summing copy a layer)."""
  if impl == 'cpu':
    return _cpu_split_qkv(qkv)
  return _slice_qkv(qkv)


def _slice_qkv(qkv):
  return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


@jax.custom_vjp
def _cpu_split_qkv(qkv):
  return _slice_qkv(qkv)


def _cpu_split_qkv_fwd(qkv):
  return _cpu_split_qkv(qkv), None


def _cpu_split_qkv_bwd(_, grads):
  return (jnp.stack(grads, axis=2),)


_cpu_split_qkv.defvjp(_cpu_split_qkv_fwd, _cpu_split_qkv_bwd)


def tied_logits(h, table, bias=None, impl: str = 'xla'):
  """h (..., C) onto the rows of an embedding table (V, C): logits (..., V), plus `bias` (V,).

  On CPU the backward is written out: autodiff's table gradient contracts the (tokens, V)
  logit gradient over its leading axis, and XLA:CPU first copies that whole gradient into
  a transposed (V, tokens) array; contracting h's transpose with it instead copies only
  the (C, V) result. The bias gradient is a product with ones (see `add_bias`).
  """
  if impl == 'cpu':
    return _cpu_tied_logits(h, table, bias)
  return _plain_tied_logits(h, table, bias)


def _plain_tied_logits(h, table, bias):
  logits = jnp.einsum('...c,vc->...v', h, table)
  return logits if bias is None else logits + bias


@jax.custom_vjp
def _cpu_tied_logits(h, table, bias):
  return _plain_tied_logits(h, table, bias)


def _cpu_tied_logits_fwd(h, table, bias):
  return _plain_tied_logits(h, table, bias), (h, table, bias)


def _cpu_tied_logits_bwd(saved, g):
  h, table, bias = saved
  rows = h.reshape(-1, h.shape[-1])                            # (N, C)
  g_rows = g.reshape(-1, g.shape[-1])                          # (N, V)
  d_table = jax.lax.dot_general(rows, g_rows, (((0,), (0,)), ((), ()))).T   # (C, V) -> (V, C)
  d_h = (g_rows @ table).reshape(h.shape)
  d_bias = None if bias is None else sum_rows(g, g.shape[-1]).astype(bias.dtype)
  return d_h.astype(h.dtype), d_table.astype(table.dtype), d_bias


_cpu_tied_logits.defvjp(_cpu_tied_logits_fwd, _cpu_tied_logits_bwd)


def global_norm(tree, impl: str) -> jax.Array:
  """The square root of the sum of squares of every leaf (float32), as `optax.tree.norm`;
  on CPU a large matrix's squares are summed as a product with ones."""
  if impl != 'cpu':
    return optax.tree.norm(tree)
  total = jnp.zeros((), jnp.float32)
  for x in jax.tree_util.tree_leaves(tree):
    x = jnp.asarray(x, jnp.float32)
    if x.ndim >= 2 and x.size >= 65536:
      total += jnp.sum(sum_rows(jnp.square(x), x.shape[-1]))
    else:
      total += jnp.sum(jnp.square(x))
  return jnp.sqrt(total)


def apply_if(ok, update, *old, impl: str):
  """update(*old) where `ok` (a scalar bool), else `old` unchanged.

  On CPU a conditional: a select per leaf reads the new and the old state and writes a
  third copy. Accelerators fuse the select into the update, and XLA:GPU's conditional
  reads its predicate back on the host, a synchronisation every step.
  """
  if impl == 'cpu':
    return jax.lax.cond(ok, update, lambda *unchanged: unchanged, *old)
  new = update(*old)
  return jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, tuple(old))


def tied_cross_entropy(h, table, targets, impl: str, logits_constraint=None, table_constraint=None,
                       max_chunk_bytes: int = 1 << 30):
  """Per-token cross-entropy (float32) of the tied projection of h (B, T, C) onto the rows of
  `table` (V, C) against integer `targets` (B, T): a language model's loss, its logits kept
  in h's compute dtype and its statistics (log-sum-exp, the target's logit) in float32.

  The plain formulation writes the logits once and keeps them for the backward pass, which
  makes their gradient from them and the saved log-sum-exp: one pass of products forward,
  two back, no recomputation. Only when one device's share of the logits (by the mesh and
  the logical axis rules in force) would exceed `max_chunk_bytes` are they never held
  whole: the vocabulary is walked in as few chunks as keep one under the budget, with an
  online log-sum-exp forward, and backward each chunk's logits made again and its rows of
  the table's gradient written once (the tokens' gradient, far smaller, is what sums over
  the chunks). On CPU (`impl='cpu'`) the logits are made whole as before: memory is not
  what binds there. `logits_constraint` (e.g. a logical sharding constraint) is applied to
  each logits array and its gradient, `table_constraint` to the table before the products
  read it (gathered once, not per chunk).
  """
  constrain = logits_constraint or (lambda x: x)
  if impl == 'cpu':
    logits = constrain(tied_logits(h, table, impl='cpu')).astype(jnp.float32)     # (B, T, V)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  table = (table_constraint or (lambda x: x))(table)
  b, t, _ = h.shape
  v = table.shape[0]
  batch_shards, vocab_shards = _shards('batch'), _shards('vocab')
  per_device = b * t * v * jnp.dtype(h.dtype).itemsize / (batch_shards * vocab_shards)
  chunks = 1
  while per_device / chunks > max_chunk_bytes and (v // vocab_shards) % (chunks * 2) == 0:
    chunks *= 2
  if chunks == 1:
    return _whole_loss(constrain, h, table, targets)
  return _chunked_loss(constrain, chunks, vocab_shards, h, table, targets)


def _shards(logical_axis: str) -> int:
  """How many ways the mesh in force splits `logical_axis` by the logical rules in force (1
  outside a mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return 1
  axes = nn.logical_to_mesh_axes((logical_axis,))[0]
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return math.prod(mesh.shape[a] for a in axes if a in mesh.shape)


def _statistics(logits, targets):
  """(log-sum-exp, the target's logit), float32, of logits (..., V) against integer targets.
  Only the exponentials are taken in float32 (the maximum and the target's logit are exact
  in any dtype), so that no float32 copy of the logits is shared by several reductions."""
  peak = logits.max(-1).astype(jnp.float32)
  total = jnp.exp(logits.astype(jnp.float32) - peak[..., None]).sum(-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0].astype(jnp.float32)
  return peak + jnp.log(total), target_logit


def _logit_grad(logits, lse, ids, targets, g):
  """d loss / d logits = (softmax - one-hot(target)) x g, in the logits' dtype."""
  p = jnp.exp(logits.astype(jnp.float32) - lse[..., None])
  return ((p - (ids == targets[..., None])) * g[..., None]).astype(logits.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _whole_loss(constrain, h, table, targets):
  return _whole_loss_fwd(constrain, h, table, targets)[0]


def _whole_loss_fwd(constrain, h, table, targets):
  logits = constrain(jnp.einsum('btc,vc->btv', h, table))             # (B, T, V), compute dtype
  lse, target_logit = _statistics(logits, targets)
  return lse - target_logit, (h, table, targets, logits, lse)


def _whole_loss_bwd(constrain, saved, g):
  h, table, targets, logits, lse = saved
  d_logits = constrain(_logit_grad(logits, lse, jnp.arange(table.shape[0]), targets, g))   # (B, T, V)
  d_h = jnp.einsum('btv,vc->btc', d_logits, table)
  d_table = jnp.einsum('btv,btc->vc', d_logits, h)
  return d_h.astype(h.dtype), d_table.astype(table.dtype), None


_whole_loss.defvjp(_whole_loss_fwd, _whole_loss_bwd)


def _vocab_chunks(table, chunks: int, shards: int):
  """(chunks, V / chunks, C) slices of the table, and each one's vocabulary ids: chunk j holds
  the j-th part of every shard's rows, so a chunk stays split over the devices as the table is."""
  v, c = table.shape
  rows = v // (shards * chunks)
  ids = jnp.arange(v).reshape(shards, chunks, rows).swapaxes(0, 1).reshape(chunks, -1)
  return table.reshape(shards, chunks, rows, c).swapaxes(0, 1).reshape(chunks, -1, c), ids


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _chunked_loss(constrain, chunks, shards, h, table, targets):
  return _chunked_loss_fwd(constrain, chunks, shards, h, table, targets)[0]


def _chunked_loss_fwd(constrain, chunks, shards, h, table, targets):
  table_chunks, ids = _vocab_chunks(table, chunks, shards)

  def step(carry, chunk):                                 # online log-sum-exp over the vocabulary
    peak, total, target_logit = carry                     # (B, T) float32 each
    rows, chunk_ids = chunk
    logits = constrain(jnp.einsum('btc,vc->btv', h, rows))                          # (B, T, V/n)
    new_peak = jnp.maximum(peak, logits.max(-1).astype(jnp.float32))   # as in _statistics
    total = total * jnp.exp(peak - new_peak) + jnp.exp(logits.astype(jnp.float32) - new_peak[..., None]).sum(-1)
    target_logit += jnp.where(chunk_ids == targets[..., None], logits, 0).sum(-1).astype(jnp.float32)
    return (new_peak, total, target_logit), None

  zeros = jnp.zeros(targets.shape, jnp.float32)
  (peak, total, target_logit), _ = jax.lax.scan(step, (zeros - jnp.inf, zeros, zeros), (table_chunks, ids))
  lse = peak + jnp.log(total)
  return lse - target_logit, (h, table, targets, lse)


def _chunked_loss_bwd(constrain, chunks, shards, saved, g):
  h, table, targets, lse = saved
  table_chunks, ids = _vocab_chunks(table, chunks, shards)

  def step(d_h, chunk):
    rows, chunk_ids = chunk
    logits = constrain(jnp.einsum('btc,vc->btv', h, rows))                          # (B, T, V/n)
    d_logits = constrain(_logit_grad(logits, lse, chunk_ids, targets, g))
    d_h += jnp.einsum('btv,vc->btc', d_logits, rows, preferred_element_type=jnp.float32)
    return d_h, jnp.einsum('btv,btc->vc', d_logits, h).astype(table.dtype)          # this chunk's rows

  d_h, d_rows = jax.lax.scan(step, jnp.zeros(h.shape, jnp.float32), (table_chunks, ids))
  v, c = table.shape
  d_table = d_rows.reshape(chunks, shards, v // (shards * chunks), c).swapaxes(0, 1).reshape(v, c)
  return d_h.astype(h.dtype), d_table, None


_chunked_loss.defvjp(_chunked_loss_fwd, _chunked_loss_bwd)
