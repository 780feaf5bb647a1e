"""`run.py bench`: steady-state throughput of the real train step, and its MFU.

Batches come from the experiment's own pipeline and are made before the clock starts;
the step is compiled ahead of time (that time is `compile_s`), run `bench.warmup` times,
then `bench.steps` times with one synchronisation at the end. The input pipeline is timed
on its own too (making `bench.steps` fresh batches and putting them on the devices), to show
it is not what limits training: `input_headroom` is its batches/s over the step's.
With a profile directory, a `jax.profiler` trace of a few more steps is written there
(open it in TensorBoard's profile plugin or Perfetto).
"""

import json
import shutil
import tempfile
import time

import jax

from ssl_jax import flops, storage, trainer


def input_rate(run, steps: int, start: int = 1000) -> float:
  """Batches/s the input pipeline delivers on its own: batches not made before, put on the devices."""
  jax.block_until_ready(run.global_batch(run.data.train.batch(start)))
  t = time.perf_counter()
  for i in range(steps):
    batch = run.global_batch(run.data.train.batch(start + 1 + i))
  jax.block_until_ready(batch)
  return steps / (time.perf_counter() - t)


def run(config, workdir: str = '', profile_dir: str = '') -> dict:
  """The benchmark's result (see the module docstring). Without a workdir, what setting up the
  run writes (tokenizer, token cache) goes to a temporary folder removed before returning."""
  if workdir:
    return _run(config, workdir, profile_dir)
  scratch = tempfile.mkdtemp(prefix='ssl_jax_bench_')
  try:
    return _run(config, scratch, profile_dir)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def _run(config, workdir: str, profile_dir: str) -> dict:
  run = trainer.setup(config, workdir)
  config = run.config   # resolved: the vocabulary and classes the data brought
  bc = config.bench
  n_batches = min(bc.warmup + bc.steps, 8)  # a few distinct batches, reused round robin
  batches = [run.global_batch(run.data.train.batch(i)) for i in range(n_batches)]
  state = run.init_fn(jax.random.key(config.seed))
  for i in range(bc.warmup):
    state, step_metrics = run.train_fn(state, batches[i % n_batches])
  jax.block_until_ready(state)
  t = time.perf_counter()
  for i in range(bc.steps):
    state, step_metrics = run.train_fn(state, batches[i % n_batches])
  jax.block_until_ready((state, step_metrics))
  step_s = (time.perf_counter() - t) / bc.steps
  if profile_dir:
    storage.makedirs(profile_dir)   # a URL's prefix needs none; the profiler writes there itself
    with jax.profiler.trace(profile_dir):
      for i in range(3):
        with jax.profiler.StepTraceAnnotation('train', step_num=i):
          state, step_metrics = run.train_fn(state, batches[i % n_batches])
          jax.block_until_ready(state)
  batches_per_sec = input_rate(run, bc.steps)

  model_flops, megatron_flops = run.task.flops_per_step(config)
  devices = jax.device_count()
  peak = flops.peak_flops(bc.peak_flops, jax.numpy.dtype(run.choice.dtype)) * devices
  unit = run.data.unit
  mc = config.model
  return {
      'model': mc.size or f'{mc.family} {mc.num_layers}x{mc.d_model}',
      'params': run.num_params,
      'devices': devices,
      'batch': config.train.batch_size,
      'seq_len': config.data.seq_len,
      f'{unit}_per_sec': config.train.batch_size * run.data.units_per_example / step_s,
      'step_ms': step_s * 1e3,
      'compile_s': run.compile_s,
      'flops_per_step': model_flops,
      'peak_flops': peak,
      'mfu': model_flops / step_s / peak,
      'kernels': run.choice.kernels, 'attention': run.choice.attention, 'dtype': run.choice.dtype,
      'mfu_megatron': megatron_flops / step_s / peak,
      'loss': float(step_metrics['loss']),
      'input_batches_per_sec': batches_per_sec,
      'input_headroom': batches_per_sec * step_s,
      **({'profile': profile_dir} if profile_dir else {}),
  }


def main(config, workdir: str = '', profile_dir: str = '') -> dict:
  result = run(config, workdir, profile_dir)
  if jax.process_index() == 0:
    print(json.dumps(result), flush=True)
  return result
