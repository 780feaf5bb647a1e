"""What a compiled program does per device per step, read from its optimized HLO text.

XLA's own `cost_analysis()` counts a loop body once (scanned layers, accumulated
micro-batches) and a custom call's work as nearly nothing (splash attention), so `plan`
counts from the text instead:
  - FLOPs: every dot and convolution, in fused computations too (2 x output elements x the
    products each sums), and a flash-attention custom call's analytic work;
  - HBM bytes: what each top-level instruction (a fusion, a copy, a custom call, a
    collective) reads and writes, the operands' and results' sizes: fusions keep their
    intermediates on chip, so this is the traffic a roofline divides by the bandwidth;
  - collective bytes by kind (each result's size);
and each instruction in a loop body once per iteration, nested loops multiplying.
"""

import collections
import dataclasses
import re
from typing import Dict, List

import numpy as np

COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')
_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2, 'f32': 4, 's32': 4,
                'u32': 4, 'f64': 8, 's64': 8, 'u64': 8, 'c64': 8, 'f8e4m3fn': 1, 'f8e5m2': 1, 's4': 1, 'u4': 1}
# Instructions that move no data of their own (views, bookkeeping, control flow whose
# bodies are counted instead, the second half of an async pair).
_NO_TRAFFIC = {'parameter', 'constant', 'get-tuple-element', 'tuple', 'bitcast', 'while', 'call', 'conditional',
               'after-all', 'partition-id', 'replica-id', 'opt-barrier', 'copy-done', 'all-gather-done',
               'all-reduce-done', 'collective-permute-done', 'send-done', 'recv-done', 'async-done',
               'async-update', 'add-dependency', 'domain'}
_SHAPE = re.compile(r'\b([a-z]+\d*(?:e\d+m\d+(?:fn)?)?)\[([\d,]*)\]')


@dataclasses.dataclass
class Instruction:
  name: str
  type: str          # the result's type text, e.g. 'bf16[8,128]{1,0}' or a tuple of them
  opcode: str
  operands: List[str]
  attrs: str         # everything after the operand list


def shape_bytes(text: str) -> int:
  """Bytes of the HLO type(s) in `text`, e.g. 'f32[16,1024]' or a tuple of them."""
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    if dtype in _DTYPE_BYTES:
      total += _DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(',') if d] or [1]))
  return total


def dims_of(text: str) -> List[int]:
  m = _SHAPE.search(text)
  return [int(d) for d in m.group(2).split(',') if d] if m else []


def _closing(text: str, start: int) -> int:
  """Index of the bracket closing the one at text[start]."""
  depth = 0
  for i in range(start, len(text)):
    if text[i] in '({[':
      depth += 1
    elif text[i] in ')}]':
      depth -= 1
      if depth == 0:
        return i
  return len(text) - 1


def _split_top(text: str) -> List[str]:
  parts, depth, start = [], 0, 0
  for i, ch in enumerate(text):
    if ch in '({[':
      depth += 1
    elif ch in ')}]':
      depth -= 1
    elif ch == ',' and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  parts.append(text[start:])
  return [p.strip() for p in parts if p.strip()]


_LINE = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*')


def parse_instruction(line: str):
  m = _LINE.match(line)
  if not m:
    return None
  rest = line[m.end():]
  if rest.startswith('('):
    end = _closing(rest, 0)
    type_text, rest = rest[:end + 1], rest[end + 1:].lstrip()
  else:
    type_text, _, rest = rest.partition(' ')
  op = re.match(r'([a-z][\w\-]*)\(', rest)
  if not op:
    return None
  end = _closing(rest, op.end() - 1)
  operands = [re.sub(r'/\*.*?\*/', '', o).split()[-1].lstrip('%') for o in _split_top(rest[op.end():end])]
  return Instruction(m.group(1), type_text, op.group(1), operands, rest[end + 1:])


def parse(hlo: str) -> Dict[str, dict]:
  """{computation: {'entry': bool, 'instructions': [Instruction]}} of an HLO module's text."""
  computations, current = {}, None
  for line in hlo.splitlines():
    header = re.match(r'^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$', line)
    if header and not line.startswith(' '):
      current = computations[header.group(2)] = {'entry': bool(header.group(1)), 'instructions': []}
      continue
    if current is not None:
      inst = parse_instruction(line)
      if inst is not None:
        current['instructions'].append(inst)
  return computations


def trip_count(inst: Instruction, computations) -> int:
  """Iterations of a while loop: XLA's known_trip_count where it annotates one (GPU, CPU),
  else the constant its condition compares the counter with (`i < N`, as scans lower)."""
  trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', inst.attrs)
  if trips:
    return int(trips.group(1))
  cond = re.search(r'\bcondition=%?([\w.\-]+)', inst.attrs)
  body = computations.get(cond.group(1), {}).get('instructions', []) if cond else []
  values = {}
  for i in body:
    if i.opcode == 'constant' and i.type.startswith('s32[]') and i.operands and i.operands[0].lstrip('-').isdigit():
      values[i.name] = int(i.operands[0])
  for i in body:
    if i.opcode == 'compare' and 'direction=LT' in i.attrs:
      for operand in i.operands:
        if operand in values:
          return values[operand]
  return 1


def _callees(inst: Instruction, computations):
  """(computation, times per execution of inst, fused) for each computation inst runs."""
  out = []
  body = re.search(r'\bbody=%?([\w.\-]+)', inst.attrs)
  if inst.opcode == 'while' and body:
    out.append((body.group(1), trip_count(inst, computations), False))
  calls = re.search(r'\bcalls=%?([\w.\-]+)', inst.attrs)
  if calls:
    out.append((calls.group(1), 1, inst.opcode == 'fusion'))
  if inst.opcode == 'call':
    target = re.search(r'\bto_apply=%?([\w.\-]+)', inst.attrs)
    if target:
      out.append((target.group(1), 1, False))
  if inst.opcode == 'conditional':
    for names in re.findall(r'(?:branch_computations=\{([^}]*)\}|(?:true|false)_computation=%?([\w.\-]+))',
                            inst.attrs):
      for name in ','.join(n for n in names if n).split(','):
        if name.strip():
          out.append((name.strip().lstrip('%'), 1, False))   # an upper bound: every branch
  return out


def _dot_flops(inst: Instruction, shapes: Dict[str, str]) -> float:
  out = int(np.prod(dims_of(inst.type) or [1]))
  if inst.opcode == 'dot':
    lhs = dims_of(shapes.get(inst.operands[0], ''))
    m = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', inst.attrs)
    contracted = int(np.prod([lhs[int(d)] for d in m.group(1).split(',') if d])) if m and lhs else 1
    return 2.0 * out * contracted
  return 2.0 * _conv_macs(inst, shapes)


def _conv_macs(inst: Instruction, shapes: Dict[str, str]) -> float:
  """Multiply-adds of a convolution, padding excluded: XLA:TPU writes many dots as
  convolutions whose "spatial" dimensions are padded axes of the dot (a QKV projection
  becomes a window of 3 x 12 over padding), so each output element sums only the taps that
  land on real input: batch x output features x input features per group x, per spatial
  dimension, the (output, tap) pairs inside the input."""
  lhs = dims_of(shapes.get(inst.operands[0], '')) if inst.operands else []
  rhs = dims_of(shapes.get(inst.operands[1], '')) if len(inst.operands) > 1 else []
  out = dims_of(inst.type)
  labels = re.search(r'dim_labels=(\w+)_(\w+)->(\w+)', inst.attrs)
  if not (lhs and rhs and out and labels):
    return 0.0
  lhs_l, rhs_l, out_l = labels.groups()
  macs = float(out[out_l.index('b')] * out[out_l.index('f')] * rhs[rhs_l.index('i')])
  window = re.search(r'window=\{([^}]*)\}', inst.attrs)
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


def flash_attention_flops(inst: Instruction, shapes: Dict[str, str], causal: bool) -> float:
  """Analytic FLOPs of a splash attention kernel, from its (B, H, T, D) query operand: the
  forward pass is 2 products of 2 B H T^2 D, the dq kernel 3 and the dkv kernel 4 (each
  recomputes the scores); causal masking skips about half."""
  products = 4 if 'dkv' in inst.name else 3 if '_dq' in inst.name else 2
  # q, k and v share one (B, H, T, D) shape: the commonest 4-d operand shape (the kernel also
  # takes small mask tables and, backward, statistics of other shapes).
  shapes_4d = [tuple(dims_of(shapes.get(o, ''))) for o in inst.operands]
  shapes_4d = [d for d in shapes_4d if len(d) == 4]
  if not shapes_4d:
    return 0.0
  q = max(set(shapes_4d), key=lambda d: (shapes_4d.count(d), int(np.prod(d))))
  t, d = q[-2], q[-1]
  return products * 2.0 * int(np.prod(q[:-2])) * t * t * d * (0.5 if causal else 1.0)


def costs(hlo: str, causal: bool = False) -> dict:
  """{'flops', 'hbm_bytes', 'collective_bytes': {kind: bytes}, 'custom_calls': {name: count}}
  per device per step of an optimized HLO module (see the module docstring)."""
  computations = parse(hlo)
  times = collections.defaultdict(float)
  fused = set()
  for name, c in computations.items():
    if c['entry']:
      times[name] = 1.0
  # Down the call graph in topological order (Kahn's), each computation's count the sum over
  # its callers' of the caller's count times the calls per run.
  pending = collections.Counter()
  edges = {}
  for name, c in computations.items():
    edges[name] = [e for inst in c['instructions'] for e in _callees(inst, computations)]
    for callee, _, _ in edges[name]:
      pending[callee] += 1
  ready = [name for name in computations if pending[name] == 0]
  while ready:
    name = ready.pop()
    for callee, n, is_fused in edges.get(name, []):
      if callee not in computations:
        continue
      times[callee] += times[name] * n
      if is_fused:
        fused.add(callee)
      pending[callee] -= 1
      if pending[callee] == 0:
        ready.append(callee)
  flops = hbm = 0.0
  collectives = {kind: 0.0 for kind in COLLECTIVES}
  custom_calls = collections.Counter()
  for name, c in computations.items():
    n = times.get(name, 0.0)
    if not n:
      continue
    shapes = {inst.name: inst.type for inst in c['instructions']}
    for inst in c['instructions']:
      if inst.opcode in ('dot', 'convolution'):
        flops += n * _dot_flops(inst, shapes)
      kind = inst.opcode[:-len('-start')] if inst.opcode.endswith('-start') else inst.opcode
      if kind in COLLECTIVES:
        collectives[kind] += n * shape_bytes(inst.type if not inst.opcode.endswith('-start') else
                                             _async_result(inst.type))
      if inst.opcode == 'custom-call':
        target = re.search(r'custom_call_target="([^"]+)"', inst.attrs)
        label = inst.name.split('.')[0] if target and target.group(1) == 'tpu_custom_call' else \
            (target.group(1) if target else 'custom-call')
        custom_calls[label] += int(n)
        if label.startswith('splash_mha'):
          flops += n * flash_attention_flops(inst, shapes, causal)
      if name not in fused and inst.opcode not in _NO_TRAFFIC:
        hbm += n * (shape_bytes(inst.type) + sum(shape_bytes(shapes.get(o, '')) for o in inst.operands))
  return {'flops': flops, 'hbm_bytes': hbm, 'collective_bytes': collectives, 'custom_calls': dict(custom_calls)}


def _async_result(type_text: str) -> str:
  """The result part of an async start's ((operands), result, ...) tuple type."""
  if not type_text.startswith('('):
    return type_text
  parts = _split_top(type_text[1:_closing(type_text, 0)])
  return parts[1] if len(parts) > 1 else parts[0]


def attention_kernel(custom_calls: dict) -> str:
  """Which attention the program calls: 'splash' (TPU Pallas), 'cudnn' (GPU) or 'xla'."""
  names = ' '.join(custom_calls)
  if 'splash_mha' in names:
    return 'splash'
  if 'cudnn$fmha' in names or '__cudnn' in names:
    return 'cudnn'
  return 'xla'
