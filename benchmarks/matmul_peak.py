"""The matrix products a train step is made of, timed alone: XLA:CPU (as our steps run them) vs PyTorch.

    python benchmarks/matmul_peak.py                  # GFLOP/s per shape, each side in its own process
    python benchmarks/matmul_peak.py --xla_flags=...  # the same with other XLA_FLAGS for our side

MFU on a CPU divides by the matmul peak measured in the same process (`ssl_jax.flops`), so a
backend whose products run slower than another's shows up here first: a step cannot beat a
peer by more than its matrix products do. Shapes: a square 2048 product (the peak `run.py
bench` measures) and the forward and weight-gradient products of the 6x384 GPT step (16 x 256
tokens) and of the 4x128 one (12 x 64 tokens). Both sides use every core and float32.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (name, m, k, n): y[m, n] = x[m, k] @ w[k, n]
SHAPES = [
    ('square 2048', 2048, 2048, 2048),
    ('6x384 qkv', 4096, 384, 1152),
    ('6x384 mlp in', 4096, 384, 1536),
    ('6x384 mlp out', 4096, 1536, 384),
    ('6x384 mlp-in weight grad', 384, 4096, 1536),
    ('4x128 mlp in', 768, 128, 512),
    ('4x128 mlp-in weight grad', 128, 768, 512),
]


def time_it(fn, repeats: int) -> float:
  fn()
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def worker(side: str, repeats: int) -> dict:
  out = {}
  if side == 'xla':
    sys.path.insert(0, ROOT)
    import run  # pylint: disable=import-outside-toplevel
    run.cpu_matmuls_through_onednn()      # our XLA flags, as run.py sets them
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    f = jax.jit(lambda x, w: x @ w)
    for name, m, k, n in SHAPES:
      x, w = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
      out[name] = 2 * m * k * n / time_it(lambda: f(x, w).block_until_ready(), repeats) / 1e9
  else:
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(os.cpu_count())
    for name, m, k, n in SHAPES:
      x, w = torch.ones(m, k), torch.ones(k, n)
      out[name] = 2 * m * k * n / time_it(lambda: torch.matmul(x, w), repeats) / 1e9
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--xla_flags', default=None, help='XLA_FLAGS for our side (default: as run.py runs)')
  parser.add_argument('--worker', choices=('xla', 'torch'), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(worker(args.worker, args.repeats)))
    return
  runs = {'xla': [], 'torch': []}
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'))
  if args.xla_flags is not None:
    env['XLA_FLAGS'] = args.xla_flags
  for _ in range(args.rounds):          # alternating, one process at a time
    for side in runs:
      proc = subprocess.run([sys.executable, __file__, '--worker', side, '--repeats', str(args.repeats)],
                            env=env, capture_output=True, text=True, check=True)
      runs[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
  median = lambda values: sorted(values)[len(values) // 2]
  result = {}
  print(f'{"GFLOP/s (median of " + str(args.rounds) + ")":34s} {"XLA":>8s} {"torch":>8s} {"ratio":>6s}')
  for name, *_ in SHAPES:
    ours, theirs = median([r[name] for r in runs['xla']]), median([r[name] for r in runs['torch']])
    result[name] = {'xla': round(ours, 1), 'torch': round(theirs, 1), 'ratio': round(ours / theirs, 3)}
    print(f'{name:34s} {ours:8.1f} {theirs:8.1f} {ours / theirs:6.2f}')
  print(json.dumps(result))


if __name__ == '__main__':
  main()
