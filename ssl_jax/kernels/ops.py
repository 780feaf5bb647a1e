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
  `table` (V, C) against integer `targets` (B, T): a language model's loss without its logits.

  The plain formulation never holds the (B, T, V) logits: it walks the sequence in chunks
  (as few as keep one chunk's float32 logits under `max_chunk_bytes`), each under
  jax.checkpoint so the backward pass recomputes them. For GPT-2's vocabulary at 32 x 1024
  tokens the whole logits and their float32 copy are ~10 GB; a chunk is a fraction. On
  CPU (`impl='cpu'`) the logits are made whole as before: memory is not what binds there.
  `logits_constraint` (e.g. a logical sharding constraint) is applied to each logits array,
  `table_constraint` to the table before the chunks read it (gathered once, not per chunk).
  """
  constrain = logits_constraint or (lambda x: x)
  if impl == 'cpu':
    logits = constrain(tied_logits(h, table, impl='cpu')).astype(jnp.float32)     # (B, T, V)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  table = (table_constraint or (lambda x: x))(table)
  b, t, c = h.shape
  chunks = 1
  while b * (t // chunks) * table.shape[0] * 4 > max_chunk_bytes and t % (chunks * 2) == 0:
    chunks *= 2

  @jax.checkpoint
  def chunk_loss(h_chunk, target_chunk):                      # (B, T/n, C), (B, T/n)
    logits = constrain(tied_logits(h_chunk, table)).astype(jnp.float32)          # (B, T/n, V)
    return optax.softmax_cross_entropy_with_integer_labels(logits, target_chunk)

  if chunks == 1:
    return chunk_loss(h, targets)
  h_chunks = h.reshape(b, chunks, t // chunks, c).swapaxes(0, 1)                  # (n, B, T/n, C)
  target_chunks = targets.reshape(b, chunks, t // chunks).swapaxes(0, 1)
  losses = jax.lax.map(lambda pair: chunk_loss(*pair), (h_chunks, target_chunks))  # (n, B, T/n)
  return losses.swapaxes(0, 1).reshape(b, t)
