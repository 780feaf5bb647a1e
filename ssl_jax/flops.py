"""FLOPs of a training step, and the hardware peak that MFU divides by.

A training step is 3x the forward FLOPs (forward, and a backward of twice the work).
Forward per token: 2 x (parameters of every matmul) + attention's two products, which
for a causal mask touch half the score matrix on average. The Megatron convention that
most published MFU figures use counts the full matrix; both are reported. Both count only
work a step executes: where every score is computed (BERT, ViT) they agree, and nothing
is counted that never runs (BERT's MLM head beyond the masked positions, MAE's encoder on
the hidden patches). Below them, the FLOPs of a compiled program's convolutions and splash
attention kernels, as ssl_jax/hlo.py reads them off its optimized text.
"""

import re
import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak per device, from datasheets (FLOP/s). Overridable with bench.peak_flops.
PEAKS = {
    'TPU v4': 275e12,
    'TPU v5 lite': 197e12,   # v5e
    'TPU v5e': 197e12,
    'TPU v5p': 459e12,
    'TPU v5': 459e12,
    'TPU v6 lite': 918e12,   # Trillium
    'TPU v6e': 918e12,
    'NVIDIA A100': 312e12,
    'NVIDIA H100': 989e12,
    'NVIDIA H200': 989e12,
    'NVIDIA GH200': 989e12,
    'NVIDIA B200': 2250e12,
    'NVIDIA L4': 121e12,
    'NVIDIA A10': 125e12,
}


def matmul_params(config) -> int:
  """Parameters used in matrix products per token, the tied output head included."""
  m = config.model
  per_layer = 4 * m.d_model * m.d_model + 2 * m.d_model * m.d_ff
  if m.family == 'llama':   # q and o; k and v over the kv heads only; SwiGLU's three matrices
    kv_width = (m.get('num_kv_heads') or m.num_heads) * (m.d_model // m.num_heads)
    per_layer = 2 * m.d_model * m.d_model + 2 * m.d_model * kv_width + 3 * m.d_model * m.d_ff
  return m.num_layers * per_layer + m.d_model * m.vocab_size


def decoder_train_flops(config, batch: int, seq_len: int):
  """(model FLOPs with causal attention, Megatron-convention FLOPs) of one step."""
  m = config.model
  tokens = batch * seq_len
  dense = 6 * matmul_params(config) * tokens
  attention_full = 3 * m.num_layers * 4 * seq_len * m.d_model * tokens  # QK^T and AV, fwd + bwd
  causal = attention_full * (seq_len + 1) / (2 * seq_len)               # the lower triangle
  return float(dense + causal), float(dense + attention_full)


def encoder_train_flops(config, batch: int, seq_len: int, predictions: int):
  """(model FLOPs, the same) of a BERT pretraining step: every attention score is computed
  (both conventions agree), the MLM head at the `predictions` masked positions only.

  Hugging Face's BertForPreTraining projects every position onto the vocabulary: its work
  is this with predictions = seq_len (benchmarks/vs_hf_bert.py states both). Counting that
  head for our step too, as a "Megatron" figure would, counts work never executed.
  """
  m = config.model
  tokens = batch * seq_len
  body = 6 * m.num_layers * (4 * m.d_model * m.d_model + 2 * m.d_model * m.d_ff) * tokens
  attention = 3 * m.num_layers * 4 * seq_len * m.d_model * tokens
  head_per_position = 6 * (m.d_model * m.d_model + m.d_model * m.vocab_size)
  pooler_nsp = 6 * (m.d_model * m.d_model + 2 * m.d_model) * batch
  total = float(body + attention + pooler_nsp + head_per_position * batch * predictions)
  return total, total


def encoder_finetune_flops(config, batch: int, seq_len: int, head_outputs: int, per_token: bool):
  """(model FLOPs, the same) of an encoder with a fine-tuning head: on the pooled [CLS]
  vector (per_token False: classification) or on every position (tagging, span QA).
  Every position is computed and attended to, so both conventions agree."""
  m = config.model
  tokens = batch * seq_len
  body = 6 * m.num_layers * (4 * m.d_model * m.d_model + 2 * m.d_model * m.d_ff) * tokens
  attention = 3 * m.num_layers * 4 * seq_len * m.d_model * tokens
  head = 6 * m.d_model * head_outputs * (tokens if per_token else batch)
  pooler = 0 if per_token else 6 * m.d_model * m.d_model * batch
  total = float(body + attention + head + pooler)
  return total, total


def stack(layers: int, d: int, d_ff: int, tokens: int) -> float:
  """Training FLOPs of `layers` full-attention blocks over one sequence of `tokens`."""
  return 6 * tokens * (layers * (4 * d * d + 2 * d * d_ff) + 2 * layers * tokens * d)   # matmuls + attention


def vit_classifier_train_flops(config, batch: int):
  """(model FLOPs, the same: a classifier sees every patch) of a ViT with a class-token head."""
  m = config.model
  n = (config.data.image_size // m.patch) ** 2
  total = batch * (stack(m.num_layers, m.d_model, m.d_ff, n + 1) + 6 * n * m.patch * m.patch * 3 * m.d_model)
  return float(total), float(total)


def jigsaw_train_flops(config, batch: int):
  """(model FLOPs, the same) of the jigsaw network: the encoder on nine tiles per image, and
  the MLP on their nine class tokens."""
  m, j = config.model, config.jigsaw
  n = (j.tile_size // m.patch) ** 2
  encoder = stack(m.num_layers, m.d_model, m.d_ff, n + 1) + 6 * n * m.patch * m.patch * 3 * m.d_model
  head = 6 * (9 * m.d_model * j.hidden + j.hidden * j.num_permutations)
  total = float(batch * (9 * encoder + head))
  return total, total


def mae_train_flops(config, batch: int, mask_ratio: float):
  """(model FLOPs, the same) of an MAE step hiding `mask_ratio` of the patches: the encoder on
  the visible patches only (every score among them computed, so both conventions agree)."""
  m = config.model
  n = (config.data.image_size // m.patch) ** 2
  visible = int(round(n * (1 - mask_ratio))) + 1                                        # plus the class token
  pixels = m.patch * m.patch * 3
  dec = m.decoder_d_model
  common = 6 * batch * ((n + 1) * pixels * dec + visible * m.d_model * dec)                # decoder in and out
  common += batch * stack(m.decoder_layers, dec, 4 * dec, n + 1)
  encoder = batch * (stack(m.num_layers, m.d_model, m.d_ff, visible) + 6 * (visible - 1) * pixels * m.d_model)
  total = float(common + encoder)
  return total, total


def measured_cpu_peak(dtype=jnp.float32, n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of a large matmul in this process: the CPU's practical peak for this dtype."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def peak_flops(override: float = 0.0, dtype=jnp.float32) -> float:
  """Peak FLOP/s of one device: the override, the datasheet table, or measured on CPU."""
  if override > 0:
    return float(override)
  device = jax.devices()[0]
  if device.platform == 'cpu':
    return measured_cpu_peak(dtype) / len(jax.local_devices())  # forced host devices share the cores
  peak = datasheet_peak(device.device_kind)
  if peak is None:
    raise ValueError(f'no datasheet peak for device kind {device.device_kind!r}: set --config.bench.peak_flops')
  return peak


def datasheet_peak(kind: str):
  """The dense bf16 peak of a device kind ('NVIDIA H100 80GB HBM3', 'TPU v5p', ...), or None."""
  for name in sorted(PEAKS, key=len, reverse=True):
    if kind.startswith(name) or name in kind:
      return PEAKS[name]
  return None


# Program FLOPs of instructions of a compiled program (ssl_jax/hlo.py reads them off its text).

def convolution_macs(lhs, rhs, out, attrs: str) -> float:
  """Multiply-adds of a convolution, padding excluded: XLA:TPU writes many dots as
  convolutions whose "spatial" dimensions are padded axes of the dot (a QKV projection
  becomes a window of 3 x 12 over padding), so each output element sums only the taps that
  land on real input: batch x output features x input features per group x, per spatial
  dimension, the (output, tap) pairs inside the input. `lhs`, `rhs`, `out`: the operands' and
  result's dimensions; `attrs`: the HLO instruction's attributes (dim_labels, window)."""
  labels = re.search(r'dim_labels=(\w+)_(\w+)->(\w+)', attrs)
  if not (lhs and rhs and out and labels):
    return 0.0
  lhs_l, rhs_l, out_l = labels.groups()
  macs = float(out[out_l.index('b')] * out[out_l.index('f')] * rhs[rhs_l.index('i')])
  window = re.search(r'window=\{([^}]*)\}', attrs)
  fields = dict(f.split('=', 1) for f in window.group(1).split()) if window else {}
  per_dim = lambda key, default: ([int(v) for v in fields[key].split('x')] if key in fields else None) or default
  spatial = sorted(c for c in out_l if c.isdigit())
  n = len(spatial)
  sizes = per_dim('size', [rhs[rhs_l.index(c)] for c in spatial])
  strides = per_dim('stride', [1] * n)
  lhs_dilation = per_dim('lhs_dilate', [1] * n)
  rhs_dilation = per_dim('rhs_dilate', [1] * n)
  pads = [tuple(int(x) for x in p.split('_')) for p in fields['pad'].split('x')] if 'pad' in fields else [(0, 0)] * n
  for i, c in enumerate(spatial):
    length, outputs = lhs[lhs_l.index(c)], out[out_l.index(c)]
    span = (length - 1) * lhs_dilation[i] + 1
    positions = np.arange(outputs) * strides[i] - pads[i][0]
    pairs = 0
    for tap in range(sizes[i]):
      p = positions + tap * rhs_dilation[i]
      pairs += int(np.count_nonzero((p >= 0) & (p < span) & (p % lhs_dilation[i] == 0)))
    macs *= pairs
  return macs      # (with feature groups the kernel's input-feature axis is already per group)


def splash_attention_flops(kernel: str, operand_dims, causal: bool) -> float:
  """Analytic FLOPs of a splash attention kernel (its HLO name, its operands' dimensions), from
  its (B, H, T, D) query operand: the forward pass is 2 products of 2 B H T^2 D, the dq kernel 3
  and the dkv kernel 4 (each recomputes the scores); causal masking skips about half."""
  products = 4 if 'dkv' in kernel else 3 if '_dq' in kernel else 2
  # q, k and v share one (B, H, T, D) shape: the commonest 4-d operand shape (the kernel also
  # takes small mask tables and, backward, statistics of other shapes).
  shapes_4d = [tuple(d) for d in operand_dims]
  shapes_4d = [d for d in shapes_4d if len(d) == 4]
  if not shapes_4d:
    return 0.0
  q = max(set(shapes_4d), key=lambda d: (shapes_4d.count(d), int(np.prod(d))))
  t, d = q[-2], q[-1]
  return products * 2.0 * int(np.prod(q[:-2])) * t * t * d * (0.5 if causal else 1.0)
