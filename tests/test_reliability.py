"""Faults: SIGKILL at random moments and during asynchronous saves (the short version of
benchmarks/fault_injection.py), and a disk that fills while a checkpoint is being written."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY

pytestmark = pytest.mark.multihost    # with the hosts' tests, one at a time: its kills are timed

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import fault_injection  # pylint: disable=wrong-import-position


def test_kills_at_random_moments_and_during_saves_lose_nothing(tmp_path):
  # Dropout 0.1: its masks, like the batches, must be the same after every restart.
  report = fault_injection.inject(kills=3, seed=0, steps=150, checkpoint_every=15, directory=str(tmp_path),
                                  extra=['--config.model.dropout=0.1'])
  assert report['failures'] == []
  assert report['kills'] == 3 and report['during_save'] >= 1
  assert report['identical_final_params']


def _with_file_size_limit(kib, args):
  """`args` run under a file-size limit of `kib` KiB, a write past it failing with EFBIG (SIGXFSZ
  ignored). Set by bash before exec rather than by a preexec_fn, which forks a process that JAX's
  threads may hold locks in (xdist workers have JAX loaded)."""
  return ['bash', '-c', f'trap "" XFSZ && ulimit -f {kib} && exec "$@"', 'bash', *args]


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='simulates a full disk with RLIMIT_FSIZE')
def test_a_disk_that_fills_during_a_save_keeps_the_checkpoints_before_it(tmp_path, corpus):
  workdir = str(tmp_path / 'run')
  args = [sys.executable, 'run.py', 'train', f'--config.data.path={corpus}', *TINY, '--config.train.eval_every=0',
          '--config.train.sample_tokens=0', '--config.train.checkpoint_every=3', '--workdir', workdir]
  subprocess.run([*args, '--config.train.steps=6'], cwd=ROOT, check=True, capture_output=True, timeout=300)
  # Files may grow to 20 KiB: the arrays of checkpoint 9 do not fit, the logs do.
  proc = subprocess.run(_with_file_size_limit(20, [*args, '--config.train.steps=12']), cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: saving checkpoint 9 in ') and 'the disk is full' in last
  assert 'checkpoints 3, 6 are intact and a new run resumes from step 6' in last
  assert sorted(d for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit()) == ['3', '6']
  # Space again: the next run resumes from step 6, clears the half-written save and finishes.
  proc = subprocess.run([*args, '--config.train.steps=12'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'resumed from step 6' in proc.stdout + proc.stderr and 'corrupt' not in proc.stderr
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['12', '9']
