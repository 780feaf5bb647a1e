"""`run.py bench`: steady-state throughput of the real train step, and its MFU.

Batches come from the experiment's own pipeline and are made before the clock starts;
the step is compiled ahead of time (that time is `compile_s`), run `bench.warmup` times,
then `bench.steps` times with one synchronisation at the end.
"""

import json
import tempfile
import time

import jax

from ssl_jax import flops, train


def run(config, workdir: str = '') -> dict:
  workdir = workdir or tempfile.mkdtemp(prefix='ssl_jax_bench_')
  s = train.setup(config, workdir)
  bc = config.bench
  n_batches = min(bc.warmup + bc.steps, 8)  # a few distinct batches, reused round robin
  batches = [s.put(s.data.train.batch(i)) for i in range(n_batches)]
  state = s.init_fn(jax.random.key(config.seed))
  for i in range(bc.warmup):
    state, step_metrics = s.train_fn(state, batches[i % n_batches])
  jax.block_until_ready(state)
  t = time.perf_counter()
  for i in range(bc.steps):
    state, step_metrics = s.train_fn(state, batches[i % n_batches])
  jax.block_until_ready((state, step_metrics))
  step_s = (time.perf_counter() - t) / bc.steps

  model_flops, megatron_flops = s.task.flops_per_step(config)
  devices = jax.device_count()
  peak = flops.peak_flops(bc.peak_flops, jax.numpy.dtype(config.model.dtype)) * devices
  unit = s.data.unit
  mc = config.model
  return {
      'model': mc.size or f'{mc.family} {mc.num_layers}x{mc.d_model}',
      'params': s.num_params,
      'devices': devices,
      'batch': config.train.batch_size,
      'seq_len': config.data.seq_len,
      f'{unit}_per_sec': config.train.batch_size * s.data.units_per_example / step_s,
      'step_ms': step_s * 1e3,
      'compile_s': s.compile_s,
      'flops_per_step': model_flops,
      'peak_flops': peak,
      'mfu': model_flops / step_s / peak,
      'mfu_megatron': megatron_flops / step_s / peak,
      'loss': float(step_metrics['loss']),
  }


def main(config, workdir: str = '') -> dict:
  result = run(config, workdir)
  if jax.process_index() == 0:
    print(json.dumps(result), flush=True)
  return result
