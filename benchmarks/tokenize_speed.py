"""Tokenising speed and memory: a JSONL corpus built from ../shared/data's sentences, reshuffled
into documents, then `run.py train` on it (sentencepiece) timed, with the peak resident
memory of its whole process tree (the spawned tokenising workers included).

  python benchmarks/tokenize_speed.py --make runs/corpus_2g --gb 2 --files 8
  python benchmarks/tokenize_speed.py --corpus 'runs/corpus_2g/*.jsonl' --workdir runs/tok_run
  python benchmarks/tokenize_speed.py --corpus 'runs/corpus_2g/*.jsonl' --workdir runs/tok_run --kill_after 60
      (kills the run after 60 s, runs it again, and checks the shards against --compare DIR)
  python benchmarks/tokenize_speed.py --corpus 'runs/corpus_2g/*.jsonl' --experiment bert.py:tiny
      (BERT: documents of sentences, each sentence tokenised on its own)

Prints one JSON line: corpus_mb, wall_s, mb_per_sec, peak_rss_mb (process tree), shards,
tokens, and the load average while it ran. The CPU may be shared: read the load beside the
figures.
"""

import argparse
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, '..', 'shared', 'data')


def sentences() -> list:
  """Sentences of the shared data sets: Shakespeare's lines, SST-2's sentences, EWT's # text."""
  out = []
  with open(os.path.join(SHARED, 'tinyshakespeare', 'input.txt'), encoding='utf-8') as f:
    out += [line.strip() for line in f if len(line.strip()) > 20]
  with open(os.path.join(SHARED, 'sst2', 'train.tsv'), encoding='utf-8') as f:
    out += [line.split('\t')[0].strip() for line in list(f)[1:]]
  with open(os.path.join(SHARED, 'ud_ewt', 'en_ewt-ud-dev.conllu'), encoding='utf-8') as f:
    out += [line[len('# text ='):].strip() for line in f if line.startswith('# text =')]
  return [s for s in out if s]


def make(folder: str, gb: float, files: int, seed: int = 0) -> None:
  """`files` JSONL files of about gb/files GB: documents of 5-40 sentences drawn at random."""
  os.makedirs(folder, exist_ok=True)
  pool = sentences()
  rng = np.random.default_rng(seed)
  per_file = int(gb * (1 << 30) / files)
  for i in range(files):
    path = os.path.join(folder, f'part-{i:03d}.jsonl')
    written = 0
    with open(path, 'w', encoding='utf-8') as f:
      while written < per_file:
        lengths = rng.integers(5, 40, 1000)
        picks = rng.integers(0, len(pool), lengths.sum())
        lines, at = [], 0
        for n in lengths:
          lines.append(json.dumps({'text': ' '.join(pool[j] for j in picks[at:at + n]), 'source': 'shared'}) + '\n')
          at += n
        block = ''.join(lines)
        f.write(block)
        written += len(block)
    print(f'{path}: {written / 1e6:.0f} MB', flush=True)


def tree_rss(pid: int) -> int:
  """Resident bytes of a process and all its descendants (from /proc)."""
  total, stack = 0, [pid]
  children = {}
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        with open(f'/proc/{entry}/stat') as f:
          parent = int(f.read().rsplit(')', 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
      except (OSError, ValueError, IndexError):
        pass
  while stack:
    p = stack.pop()
    stack += children.get(p, [])
    try:
      with open(f'/proc/{p}/statm') as f:
        total += int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    except OSError:
      pass
  return total


def run(corpus: str, workdir: str, extra, kill_after: float = 0.0, experiment: str = 'gpt.py:gpt:nano') -> dict:
  cmd = [sys.executable, os.path.join(ROOT, 'run.py'), 'train', '--config',
         os.path.join(ROOT, 'experiments', experiment), f'--config.data.path={corpus}',
         '--config.data.tokenizer=sentencepiece', '--config.model.vocab_size=8000', '--config.train.steps=2',
         '--workdir', workdir, *extra]
  start, peak, loads = time.perf_counter(), 0, []
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
  killed = False
  while proc.poll() is None:
    peak = max(peak, tree_rss(proc.pid))
    loads.append(os.getloadavg()[0])
    if kill_after and time.perf_counter() - start > kill_after:
      os.killpg(proc.pid, signal.SIGKILL)
      killed = True
      break
    time.sleep(0.2)
  out = proc.communicate()[0]
  wall = time.perf_counter() - start
  files = glob.glob(corpus)
  size = sum(os.path.getsize(p) for p in files)
  caches = [c for kind in ('tokens', 'sentences') for c in glob.glob(os.path.join(workdir, 'cache', f'{kind}-*'))]
  shards = sum(len([n for n in os.listdir(c) if n.endswith('.json') and n.startswith('shard')]) for c in caches)
  tokens = 0
  for c in caches:
    if os.path.exists(os.path.join(c, 'index.json')):
      with open(os.path.join(c, 'index.json')) as f:
        tokens += json.load(f)['tokens']
  if proc.returncode not in (0, None) and not killed:
    print(out[-3000:], file=sys.stderr)
  return {'corpus_mb': round(size / 1e6), 'files': len(files), 'wall_s': round(wall, 1),
          'mb_per_sec': round(size / 1e6 / wall, 2), 'peak_rss_mb': round(peak / 1e6), 'shards_complete': shards,
          'tokens': tokens, 'killed': killed, 'returncode': proc.returncode,
          'load_avg_mean': round(float(np.mean(loads)), 2) if loads else None,
          'phases': re.findall(r'(?:tokenizer|shards?|compiled in [0-9.]+s)[^\n]*', out)[-3:]}


def same_shards(a: str, b: str) -> bool:
  ca, cb = (glob.glob(os.path.join(w, 'cache', 'tokens-*'))[0] for w in (a, b))
  names = sorted(n for n in os.listdir(ca) if n.startswith('shard'))
  if names != sorted(n for n in os.listdir(cb) if n.startswith('shard')):
    return False
  for n in names:
    with open(os.path.join(ca, n), 'rb') as x, open(os.path.join(cb, n), 'rb') as y:
      while True:
        u, v = x.read(1 << 24), y.read(1 << 24)
        if u != v:
          return False
        if not u:
          break
  return True


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--make', help='build a JSONL corpus in this folder')
  p.add_argument('--gb', type=float, default=2.0)
  p.add_argument('--files', type=int, default=8)
  p.add_argument('--corpus', help='glob of the corpus files to tokenise')
  p.add_argument('--workdir', default='runs/tokenize_speed')
  p.add_argument('--kill_after', type=float, default=0.0, help='kill the run after this many seconds, then rerun')
  p.add_argument('--experiment', default='gpt.py:gpt:nano', help='e.g. bert.py:tiny (documents of sentences)')
  p.add_argument('--compare', default='', help='a workdir of an uninterrupted run: its shards must equal ours')
  p.add_argument('extra', nargs='*', help='more --config.KEY=VALUE flags for run.py train')
  args = p.parse_args()
  if args.make:
    make(args.make, args.gb, args.files)
  if args.corpus:
    if args.kill_after:
      first = run(args.corpus, args.workdir, args.extra, args.kill_after, args.experiment)
      print(json.dumps({'killed_run': first}), flush=True)
    result = run(args.corpus, args.workdir, args.extra, experiment=args.experiment)
    if args.compare:
      result['shards_identical_to'] = {args.compare: same_shards(args.workdir, args.compare)}
    print(json.dumps(result), flush=True)


if __name__ == '__main__':
  main()
