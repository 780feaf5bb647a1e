"""Throughput and peak memory of corpus preparation, on tinyshakespeare and on a corpus 10x larger.

    python benchmarks/prepare_speed.py [--scale 10]

The larger corpus is tinyshakespeare written `scale` times, each copy after the first with
one word in fifty changed (so the near-duplicate index has work to do), in a temporary
folder. Each size is prepared in its own process; its peak resident memory (ru_maxrss) and
MB/s are printed, then one JSON line.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO.parent / 'shared' / 'data' / 'tinyshakespeare' / 'input.txt'


def worker(path, out):
  sys.path.insert(0, str(REPO))
  from ssl_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from ssl_jax.data import prepare  # pylint: disable=import-outside-toplevel
  report = prepare.prepare([path], out, config_lib.base_config().data.prepare, progress=False)
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps({'mb': report['bytes_in'] / 1e6, 'mb_per_sec': report['mb_per_sec'], 'peak_rss_mb': peak_mb,
                    'documents_in': report['documents_in'], 'documents_out': report['documents_out']}))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--scale', type=int, default=10)
  parser.add_argument('--worker', nargs=2)
  args = parser.parse_args()
  if args.worker:
    return worker(*args.worker)
  text = SOURCE.read_text()
  rng = np.random.default_rng(0)
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    big = os.path.join(tmp, f'x{args.scale}.txt')
    with open(big, 'w') as f:
      for copy in range(args.scale):
        words = text.split(' ')
        if copy:
          for i in rng.choice(len(words), len(words) // 50, replace=False):
            if '\n' not in words[i]:
              words[i] = 'zounds'
        f.write(' '.join(words) + '\n\n')
    for name, path in (('x1', str(SOURCE)), (f'x{args.scale}', big)):
      proc = subprocess.run([sys.executable, __file__, '--worker', path, os.path.join(tmp, name)],
                            capture_output=True, text=True, check=True)
      results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
      r = results[name]
      print(f"{name:>4}: {r['mb']:6.1f} MB  {r['mb_per_sec']:.2f} MB/s  peak RSS {r['peak_rss_mb']:.0f} MB  "
            f"documents {r['documents_in']:,} -> {r['documents_out']:,}", flush=True)
  print(json.dumps(results))


if __name__ == '__main__':
  main()
