"""What a compiled program does per device per step, read from its optimized HLO text.

XLA's own `cost_analysis()` counts a loop body once (scanned layers, accumulated
micro-batches) and a custom call's work as nearly nothing (splash attention), so `plan`
counts from the text instead:
  - FLOPs: every dot and convolution, in fused computations too (2 x output elements x the
    products each sums), and a flash-attention custom call's analytic work;
  - HBM bytes: what each top-level instruction (a fusion, a copy, a custom call, a
    collective) reads and writes: fusions keep their intermediates on chip, so this is the
    traffic a roofline divides by the bandwidth. An operand or result is charged what the
    chip moves of it, not its whole size: an operand that a (fused) dynamic-slice or gather
    reads from is charged the slice or the rows read (a scanned layer stack is read one
    layer a step, the labels' logits one per token), and a buffer a dynamic-update-slice or
    scatter updates in place is charged the update, read and written (a saved layer input
    is written one layer a step). Arrays in another memory space than HBM (a TPU layout's
    `S(n)`, n > 0: VMEM, SMEM, sync flags) are on-chip traffic, counted apart; so a copy
    into on-chip memory is charged the HBM read of its source only;
  - the same HBM bytes with every operand and result charged whole (the count before the
    rules above: `hbm_bytes_whole_operands`);
  - collective bytes by kind (each result's size);
and each instruction in a loop body once per iteration, nested loops multiplying.
"""

import collections
import dataclasses
import re
from typing import Dict, List

import numpy as np

from ssl_jax import flops as flops_lib

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
_ARRAY = re.compile(r'\b([a-z]+\d*(?:e\d+m\d+(?:fn)?)?)\[([\d,]*)\](\{[^}]*\})?')
_MEMORY_SPACE = re.compile(r'S\((\d+)\)')
# Ops that read the part of their first operand their result (dynamic-slice, gather) or
# their update (dynamic-update-slice, scatter: in place) names; see `_fusion_traffic`.
_SLICE_READS = ('dynamic-slice', 'gather')
_IN_PLACE = {'dynamic-update-slice': 1, 'scatter': 2}    # opcode: operand index of the update


@dataclasses.dataclass
class Instruction:
  name: str
  type: str          # the result's type text, e.g. 'bf16[8,128]{1,0}' or a tuple of them
  opcode: str
  operands: List[str]
  attrs: str         # everything after the operand list
  root: bool = False


def shape_bytes(text: str) -> int:
  """Bytes of the HLO type(s) in `text`, e.g. 'f32[16,1024]' or a tuple of them."""
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    if dtype in _DTYPE_BYTES:
      total += _DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(',') if d] or [1]))
  return total


def split_bytes(text: str):
  """(HBM bytes, on-chip bytes) of the HLO type(s) in `text`: an array whose layout names a
  memory space S(n), n > 0, is on chip (TPU VMEM, SMEM, sync flags)."""
  hbm = on_chip = 0
  for dtype, dims, layout in _ARRAY.findall(text):
    if dtype in _DTYPE_BYTES:
      size = _DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(',') if d] or [1]))
      space = _MEMORY_SPACE.search(layout or '')
      if space and space.group(1) != '0':
        on_chip += size
      else:
        hbm += size
  return hbm, on_chip


def _elements(text: str) -> int:
  return int(np.prod(dims_of(text) or [1]))


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
  return Instruction(m.group(1), type_text, op.group(1), operands, rest[end + 1:], line.lstrip().startswith('ROOT'))


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
  lhs, rhs = (dims_of(shapes.get(o, '')) for o in (inst.operands + ['', ''])[:2])
  return 2.0 * flops_lib.convolution_macs(lhs, rhs, dims_of(inst.type), inst.attrs)


def costs(hlo: str, causal: bool = False) -> dict:
  """{'flops', 'hbm_bytes', 'hbm_bytes_whole_operands', 'on_chip_bytes', 'collective_bytes':
  {kind: bytes}, 'custom_calls': {name: count}, 'top_hbm': [(op name, HBM bytes)] (the ten
  largest)} per device per step of an optimized HLO module (see the module docstring)."""
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
  flops = hbm = whole = on_chip = 0.0
  fusion_io, by_op = {}, collections.Counter()
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
        scattered = _scattered(inst, c['instructions']) if kind == 'all-reduce' else None
        if scattered is not None:
          collectives['reduce-scatter'] += n * scattered
        else:
          collectives[kind] += n * shape_bytes(inst.type if not inst.opcode.endswith('-start') else
                                               _async_result(inst.type))
      if inst.opcode == 'custom-call':
        target = re.search(r'custom_call_target="([^"]+)"', inst.attrs)
        label = inst.name.split('.')[0] if target and target.group(1) == 'tpu_custom_call' else \
            (target.group(1) if target else 'custom-call')
        custom_calls[label] += int(n)
        if label.startswith('splash_mha'):
          flops += n * flops_lib.splash_attention_flops(inst.name, [dims_of(shapes.get(o, '')) for o in inst.operands],
                                                        causal)
      if name not in fused and inst.opcode not in _NO_TRAFFIC:
        whole += n * (shape_bytes(inst.type) + sum(shape_bytes(shapes.get(o, '')) for o in inst.operands))
        moved, local = _traffic(inst, shapes, computations, fusion_io)
        hbm += n * moved
        on_chip += n * local
        if moved:
          by_op[_op_name(inst)] += n * moved
  return {'flops': flops, 'hbm_bytes': hbm, 'hbm_bytes_whole_operands': whole, 'on_chip_bytes': on_chip,
          'collective_bytes': collectives, 'custom_calls': dict(custom_calls),
          'top_hbm': by_op.most_common(10)}


def _scattered(inst: Instruction, instructions: List[Instruction]):
  """The bytes each device keeps of an all-reduce that is a reduce-scatter, else None: XLA:TPU
  writes a reduce-scatter as a fusion of an all-reduce whose only users are dynamic-slices of
  it by the device's partition id (`all-reduce-scatter`), which moves and keeps one shard."""
  if inst.opcode != 'all-reduce':
    return None
  users = [i for i in instructions if inst.name in i.operands]
  if users and all(u.opcode == 'dynamic-slice' and u.operands[0] == inst.name for u in users):
    return sum(shape_bytes(u.type) for u in users)
  return None


def _op_name(inst: Instruction) -> str:
  """What an instruction came from: its op_name metadata (the jitted function's path
  stripped, unrolled layers' indices as h_*: one entry for every layer's), else its opcode."""
  m = re.search(r'op_name="([^"]*)"', inst.attrs)
  if not m:
    return f'{inst.opcode} {inst.name.split(".")[0]}' if inst.opcode == 'custom-call' else inst.opcode
  return re.sub(r'\bh_\d+\b', 'h_*', re.sub(r'^jit\([^)]*\)/', '', m.group(1)))


def _views(name: str, users) -> list:
  """(user, operand index) of every use of `name`, looking through bitcasts (free views)."""
  out = []
  for user, k in users.get(name, []):
    out.extend(_views(user.name, users) if user.opcode == 'bitcast' else [(user, k)])
  return out


def _fusion_traffic(instructions: List[Instruction]):
  """({parameter index: bytes read}, [bytes written per result]) of a fused computation where
  the chip moves less than the whole array (None for an element charged whole):
    - a parameter read only by dynamic-slices or gathers (its first operand): their results'
      size, the slice or the rows read;
    - a parameter that is only the buffer a dynamic-update-slice or scatter updates in place
      (that update is a result of the fusion), and perhaps read by dynamic-slices too (a row
      read, added to and written back): nothing more read for the update but a scatter's rows
      (added to), the result then written at the update's size.
  """
  by_name = {i.name: i for i in instructions}
  users = collections.defaultdict(list)
  for inst in instructions:
    for k, operand in enumerate(inst.operands):
      users[operand].append((inst, k))
  root = next((i for i in instructions if i.root), instructions[-1] if instructions else None)
  outputs = root.operands if root is not None and root.opcode == 'tuple' else [root.name] if root else []
  written, in_place = [], set()
  for out in outputs:
    inst = by_name.get(out)
    while inst is not None and inst.opcode == 'bitcast':
      inst = by_name.get(inst.operands[0])
    if inst is not None and inst.opcode in _IN_PLACE and len(inst.operands) > _IN_PLACE[inst.opcode]:
      in_place.add(inst.name)
      written.append(shape_bytes(by_name[inst.operands[_IN_PLACE[inst.opcode]]].type)
                     if inst.operands[_IN_PLACE[inst.opcode]] in by_name else None)
    else:
      written.append(None)
  read = {}
  for inst in instructions:
    if inst.opcode != 'parameter' or not inst.operands[0].isdigit():
      continue
    uses = _views(inst.name, users)
    itemsize = shape_bytes(inst.type) / max(_elements(inst.type), 1)
    # Slices read and slices updated in place (an accumulator's row read, added to, written back).
    if uses and all(k == 0 and (u.opcode in _SLICE_READS or u.name in in_place) for u, k in uses):
      read[int(inst.operands[0])] = sum(
          _elements(u.type) * itemsize if u.opcode in _SLICE_READS else
          _elements(by_name[u.operands[2]].type) * itemsize if u.opcode == 'scatter' else 0 for u, _ in uses)
  return read, written


def _traffic(inst: Instruction, shapes: Dict[str, str], computations, fusion_io) -> tuple:
  """(HBM bytes, on-chip bytes) a top-level instruction moves: see the module docstring."""
  if inst.opcode == 'copy-start':                  # (destination, source, context): one read, one write
    result = _split_top(inst.type[1:_closing(inst.type, 0)])[0] if inst.type.startswith('(') else inst.type
    results = [result]
  elif inst.opcode.endswith('-start'):
    results = [_async_result(inst.type)]
  elif inst.type.startswith('('):
    results = _split_top(inst.type[1:_closing(inst.type, 0)])
  else:
    results = [inst.type]
  read, written = {}, [None] * len(results)
  if inst.opcode == 'fusion':
    callee = re.search(r'\bcalls=%?([\w.\-]+)', inst.attrs)
    if callee and callee.group(1) in computations:
      if callee.group(1) not in fusion_io:
        fusion_io[callee.group(1)] = _fusion_traffic(computations[callee.group(1)]['instructions'])
      read, out = fusion_io[callee.group(1)]
      if len(out) == len(results):
        written = out
  elif inst.opcode in _SLICE_READS and inst.operands:
    read = {0: shape_bytes(inst.type)}
  elif inst.opcode in _IN_PLACE and len(inst.operands) > _IN_PLACE[inst.opcode]:
    update = shape_bytes(shapes.get(inst.operands[_IN_PLACE[inst.opcode]], ''))
    read, written = {0: update if inst.opcode == 'scatter' else 0}, [update]
  hbm = on_chip = 0.0
  for k, operand in enumerate(inst.operands):
    whole_hbm, whole_chip = split_bytes(shapes.get(operand, ''))
    if k in read and read[k] is not None:
      share = read[k] / max(whole_hbm + whole_chip, 1)
      whole_hbm, whole_chip = min(whole_hbm, whole_hbm * share), min(whole_chip, whole_chip * share)
    hbm += whole_hbm
    on_chip += whole_chip
  for result, size in zip(results, written):
    whole_hbm, whole_chip = split_bytes(result)
    if size is not None:
      share = size / max(whole_hbm + whole_chip, 1)
      whole_hbm, whole_chip = min(whole_hbm, whole_hbm * share), min(whole_chip, whole_chip * share)
    hbm += whole_hbm
    on_chip += whole_chip
  return hbm, on_chip


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
