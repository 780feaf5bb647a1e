"""Fault injection: SIGKILL a training run at random moments, restart it each time, and check
that it ends exactly where an uninterrupted run ends.

  python benchmarks/fault_injection.py                 # 20 kills (about 5 minutes on 2 CPU cores)
  python benchmarks/fault_injection.py --kills 5 --seed 1

Half of the kills land at a random moment after the run has made progress, the other half
while an asynchronous checkpoint is being written (as soon as Orbax's temporary directory
appears). After each kill it records which checkpoints were complete, and the next start
must resume from the newest of them (no finished work lost beyond the last checkpoint)
without finding any corrupt. In the end the final parameters must equal, bit for bit, those
of a run that was never interrupted. Prints a table and a JSON line; exits 1 on a failure.
"""

import argparse
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

KEEP = 2
SHAPE = ['--config.model.num_layers=2', '--config.model.num_heads=2', '--config.model.d_model=64',
         '--config.model.d_ff=256', '--config.data.seq_len=64', '--config.train.batch_size=8',
         '--config.train.warmup_steps=10', '--config.train.eval_every=0', '--config.train.sample_tokens=0',
         f'--config.train.keep_checkpoints={KEEP}']


def corpus_path(directory: str) -> str:
  source = os.path.join(ROOT, '..', 'shared', 'data', 'tinyshakespeare', 'input.txt')
  path = os.path.join(directory, 'corpus.txt')
  if os.path.exists(source):
    with open(source) as f:
      text = f.read(200_000)
  else:
    rng = random.Random(0)
    words = 'a the of to and in is it you that he was for on are with as his they be at one have this'.split()
    text = '\n'.join(' '.join(rng.choice(words) for _ in range(12)) for _ in range(8000))
  with open(path, 'w') as f:
    f.write(text)
  return path


def complete_steps(workdir: str) -> list:
  """Checkpoints fully written (Orbax renames a save's temporary directory when it is done)."""
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def saving(workdir: str) -> bool:
  return bool(glob.glob(os.path.join(workdir, 'checkpoints', '*.orbax-checkpoint-tmp*')))


def logged(workdir: str) -> list:
  """The steps in metrics.jsonl, in order (a restarted run logs again the steps it redoes)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line)['step'] for line in f if line.strip()]


def start(args, workdir: str, log: str):
  with open(log, 'w') as out:
    return subprocess.Popen([sys.executable, 'run.py', 'train', *args, '--workdir', workdir], cwd=ROOT,
                            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, 'PYTHONUNBUFFERED': '1'})


def resumed_at(log: str):
  """The step a start went on from: 0 for a fresh start; a run killed after its last
  checkpoint (while it samples, say) finds the workdir already at train.steps."""
  with open(log) as f:
    text = f.read()
  if 'fresh start' in text:
    return 0, text
  m = re.search(r'resumed (?:at|from) step (\d+)|is already at step (\d+) of train\.steps', text)
  return (int(m.group(1) or m.group(2)) if m else None), text


def final_params(workdir: str):
  import jax  # pylint: disable=import-outside-toplevel
  from ssl_jax import checkpoint  # pylint: disable=import-outside-toplevel
  return jax.tree_util.tree_leaves(checkpoint.read_params(workdir))


def inject(kills: int, seed: int, steps: int, checkpoint_every: int, directory: str, timeout: float = 300,
           extra=()):
  """Runs the reference and the killed runs in `directory` (`extra`: more run.py flags, e.g.
  dropout); returns the report (dict)."""
  os.makedirs(directory, exist_ok=True)
  corpus = corpus_path(directory)
  args = [f'--config.data.path={corpus}', *SHAPE, f'--config.train.steps={steps}',
          f'--config.train.checkpoint_every={checkpoint_every}', *extra]
  ref_dir, dir_ = os.path.join(directory, 'reference'), os.path.join(directory, 'killed')
  log = os.path.join(directory, 'log.txt')
  for d in (ref_dir, dir_):
    shutil.rmtree(d, ignore_errors=True)
  t0 = time.time()
  ref = start(args, ref_dir, log)
  if ref.wait(timeout):
    raise RuntimeError(f'the reference run failed:\n{open(log).read()[-3000:]}')
  reference_s = time.time() - t0
  rng = random.Random(seed)
  events, failures = [], []
  expect = 0   # the step the next start must resume from
  for k in range(kills):
    mode = 'during save' if k % 2 else 'random'
    before = len(logged(dir_))
    proc = start(args, dir_, log)
    began = None
    deadline = time.time() + timeout
    delay = rng.uniform(0.0, 1.5)
    while time.time() < deadline and proc.poll() is None:
      steps_so_far = logged(dir_)
      if began is None and len(steps_so_far) > before:
        began = time.time()        # this run has trained a step: the moment's clock starts
      # A random moment is one before the run's last tenth: a fast run could finish first.
      late = bool(steps_so_far) and steps_so_far[-1] >= 0.9 * steps
      if began is not None and ((mode == 'random' and (time.time() - began >= delay or late)) or
                                (mode == 'during save' and saving(dir_))):
        in_save = saving(dir_)
        proc.send_signal(signal.SIGKILL)
        break
      time.sleep(0.005)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
      failures.append(f'kill {k + 1}: the run ended (exit {proc.returncode}) before it was killed')
      break
    resumed, text = resumed_at(log)
    if resumed != expect:
      failures.append(f'kill {k + 1}: resumed at {resumed}, expected {expect}')
    if 'corrupt' in text:
      failures.append(f'kill {k + 1}: a checkpoint was found corrupt:\n{text[-2000:]}')
    complete = complete_steps(dir_)
    if len(complete) > KEEP + 1:   # keep-N, plus the newest whose successor has not been waited on yet
      failures.append(f'kill {k + 1}: {len(complete)} checkpoints kept ({complete}), keep is {KEEP}')
    steps_logged = logged(dir_)
    events.append({'kill': k + 1, 'mode': mode, 'resumed_at': resumed, 'logged_step': steps_logged[-1],
                   'while_saving': in_save, 'complete_checkpoints': complete})
    expect = complete[-1] if complete else 0
  last = start(args, dir_, log)
  if last.wait(timeout):
    failures.append(f'the final run failed:\n{open(log).read()[-3000:]}')
  resumed, text = resumed_at(log)
  if resumed != expect:
    failures.append(f'final run: resumed at {resumed}, expected {expect}')
  if 'corrupt' in text or os.path.exists(os.path.join(dir_, 'checkpoints_corrupt')):
    failures.append('a checkpoint was found corrupt in the final run')
  identical = False
  if not failures:
    a, b = final_params(ref_dir), final_params(dir_)
    identical = len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))
    if not identical:
      failures.append('the final parameters differ from the uninterrupted run\'s')
  lost = [e['logged_step'] - e['complete_checkpoints'][-1] if e['complete_checkpoints'] else e['logged_step']
          for e in events]
  return {'kills': len(events), 'during_save': sum(e['while_saving'] for e in events),
          'identical_final_params': identical, 'failures': failures, 'events': events,
          'max_steps_redone': max(lost, default=0), 'reference_s': round(reference_s, 1),
          'total_s': round(time.time() - t0, 1)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--kills', type=int, default=20)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--steps', type=int, default=600)
  parser.add_argument('--checkpoint_every', type=int, default=25)
  parser.add_argument('--dir', default=None, help='where the runs go (default: a temporary folder)')
  flags = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    report = inject(flags.kills, flags.seed, flags.steps, flags.checkpoint_every, flags.dir or tmp)
  print(f'{"kill":>4}  {"mode":<12} {"resumed at":>10} {"logged step":>11} {"while saving":>12}  complete checkpoints')
  for e in report['events']:
    print(f'{e["kill"]:>4}  {e["mode"]:<12} {e["resumed_at"]!s:>10} {e["logged_step"]:>11} '
          f'{str(e["while_saving"]):>12}  {e["complete_checkpoints"]}')
  for failure in report['failures']:
    print('FAILED:', failure)
  print(json.dumps({k: v for k, v in report.items() if k != 'events'}))
  return 1 if report['failures'] else 0


if __name__ == '__main__':
  sys.exit(main())
