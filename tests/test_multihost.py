"""Two hosts on loopback (JAX's multi-controller runtime, CPU collectives over gloo): a
2-process run with its parameters and optimizer state sharded over both (FSDP, dropout 0.1)
trains and checkpoints, each process writing its own shards, is killed, and resumes with 2
processes and with 1, its losses continuing as those of a run never interrupted."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, TINY, read_metrics

pytestmark = pytest.mark.multihost

ARGS = [*TINY, '--config.train.steps=40', '--config.train.checkpoint_every=4', '--config.train.eval_every=4',
        '--config.train.sample_tokens=0', '--config.model.dropout=0.1',
        '--config.mesh.data=1', '--config.mesh.fsdp=-1', '--config.mesh.tensor=1']   # fsdp: every device


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start(corpus, workdir, processes):
  port = free_port()
  procs = []
  for i in range(processes):
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'JAX_PLATFORMS': 'cpu'}
    if processes > 1:
      env.update(SSL_JAX_COORDINATOR=f'127.0.0.1:{port}', SSL_JAX_NUM_PROCESSES=str(processes),
                 SSL_JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen([sys.executable, 'run.py', 'train', f'--config.data.path={corpus}', *ARGS,
                                   '--workdir', workdir], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  return procs


def finish(procs):
  """Process 0's output, once every process has exited 0. A failure shows every process's
  output: the one that died first is often not process 0, which only reports a lost peer."""
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  failed = [f'process {i} exited {p.returncode}:\n{out[-3000:]}' for i, (p, out) in enumerate(zip(procs, outputs))
            if p.returncode != 0]
  assert not failed, '\n'.join(failed)
  return outputs[0]


def train_losses(workdir):
  return {r['step']: r['train_loss'] for r in read_metrics(workdir) if 'train_loss' in r}


def test_two_processes_checkpoint_die_and_resume_on_two_and_on_one(tmp_path, corpus):
  reference = str(tmp_path / 'reference')
  finish(start(corpus, reference, 1))
  expected = train_losses(reference)

  two = str(tmp_path / 'two')
  procs = start(corpus, two, 2)
  deadline = time.time() + 300
  while not os.path.isdir(os.path.join(two, 'checkpoints', '8')) and time.time() < deadline:
    if any(p.poll() is not None for p in procs):
      pytest.fail('a process ended before it was killed:\n' + procs[0].communicate()[0][-3000:])
    time.sleep(0.01)
  for p in procs:
    p.send_signal(signal.SIGKILL)
    p.wait()
  if not os.path.isdir(os.path.join(two, 'checkpoints', '8')):
    pytest.fail('no checkpoint 8 within 300 s:\n' + '\n'.join(p.stdout.read()[-3000:] for p in procs))
  assert 'run.lock' in os.listdir(two)       # left by the killed process 0; the next run takes it over
  # The newest complete checkpoint (8, or later if this machine was slow to notice).
  newest = max(int(d) for d in os.listdir(os.path.join(two, 'checkpoints')) if d.isdigit())
  assert newest < 40
  one = str(tmp_path / 'one')
  shutil.copytree(two, one)

  # Each process wrote its own shards of the parameters and Adam moments.
  state = os.path.join(two, 'checkpoints', str(newest), 'state')
  assert {'ocdbt.process_0', 'ocdbt.process_1'} <= set(os.listdir(state)), os.listdir(state)
  log = finish(start(corpus, two, 2))
  assert '2 cpu devices on 2 hosts (mesh data=1 fsdp=2 tensor=1)' in log and f'resumed from step {newest}' in log
  log = finish(start(corpus, one, 1))
  assert '1 cpu device (mesh data=1 fsdp=1 tensor=1)' in log and f'resumed from step {newest}' in log
  for workdir in (two, one):
    losses = train_losses(workdir)             # steps redone after the kill appear twice: the last wins
    assert sorted(losses) == list(range(1, 41))
    for step, loss in expected.items():
      assert losses[step] == pytest.approx(loss, rel=1e-5), (workdir, step)


def test_a_checkpoint_from_8_devices_resumes_on_1_2_and_4_with_other_meshes(tmp_path, corpus):
  def run(workdir, devices, mesh):
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
    d, f, t = mesh
    proc = subprocess.run([sys.executable, 'run.py', 'train', f'--config.data.path={corpus}', *TINY,
                           '--config.train.steps=8', '--config.train.checkpoint_every=4',
                           '--config.train.eval_every=0', '--config.train.sample_tokens=0',
                           f'--config.mesh.data={d}', f'--config.mesh.fsdp={f}', f'--config.mesh.tensor={t}',
                           '--workdir', workdir], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr

  first = str(tmp_path / 'eight')
  run(first, 8, (2, 2, 2))
  expected = train_losses(first)
  shutil.rmtree(os.path.join(first, 'checkpoints', '8'))        # as if it had died after step 4's save
  for devices, mesh in ((1, (1, 1, 1)), (2, (1, 2, 1)), (4, (1, 1, 4))):
    workdir = str(tmp_path / f'on{devices}')
    shutil.copytree(first, workdir)
    log = run(workdir, devices, mesh)
    assert f'{devices} cpu device' in log and 'resumed from step 4' in log
    losses = train_losses(workdir)
    for step in range(5, 9):
      assert losses[step] == pytest.approx(expected[step], rel=1e-5), (devices, step)
