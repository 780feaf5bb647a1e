"""softmax(q k^T / sqrt(hs) + mask) v, four ways: XLA's (every backend), XLA:CPU's blocked
causal einsums, cuDNN's flash attention (GPU) and splash attention (TPU, Pallas).

All take (B, Tq, nh, hs) queries and (B, Tk, kv heads, hs) keys and values and return
(B, Tq, nh, hs): with fewer kv heads than query heads (grouped-query attention, Llama's), each
kv head serves nh / kv heads consecutive query heads, and no path repeats k and v. Training has Tq == Tk; decoding with a cache has Tk the cache's length,
`query_offset` the cache slot of the first query (causality counts from there) and
`padding_mask` (B, Tk) the slots that hold real tokens. Decoding always takes the XLA
path, which works on every target. `splash_interpret` is splash attention run by the Pallas
interpreter (off a TPU: for tests, slowly). Attention-probability dropout is not applied: fused
kernels do not expose it.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Causal self-attention on CPU in blocks of this many queries, each reading only the keys up
# to its own last one (at T = 256, 5/8 of the score matrix is computed).
CAUSAL_BLOCK = 64
# Splash attention tiles queries and keys in blocks of this many (the TPU's lanes); shorter
# sequences take XLA's attention, longer ones are padded to a multiple (segment ids keep
# the padding out).
SPLASH_BLOCK = 128


def attention(q, k, v, causal: bool, padding_mask=None, query_offset=None, impl: str = 'xla', segment_ids=None):
  """Dispatches to the implementation `impl` names (kernels.choose), where it applies.

  `segment_ids` (B, T) (training only: packed documents) keeps each query to the keys of its
  own segment; splash honours them in its kernel, the other paths by a mask through XLA's
  attention (cuDNN's takes only lengths, so packed rows leave it)."""
  tq, tk = q.shape[1], k.shape[1]
  training = query_offset is None and tq == tk
  if impl in ('splash', 'splash_interpret') and training and tq >= SPLASH_BLOCK:
    return splash(q, k, v, causal, padding_mask, interpret=impl == 'splash_interpret', segment_ids=segment_ids)
  if segment_ids is not None:
    same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]          # (B, 1, T, T)
    allowed = allowed_mask(tq, tk, causal, padding_mask) & same
    if impl == 'cpu':
      return einsum_attention(q, k, v, allowed)
    return jax.nn.dot_product_attention(q, k, v, mask=allowed, implementation='xla')
  if impl == 'cudnn' and training and q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] <= 128 \
      and q.shape[-1] % 8 == 0:
    return cudnn(q, k, v, causal, padding_mask)
  if impl == 'cpu' and training and causal and padding_mask is None and tq % CAUSAL_BLOCK == 0 \
      and tq > CAUSAL_BLOCK:
    return causal_blocks(q, k, v)
  if impl == 'cpu':
    return einsum_attention(q, k, v, allowed_mask(tq, tk, causal, padding_mask, query_offset))
  if training:
    mask = None if padding_mask is None else padding_mask[:, None, None, :]  # (B, 1, 1, T) over keys
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation='xla')
  return jax.nn.dot_product_attention(q, k, v, mask=allowed_mask(tq, tk, causal, padding_mask, query_offset),
                                      implementation='xla')


def allowed_mask(tq: int, tk: int, causal: bool, padding_mask=None, query_offset=None):
  """(B or 1, 1, Tq, Tk) booleans: which keys each query may attend to."""
  allowed = jnp.ones((1, 1, tq, tk), bool)
  if causal:
    first = 0 if query_offset is None else query_offset
    allowed = (jnp.arange(tk)[None, :] <= first + jnp.arange(tq)[:, None])[None, None]  # (1, 1, Tq, Tk)
  if padding_mask is not None:
    allowed = allowed & padding_mask[:, None, None, :]
  return allowed


def einsum_attention(q, k, v, allowed):
  """The math written as two einsums (XLA:CPU runs its backward faster than
  jax.nn.dot_product_attention's); softmax in float32."""
  if k.shape[2] != q.shape[2]:
    return _grouped_einsum_attention(q, k, v, allowed)
  scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)  # (B, nh, Tq, Tk)
  scores = jnp.where(allowed, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum('bhqk,bkhd->bqhd', probs, v)


def _grouped_einsum_attention(q, k, v, allowed):
  """einsum_attention with each kv head shared by a group of consecutive query heads."""
  b, tq, h, d = q.shape
  kv_heads = k.shape[2]
  grouped = q.reshape(b, tq, kv_heads, h // kv_heads, d)                                  # (B, Tq, K, G, hs)
  scores = jnp.einsum('bqkgd,bskd->bkgqs', grouped, k) / jnp.sqrt(d).astype(q.dtype)       # (B, K, G, Tq, Tk)
  scores = jnp.where(allowed[:, :, None], scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum('bkgqs,bskd->bqkgd', probs, v).reshape(b, tq, h, d)


def causal_blocks(q, k, v):
  """Causal attention in blocks of CAUSAL_BLOCK queries, each reading only the keys up to its
  last: XLA:CPU skips the score blocks above the diagonal."""
  out = []
  for start in range(0, q.shape[1], CAUSAL_BLOCK):
    end = start + CAUSAL_BLOCK                                          # keys 0..end-1 are visible to some query
    allowed = (jnp.arange(end)[None, :] <= start + jnp.arange(CAUSAL_BLOCK)[:, None])[None, None]
    out.append(einsum_attention(q[:, start:end], k[:, :end], v[:, :end], allowed))
  return jnp.concatenate(out, axis=1)


def cudnn(q, k, v, causal: bool, padding_mask=None):
  """cuDNN's fused flash attention (bf16/fp16, head size a multiple of 8 up to 128). A padding
  mask is given as each row's length: our padded batches (BERT's) pad on the right."""
  lengths = None if padding_mask is None else padding_mask.sum(-1).astype(jnp.int32)
  return jax.nn.dot_product_attention(q, k, v, is_causal=causal, query_seq_lengths=lengths,
                                      key_value_seq_lengths=lengths, implementation='cudnn')


def splash(q, k, v, causal: bool, padding_mask=None, interpret: bool = False, segment_ids=None):
  """TPU splash attention (Pallas), one kernel per example over its heads, under shard_map:
  the batch split as the `batch` logical axis says, the heads as `heads` says.

  A sequence that is not a multiple of SPLASH_BLOCK is padded up to one; padding (added, or
  the batch's own padding_mask) gets segment id 0 and real tokens 1, so that no real query
  sees a padded key. Padded queries see only padded keys: their outputs are meaningless
  and finite, and nothing downstream reads them. Packed documents' `segment_ids` become
  1 + their id, so that padding stays apart from every document.
  """
  # Imported here: the Pallas TPU package is only needed where splash is chosen.
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # pylint: disable=import-outside-toplevel
      splash_attention_kernel as sk, splash_attention_mask as sm)
  b, t, h, d = q.shape
  padded_t = -(-t // SPLASH_BLOCK) * SPLASH_BLOCK
  segments = None
  if padding_mask is not None or padded_t != t or segment_ids is not None:
    real = jnp.ones((b, t), bool) if padding_mask is None else padding_mask
    ids = real.astype(jnp.int32) if segment_ids is None else jnp.where(real, segment_ids.astype(jnp.int32) + 1, 0)
    segments = jnp.pad(ids, ((0, 0), (0, padded_t - t)))                         # (B, T')
  if padded_t != t:
    q, k, v = (jnp.pad(x, ((0, 0), (0, padded_t - t), (0, 0), (0, 0))) for x in (q, k, v))

  def per_shard(q, k, v, segments):
    heads = q.shape[2]
    mask = sm.CausalMask((padded_t, padded_t)) if causal else sm.FullMask((padded_t, padded_t))
    block = min(512, padded_t)
    while padded_t % block:
      block //= 2
    sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                          block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    kernel = sk.make_splash_mha(sm.MultiHeadMask([mask] * heads), block_sizes=sizes, head_shards=1,
                                q_seq_shards=1, interpret=interpret)
    # (b, T', h, hs) -> (b, h, T', hs); k and v keep their fewer heads (the kernel groups queries).
    to_heads = lambda x: x.transpose(0, 2, 1, 3)
    scaled = to_heads(q) * jnp.asarray(1 / np.sqrt(d), q.dtype)       # the kernel expects scaled queries
    if segments is None:
      out = jax.vmap(kernel)(scaled, to_heads(k), to_heads(v))
    else:
      out = jax.vmap(lambda q1, k1, v1, s1: kernel(q1, k1, v1, segment_ids=sk.SegmentIds(q=s1, kv=s1)))(
          scaled, to_heads(k), to_heads(v), segments)
    return out.transpose(0, 2, 1, 3)                                   # (b, T', h, hs)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    out = per_shard(q, k, v, segments)
  else:
    # Query and kv heads split alike, so each shard holds whole groups; when the kv heads do
    # not divide, the heads stay whole.
    batch_axes, head_axes = _mesh_axes(mesh, ('batch', 'heads'), (b, h))
    _, kv_axes = _mesh_axes(mesh, ('batch', 'heads'), (b, k.shape[2]))
    head_axes = head_axes if kv_axes == head_axes else None
    spec = jax.sharding.PartitionSpec(batch_axes, None, head_axes, None)
    seg_spec = jax.sharding.PartitionSpec(batch_axes, None)
    if segments is None:
      out = jax.shard_map(lambda q, k, v: per_shard(q, k, v, None), mesh=mesh, in_specs=(spec,) * 3,
                          out_specs=spec, check_vma=False)(q, k, v)
    else:
      out = jax.shard_map(per_shard, mesh=mesh, in_specs=(spec,) * 3 + (seg_spec,), out_specs=spec,
                          check_vma=False)(q, k, v, segments)
  return out[:, :t]


def _mesh_axes(mesh, logical_names, sizes):
  """The mesh axes the logical rules in force give each name, dropping axes that do not divide
  its size (as parallel.divisible does for parameters)."""
  out = []
  for name, size in zip(logical_names, sizes):
    axes = nn.logical_to_mesh_axes((name,))[0]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if mesh.shape[a] > 1)
    ways = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    out.append(axes if axes and size % ways == 0 else None)
  return out
