"""`run.py plan`: compile the train step ahead of time from abstract shapes, and say what it needs.

Nothing is allocated: the state and batch are ShapeDtypeStructs with their shardings, and
the step is lowered and compiled either for a TPU slice by libtpu's own compiler
(`--topology v5p:2x2x1`: the devices of that slice, from `jax.experimental.topologies`, on
any host), or for N virtual devices by XLA:CPU (`--devices N`: an estimate for GPUs, built
with the GPU's kernels where XLA:CPU can compile them). XLA's accounting of the per-device
program gives the memory; the shardings give the parameters' and optimizer state's share;
the optimized program's text gives FLOPs, HBM traffic and collectives (ssl_jax/hlo.py),
and with the chip's peak and bandwidth a roofline.
"""

import contextlib
import json
import os
import re
import shutil
import tempfile
import time

import jax
import numpy as np

from ssl_jax import flops, hlo, storage
from ssl_jax.errors import ConfigError

# name: (memory per device, HBM bandwidth B/s), from datasheets; the bf16 peaks are flops.PEAKS'.
ACCELERATORS = {
    'H100': (80e9, 3.35e12), 'H200': (141e9, 4.8e12), 'B200': (192e9, 8.0e12), 'A100-40GB': (40e9, 1.555e12),
    'A100': (80e9, 2.039e12), 'L4': (24e9, 0.3e12), 'TPU v4': (32e9, 1.2e12), 'TPU v5e': (16e9, 0.819e12),
    'TPU v5p': (95e9, 2.765e12), 'TPU v6e': (32e9, 1.64e12),
}
# jax's device_kind of a TPU -> its name above.
TPU_KINDS = {'TPU v4': 'TPU v4', 'TPU v5 lite': 'TPU v5e', 'TPU v5e': 'TPU v5e', 'TPU v5': 'TPU v5p',
             'TPU v5p': 'TPU v5p', 'TPU v6 lite': 'TPU v6e', 'TPU v6e': 'TPU v6e'}


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
  total = 0
  for x in jax.tree_util.tree_leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += int(np.prod(shape)) * x.dtype.itemsize
  return total


def accelerator_spec(name: str):
  """(canonical name, memory bytes, HBM bandwidth or None, bf16 peak or None) of a named
  accelerator (case-insensitive: 'h100', 'tpu v5p', 'v5p'), or of a size such as '24GB'."""
  key = re.sub(r'[\s_-]', '', name.lower())
  for known, (memory, bandwidth) in ACCELERATORS.items():
    if key in (re.sub(r'[\s_-]', '', known.lower()), re.sub(r'[\s_-]', '', known.lower().replace('tpu', ''))):
      return known, memory, bandwidth, flops.datasheet_peak(known if known.startswith('TPU') else f'NVIDIA {known}')
  m = re.fullmatch(r'(\d+(?:\.\d*)?|\.\d+)\s*GB', name.strip(), re.IGNORECASE)
  if m:
    return name, float(m.group(1)) * 1e9, None, None
  raise ConfigError(f'--accelerator {name!r}: expected one of {", ".join(ACCELERATORS)}, or a size such as 24GB')


def accelerator_bytes(name: str) -> float:
  return accelerator_spec(name)[1]


def topology_devices(topology: str, slices: int = 1):
  """The devices of a named TPU slice (e.g. 'v5p:2x2x1'; `slices` of them over DCN), from
  libtpu's topology description: no TPU needed."""
  try:
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
    desc = topologies.get_topology_desc(topology_name=topology, platform='tpu',
                                        **({'num_slices': slices} if slices > 1 else {}))
  except Exception as e:  # pylint: disable=broad-except
    text = str(e).strip().splitlines()
    hint = ('; install libtpu for planning: pip install "jax[tpu]" (the version of jax in requirements.txt)'
            if 'tpu' in str(e).lower() and ('plugin' in str(e).lower() or 'backend' in str(e).lower()) else '')
    raise ConfigError(f'--topology {topology!r}: {text[0] if text else type(e).__name__}{hint}') from e
  devices = list(desc.devices)
  if slices > 1:
    devices.sort(key=lambda d: (getattr(d, 'slice_index', 0), d.id))
  return devices


@contextlib.contextmanager
def captured_stderr(lines: list):
  """Collects what native code (the XLA compilers) writes to file descriptor 2 meanwhile, and
  writes it through afterwards."""
  import sys  # pylint: disable=import-outside-toplevel
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode='w+b') as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      text = tmp.read().decode('utf-8', 'replace')
      lines.extend(text.splitlines())
      sys.stderr.write(text)


def roofline(program: dict, model_flops_per_device: float, peak: float, bandwidth: float) -> dict:
  """The time a step's program needs at the chip's `peak` FLOP/s for its FLOPs and at its HBM
  `bandwidth` (B/s) for its HBM bytes (hlo.costs), which of the two binds, and the MFU that
  bound allows: the model's FLOPs over what the chip could do in the longer time."""
  compute_s, memory_s = program['flops'] / peak, program['hbm_bytes'] / bandwidth
  bound = max(compute_s, memory_s)
  return {'compute_s': compute_s, 'memory_s': memory_s, 'bound_by': 'compute' if compute_s >= memory_s else 'memory',
          'mfu_bound': model_flops_per_device / (bound * peak) if bound else None}


def plan(config, devices: int = 0, accelerator: str = '', workdir: str = '', topology: str = '',
         slices: int = 1) -> dict:
  """Compiles the train step for `topology` (a TPU slice) or `devices` virtual devices and
  reports per device what it holds, does and moves, and whether it fits `accelerator`.
  Without a workdir, what setting up the run writes (tokenizer, token cache) goes to a
  temporary folder removed before returning."""
  if workdir:
    return _plan(config, devices, accelerator, workdir, topology, slices)
  scratch = tempfile.mkdtemp(prefix='ssl_jax_plan_')
  try:
    return _plan(config, devices, accelerator, scratch, topology, slices, keep_files=False)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def _plan(config, devices, accelerator, workdir, topology, slices, keep_files=True) -> dict:
  from ssl_jax import kernels, trainer  # pylint: disable=import-outside-toplevel
  if topology:
    targets = topology_devices(topology, slices)
    kind = targets[0].device_kind
    accelerator = accelerator or TPU_KINDS.get(kind, kind)
    target = f'{topology}{f" x {slices} slices" if slices > 1 else ""} ({len(targets)} x {kind}, libtpu compiler)'
    choice = kernels.choose(config.model, 'tpu')
  else:
    if jax.device_count() != devices:
      raise ValueError(f'plan for {devices} devices, but JAX sees {jax.device_count()} (run it through run.py plan)')
    targets = None
    accelerator = accelerator or 'H100'
    name = accelerator_spec(accelerator)[0]
    on_gpu = not name.startswith('TPU') and name in ACCELERATORS
    choice = kernels.choose(config.model, 'gpu' if on_gpu else 'cpu')
    if choice.attention == 'cudnn':     # cuDNN's kernel cannot compile off a GPU: XLA's attention stands in
      choice = kernels.Choice(choice.platform, choice.kernels, 'xla', choice.dtype)
    target = f'{devices} virtual devices (an XLA:CPU estimate{" of the GPU program" if on_gpu else ""})'
  name, capacity, bandwidth, peak = accelerator_spec(accelerator)
  t = time.perf_counter()
  run = trainer.setup(config, workdir, compile_steps=False, devices=targets, choice=choice)
  config = run.config   # resolved: a fine-tuning run's family and shape come from its source
  lowered, _ = trainer.lower_steps(run, eval_step_too=False)
  compiler_lines = []
  with jax.set_mesh(run.mesh), captured_stderr(compiler_lines):
    compiled = lowered.compile()
  compile_s = time.perf_counter() - t
  memory = compiled.memory_analysis()
  params = per_device_bytes(run.abstract_state.params)
  optimizer = per_device_bytes(run.abstract_state.opt_state)
  temp = int(memory.temp_size_in_bytes)
  peak_bytes = int(memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes) + temp
  flops_step = float(run.task.flops_per_step(run.config)[0])   # model FLOPs (what MFU counts)
  n = len(run.mesh.devices.flat)
  text = compiled.as_text()
  if keep_files:   # the optimized per-device program, for reading what the numbers come from
    storage.makedirs(workdir)
    storage.write_text(storage.join(workdir, 'plan_hlo.txt'), text)
  program = hlo.costs(text, causal=config.model.family.startswith('gpt'))
  remats = sum('Involuntary full rematerialization' in line for line in compiler_lines)
  m = run.mesh.shape
  roof = roofline(program, flops_step / n, peak, bandwidth) if bandwidth and peak else None
  return {
      'model': config.model.size or config.model.family, 'params': int(run.num_params), 'devices': n,
      'target': target, 'mesh': [m['data'], m['fsdp'], m['tensor']], 'batch_size': int(config.train.batch_size),
      'seq_len': int(config.data.seq_len) if run.data.tokenizer is not None else None,
      'image_size': None if run.data.tokenizer is not None else int(config.data.image_size),
      'remat': config.model.remat, 'scan_layers': bool(config.model.scan_layers),
      'kernels': run.choice.kernels, 'dtype': run.choice.dtype,
      'attention': hlo.attention_kernel(program['custom_calls']), 'attention_configured': run.choice.attention,
      'bytes_per_device': {'params': params, 'optimizer_state': optimizer, 'activations_and_temporaries': temp,
                           'generated_code': int(memory.generated_code_size_in_bytes), 'peak': peak_bytes},
      'flops_per_step': flops_step, 'flops_per_device': flops_step / n,
      'program_flops_per_device': program['flops'], 'hbm_bytes_per_device': program['hbm_bytes'],
      'hbm_bytes_per_device_whole_operands': program['hbm_bytes_whole_operands'],
      'on_chip_bytes_per_device': program['on_chip_bytes'],
      'top_hbm_bytes': [[name, int(size)] for name, size in program['top_hbm'][:5]],
      'collective_bytes_per_device': {k: int(v) for k, v in program['collective_bytes'].items()},
      'custom_calls': program['custom_calls'], 'involuntary_full_rematerializations': remats,
      'roofline': roof, 'accelerator': name, 'accelerator_bytes': capacity,
      'fits': peak_bytes <= capacity, 'compile_s': round(compile_s, 1),
  }


def _count(n: int) -> str:
  return f'{n / 1e9:,.2f}B' if n >= 1e9 else f'{n / 1e6:,.1f}M'


def _gb(n: float) -> str:
  return f'{n / 1e9:,.2f} GB'


def report(r: dict) -> str:
  b = r['bytes_per_device']
  lines = [
      f'{r["model"]}: {_count(r["params"])} parameters on {r["target"]}, mesh (data, fsdp, tensor) = '
      f'{tuple(r["mesh"])}, batch {r["batch_size"]} x '
      + (f'{r["seq_len"]} tokens' if r['seq_len'] else f'{r["image_size"]}x{r["image_size"]} images')
      + f', {r["dtype"]}, remat={r["remat"]}'
      f'{", scanned layers" if r["scan_layers"] else ""}; compiled in {r["compile_s"]}s',
      f'kernels: {r["kernels"]}; attention: {r["attention"]} in the program ({r["attention_configured"]} chosen)',
      'per device:',
      f'  parameters                   {_gb(b["params"]):>14}',
      f'  optimizer state              {_gb(b["optimizer_state"]):>14}',
      f'  activations and temporaries  {_gb(b["activations_and_temporaries"]):>14}  (XLA\'s temporary buffers, '
      'gradients included)',
      f'  generated code               {_gb(b["generated_code"]):>14}',
      f'  peak                         {_gb(b["peak"]):>14}',
      f'  model FLOPs per step         {r["flops_per_device"]:>14.3e}  ({r["flops_per_step"]:.3e} in all)',
      f'  program FLOPs per step       {r["program_flops_per_device"]:>14.3e}  (recomputation included)',
      f'  HBM traffic per step         {_gb(r["hbm_bytes_per_device"]):>14}  (slices and rows as read; '
      f'{_gb(r["hbm_bytes_per_device_whole_operands"])} with every operand whole)',
      '  collectives per step         ' + (', '.join(f'{k} {_gb(v)}' for k, v in
                                                    r['collective_bytes_per_device'].items() if v) or 'none'),
  ]
  if r['on_chip_bytes_per_device']:    # a TPU program's VMEM and SMEM traffic
    lines.insert(-1, f'  on-chip traffic per step     {_gb(r["on_chip_bytes_per_device"]):>14}  '
                     '(VMEM and SMEM, not in the roofline)')
  roof = r['roofline']
  if roof:
    lines.append(f'roofline on {r["accelerator"]}: compute {roof["compute_s"] * 1e3:,.1f} ms, memory '
                 f'{roof["memory_s"] * 1e3:,.1f} ms a step: {roof["bound_by"]}-bound, MFU at most '
                 f'{roof["mfu_bound"]:.0%}')
  if r['involuntary_full_rematerializations']:
    lines.append(f'warning: the compiler reported {r["involuntary_full_rematerializations"]} involuntary full '
                 'rematerialization(s): an array whose sharding it could not keep was replicated')
  if r['fits']:
    lines.append(f'fits: {_gb(b["peak"])} of the {_gb(r["accelerator_bytes"])} of one {r["accelerator"]}')
  else:
    lines.append(f'does NOT fit: each device needs {_gb(b["peak"])}, one {r["accelerator"]} has '
                 f'{_gb(r["accelerator_bytes"])}. Try --config.model.remat=full, a larger fsdp or tensor axis, '
                 'a smaller train.batch_size or more train.grad_accum.')
  return '\n'.join(lines)


def plan_command(config, devices: int, accelerator: str, workdir: str = '', topology: str = '',
                 slices: int = 1) -> dict:
  result = plan(config, devices, accelerator, workdir, topology, slices)
  print(report(result), flush=True)
  print(json.dumps(result), flush=True)
  if workdir:
    storage.makedirs(workdir)
    storage.write_text(storage.join(workdir, 'plan.json'), json.dumps(result, indent=2))
  return result
