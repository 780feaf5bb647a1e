"""`run.py plan`: compile the train step ahead of time from abstract shapes, and say what it needs.

Nothing is allocated: the state and batch are ShapeDtypeStructs with their shardings, the
step is lowered and compiled for N devices (on a CPU, N forced host devices), and XLA's own
accounting of the per-device program gives the memory; the shardings give the parameters'
and optimizer state's share; the program's collectives give the bytes they move.
"""

import json
import os
import re
import tempfile
import time

import jax
import numpy as np

# Memory per device, in bytes (datasheets).
ACCELERATORS = {
    'H100': 80e9, 'H200': 141e9, 'B200': 192e9, 'A100-40GB': 40e9, 'A100': 80e9, 'L4': 24e9,
    'TPU v4': 32e9, 'TPU v5e': 16e9, 'TPU v5p': 95e9, 'TPU v6e': 32e9,
}
COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')
_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2, 'f32': 4, 's32': 4,
                'u32': 4, 'f64': 8, 's64': 8, 'u64': 8, 'c64': 8}


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
  total = 0
  for x in jax.tree_util.tree_leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += int(np.prod(shape)) * x.dtype.itemsize
  return total


def _shape_bytes(text: str) -> int:
  """Bytes of the HLO result type(s) in `text`, e.g. 'f32[16,1024]' or a tuple of them."""
  total = 0
  for dtype, dims in re.findall(r'\b([a-z]+\d*)\[([\d,]*)\]', text):
    if dtype in _DTYPE_BYTES:
      total += _DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(',') if d] or [1]))
  return total


def collective_bytes(hlo: str) -> dict:
  """Bytes each kind of collective produces per device per step, from the compiled HLO text;
  one inside a loop body (scanned layers, accumulated micro-batches) counts once per
  iteration, nested loops multiplying."""
  computations, name = {}, None
  for line in hlo.splitlines():
    header = re.match(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$', line)
    if header:
      name = header.group(1)
      computations[name] = {'entry': line.startswith('ENTRY'), 'lines': []}
    elif name is not None:
      computations[name]['lines'].append(line)
  loops = {}   # computation -> [(body, trips)]
  for cname, c in computations.items():
    for line in c['lines']:
      m = re.search(r' while\(.*?body=%?([\w.\-]+)', line)
      if m:
        n = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
        loops.setdefault(cname, []).append((m.group(1), int(n.group(1)) if n else 1))
  times = {cname: 1 for cname, c in computations.items() if c['entry']}
  frontier = list(times)
  while frontier:
    cname = frontier.pop()
    for body, n in loops.get(cname, []):
      times[body] = times[cname] * n
      frontier.append(body)
  out = {kind: 0 for kind in COLLECTIVES}
  pattern = re.compile(r'\s*(?:ROOT )?%?[\w.\-]+ = (.+?) (' + '|'.join(COLLECTIVES) + r')(?:-start)?\(')
  for cname, c in computations.items():
    for line in c['lines']:
      m = pattern.match(line)
      if m:
        out[m.group(2)] += _shape_bytes(m.group(1)) * times.get(cname, 1)
  return out


def accelerator_bytes(name: str) -> float:
  """Memory of a named accelerator, or of one given as e.g. '24GB'."""
  if name in ACCELERATORS:
    return ACCELERATORS[name]
  m = re.fullmatch(r'([\d.]+)\s*GB', name.strip(), re.IGNORECASE)
  if m:
    return float(m.group(1)) * 1e9
  from ssl_jax.config import ConfigError  # pylint: disable=import-outside-toplevel
  raise ConfigError(f'--accelerator {name!r}: expected one of {", ".join(ACCELERATORS)}, or a size such as 24GB')


def plan(config, devices: int, accelerator: str = 'H100', workdir: str = '') -> dict:
  from ssl_jax import tasks, train  # pylint: disable=import-outside-toplevel
  if jax.device_count() != devices:
    raise ValueError(f'plan for {devices} devices, but JAX sees {jax.device_count()} (run it through run.py plan)')
  capacity = accelerator_bytes(accelerator)
  t = time.perf_counter()
  s = train.setup(config, workdir or tempfile.mkdtemp(), compile_steps=False)
  lowered, _ = train.lower_steps(s, eval_step_too=False)
  with jax.set_mesh(s.mesh):
    compiled = lowered.compile()
  compile_s = time.perf_counter() - t
  memory = compiled.memory_analysis()
  params = per_device_bytes(s.abstract_state.params)
  optimizer = per_device_bytes(s.abstract_state.opt_state)
  temp = int(memory.temp_size_in_bytes)
  peak = int(memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes) + temp
  flops_step = float(tasks.get(config.task).flops_per_step(config)[0])   # model FLOPs (what MFU counts)
  collectives = collective_bytes(compiled.as_text())
  m = s.mesh.shape
  result = {
      'model': config.model.size or config.model.family, 'params': int(s.num_params), 'devices': devices,
      'mesh': [m['data'], m['fsdp'], m['tensor']], 'batch_size': int(config.train.batch_size),
      'seq_len': int(config.data.seq_len) if s.data.tokenizer is not None else None,
      'image_size': None if s.data.tokenizer is not None else int(config.data.image_size), 'remat': config.model.remat, 'scan_layers': bool(config.model.scan_layers),
      'bytes_per_device': {'params': params, 'optimizer_state': optimizer,
                           'activations_and_temporaries': temp, 'peak': peak},
      'flops_per_step': flops_step, 'flops_per_device': flops_step / devices,
      'collective_bytes_per_device': collectives, 'accelerator': accelerator, 'accelerator_bytes': capacity,
      'fits': peak <= capacity, 'compile_s': round(compile_s, 1),
  }
  return result


def _count(n: int) -> str:
  return f'{n / 1e9:,.2f}B' if n >= 1e9 else f'{n / 1e6:,.1f}M'


def _gb(n: float) -> str:
  return f'{n / 1e9:,.2f} GB'


def report(r: dict) -> str:
  b = r['bytes_per_device']
  lines = [
      f'{r["model"]}: {_count(r["params"])} parameters on {r["devices"]} devices, mesh (data, fsdp, tensor) = '
      f'{tuple(r["mesh"])}, batch {r["batch_size"]} x '
      + (f'{r["seq_len"]} tokens' if r['seq_len'] else f'{r["image_size"]}x{r["image_size"]} images')
      + f', remat={r["remat"]}'
      f'{", scanned layers" if r["scan_layers"] else ""}; compiled in {r["compile_s"]}s',
      'per device:',
      f'  parameters                   {_gb(b["params"]):>14}',
      f'  optimizer state              {_gb(b["optimizer_state"]):>14}',
      f'  activations and temporaries  {_gb(b["activations_and_temporaries"]):>14}  (XLA\'s temporary buffers, '
      'gradients included)',
      f'  peak                         {_gb(b["peak"]):>14}',
      f'  FLOPs per step               {r["flops_per_device"]:>14.3e}  ({r["flops_per_step"]:.3e} in all)',
      '  collectives per step         ' + ', '.join(f'{k} {_gb(v)}' for k, v in
                                                   r['collective_bytes_per_device'].items() if v) or 'none',
  ]
  if r['fits']:
    lines.append(f'fits: {_gb(b["peak"])} of the {_gb(r["accelerator_bytes"])} of one {r["accelerator"]}')
  else:
    lines.append(f'does NOT fit: each device needs {_gb(b["peak"])}, one {r["accelerator"]} has '
                 f'{_gb(r["accelerator_bytes"])}. Try --config.model.remat=full, a larger fsdp or tensor axis, '
                 'a smaller train.batch_size or more train.grad_accum.')
  return '\n'.join(lines)


def plan_command(config, devices: int, accelerator: str, workdir: str = '') -> dict:
  result = plan(config, devices, accelerator)
  print(report(result), flush=True)
  print(json.dumps(result), flush=True)
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'plan.json'), 'w') as f:
      json.dump(result, f, indent=2)
  return result
