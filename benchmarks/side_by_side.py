"""Shared driver of the side-by-side benchmarks: run each side in its own subprocess, alternately.

Each side is a command whose stdout ends with one JSON line holding at least
`tokens_per_sec` (run.py bench prints such a line; a peer's worker prints its own).
"""

import json
import statistics
import subprocess
import sys
import time


def run_json(name, cmd, cwd, env=None):
  """Runs one side; returns the last JSON line of its stdout (plus wall_s)."""
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.strip().startswith('{')]
  if proc.returncode != 0 or not lines:
    sys.exit(f"{name} failed (exit {proc.returncode}): {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-3000:]}")
  result = json.loads(lines[-1])
  result['wall_s'] = time.perf_counter() - t0
  return result


def alternate(sides, rounds, cwd, check=None):
  """sides: {name: (cmd, env)}, run in order each round. Prints a table; returns {name: median tokens/s}."""
  rows = {name: [] for name in sides}
  print(f"{'round':>5} {'side':<12} {'tokens/s':>10} {'step_ms':>9} {'compile_s':>9} {'mfu':>7} {'wall_s':>7}",
        flush=True)
  for r in range(1, rounds + 1):
    for name, (cmd, env) in sides.items():
      res = run_json(name, cmd, cwd, env)
      if check:
        check(name, res)
      rows[name].append(res)
      fmt = lambda k, f: format(res[k], f) if isinstance(res.get(k), (int, float)) else '-'
      print(f"{r:>5} {name:<12} {fmt('tokens_per_sec', '10.0f'):>10} {fmt('step_ms', '9.2f'):>9} "
            f"{fmt('compile_s', '9.2f'):>9} {fmt('mfu', '7.4f'):>7} {fmt('wall_s', '7.1f'):>7}", flush=True)
  return {name: statistics.median(r['tokens_per_sec'] for r in rs) for name, rs in rows.items()}


def report(medians, peer: str, args, work=None) -> float:
  """Prints the medians and their ratio, then the closing JSON line; returns ours / peer.
  `work` ({'ours': FLOPs, peer: FLOPs} a step, where the two do unequal work) adds each
  side's FLOPs per step and the ratio per FLOP (work done per second, ours over the peer's)."""
  ratio = medians['ours'] / medians[peer]
  print(f"median tokens/s: ours {medians['ours']:.0f}, {peer} {medians[peer]:.0f}; ours/{peer} = {ratio:.2f}x")
  extra = {}
  if work:
    per_flop = ratio * work['ours'] / work[peer]
    print(f"work per step: ours {work['ours'] / 1e9:.1f} GFLOP, {peer} {work[peer] / 1e9:.1f} GFLOP; "
          f"per FLOP ours/{peer} = {per_flop:.2f}x")
    extra = {'ours_flops_per_step': work['ours'], f'{peer.lower()}_flops_per_step': work[peer],
             'per_flop_ratio': per_flop}
  print(json.dumps({'shape': args.shape, 'rounds': args.rounds, 'steps': args.steps,
                    'ours_tokens_per_sec': medians['ours'], f'{peer.lower()}_tokens_per_sec': medians[peer],
                    'ratio': ratio, **extra}))
  return ratio
