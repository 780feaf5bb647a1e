"""A pod as this machine can play it: two hosts (JAX processes over loopback), each with its
own private "local disk" (HOME, the token cache's local copy, the current folder), sharing a
bucket (fake-gcs-server on 127.0.0.1) that holds the corpus and the workdir, gs://.../run.

They train, are killed mid-save, restart and resume on one host with the losses of a run
never interrupted; stop together on a SIGTERM to one of them; fall back together when one
host's part of the newest checkpoint is truncated; and refuse a workdir they do not share."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, TINY
from ssl_jax import storage, workdirs
from test_multihost import free_port

pytestmark = pytest.mark.multihost

GPT = [*TINY, '--config.train.eval_every=10', '--config.train.sample_tokens=0', '--config.model.dropout=0.1',
       '--config.mesh.data=1', '--config.mesh.fsdp=-1', '--config.mesh.tensor=1']


def upload_corpus(gcs_url, text_path):
  """The corpus as three gzipped JSONL objects, gs://bucket/corpus/part-*.jsonl.gz."""
  with open(text_path) as f:
    paragraphs = [p for p in f.read().split('\n\n') if p.strip()]
  for part in range(3):
    lines = ''.join(json.dumps({'text': p}) + '\n' for p in paragraphs[part::3])
    storage.write_bytes(f'{gcs_url}/corpus/part-{part}.jsonl.gz', gzip.compress(lines.encode()))
  return f'{gcs_url}/corpus/*.jsonl.gz'


class Pod:
  """Starts `run.py` on N hosts, host i in its own folder (its disk): HOME, cache, current folder."""

  def __init__(self, tmp_path, gcs_env):
    self.tmp_path, self.gcs_env = tmp_path, gcs_env

  def disk(self, i):
    path = self.tmp_path / f'host{i}'
    for sub in ('home', 'cwd'):
      (path / sub).mkdir(parents=True, exist_ok=True)
    return path

  def start(self, args, processes, first_disk=0):
    port = free_port()
    procs = []
    for i in range(processes):
      disk = self.disk(first_disk + i)
      env = {**os.environ, **self.gcs_env, 'PYTHONUNBUFFERED': '1', 'JAX_PLATFORMS': 'cpu',
             'HOME': str(disk / 'home'), 'XDG_CACHE_HOME': str(disk / 'home' / '.cache')}
      for key in ('SSL_JAX_COORDINATOR', 'SSL_JAX_NUM_PROCESSES', 'SSL_JAX_PROCESS_ID'):
        env.pop(key, None)
      if processes > 1:
        env.update(SSL_JAX_COORDINATOR=f'127.0.0.1:{port}', SSL_JAX_NUM_PROCESSES=str(processes),
                   SSL_JAX_PROCESS_ID=str(i))
      procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, 'run.py'), *args], cwd=disk / 'cwd',
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs

  def run(self, args, processes=2, timeout=300, first_disk=0):
    return finish(self.start(args, processes, first_disk), timeout)

  def local_files(self):
    """Every path on the hosts' disks."""
    return [os.path.join(d, n) for d, dirs, files in os.walk(self.tmp_path) for n in dirs + files]


def finish(procs, timeout=300):
  """Every process's output, once all have exited 0; else a failure showing every one's output
  (the one that died first is often not host 0). A process still running at `timeout` is killed."""
  deadline = time.time() + timeout
  outputs = []
  for p in procs:
    try:
      outputs.append(p.communicate(timeout=max(1, deadline - time.time()))[0])
    except subprocess.TimeoutExpired:
      p.kill()
      outputs.append(p.communicate()[0] + f'\n[killed: still running after {timeout} s]')
  failed = [f'host {i} exited {p.returncode}:\n{out[-3000:]}' for i, (p, out) in enumerate(zip(procs, outputs))
            if p.returncode != 0]
  assert not failed, '\n'.join(failed)
  return outputs


def train_losses(workdir):
  text = storage.read_text(storage.join(workdir, 'metrics.jsonl'))
  return {r['step']: r['train_loss'] for r in map(json.loads, text.splitlines()) if 'train_loss' in r}


def tokenised_units(outputs):
  """Units each host says it tokenised ('token cache: tokenised K of M units here ...')."""
  counts = []
  for out in outputs:
    counts += [int(line.split('tokenised ', 1)[1].split()[0]) for line in out.splitlines()
               if 'token cache: tokenised' in line]
  return counts


def newest_step(gcs, bucket, prefix):
  steps = {name[len(prefix):].split('/')[0] for name in gcs.objects(bucket, prefix)}
  return max((int(s) for s in steps if s.isdigit()), default=0)


def test_two_hosts_on_a_bucket_train_die_mid_save_resume_on_two_then_one(tmp_path, gcs, corpus):
  pod = Pod(tmp_path, gcs.env)
  data = upload_corpus(gcs.url, corpus)
  bucket = gcs.url[len('gs://'):]
  args = ['train', f'--config.data.path={data}', *GPT, '--config.train.checkpoint_every=5',
          '--config.train.keep_checkpoints=3', '--config.train.steps=30']
  reference = f'{gcs.url}/reference'     # never interrupted, on one host (a third machine)
  pod.run([*args, '--workdir', reference], processes=1, first_disk=2)
  expected = train_losses(reference)
  assert sorted(expected) == list(range(1, 31))

  workdir = f'{gcs.url}/run'
  procs = pod.start([*args, '--workdir', workdir], 2)
  # Kill host 1 as soon as a checkpoint's files are being written: the save is in flight.
  deadline = time.time() + 300
  while time.time() < deadline and not any('/state/' in n for n in gcs.objects(bucket, 'run/checkpoints/')):
    if any(p.poll() is not None for p in procs):
      pytest.fail('a host ended before it was killed:\n' + '\n'.join(p.communicate()[0][-3000:] for p in procs))
    time.sleep(0.02)
  procs[1].send_signal(signal.SIGKILL)
  procs[0].send_signal(signal.SIGKILL)      # its peer is gone: it would only wait to notice
  first = [p.communicate()[0] for p in procs]
  assert sum(tokenised_units(first)) == 3, first[0][-2000:]    # every unit once, split between the hosts
  assert newest_step(gcs, bucket, 'run/checkpoints/') < 30

  # Both restarted: they resume from the newest complete checkpoint (or start afresh if the
  # first save never completed) and tokenise nothing (the cache is in the bucket).
  out = pod.run([*args, '--workdir', workdir])
  assert 'on 2 hosts' in out[0] and ('resumed from step' in out[0] or 'fresh start' in out[0]), out[0][-2000:]
  assert sum(tokenised_units(out)) == 0
  # The same run resumed on one host: from step 20, as if it had died after that save.
  for step in (25, 30):
    storage.remove(f'{workdir}/checkpoints/{step}')
  out = pod.run([*args, '--workdir', workdir], processes=1)
  assert 'resumed from step 20' in out[0], out[0][-2000:]
  losses = train_losses(workdir)
  assert sorted(losses) == list(range(1, 31))
  for step, loss in expected.items():
    assert losses[step] == pytest.approx(loss, rel=1e-5), step

  # eval, generate and ssl_jax.load read the gs:// workdir.
  eval_out = pod.run(['eval', '--workdir', workdir], processes=1)[0]
  assert json.loads([line for line in eval_out.splitlines() if line.startswith('{')][-1])['eval_loss'] > 0
  generated = pod.run(['generate', '--workdir', workdir, '--prompt', 'the', '--max_new_tokens', '20'], processes=1)
  assert generated[0].strip()
  loaded = subprocess.run([sys.executable, '-c', f'import ssl_jax; m = ssl_jax.load({workdir!r}); '
                           'print(m.step, m.logits(m.encode("the")).shape)'], cwd=ROOT,
                          env={**os.environ, **gcs.env}, capture_output=True, text=True, timeout=300)
  assert loaded.returncode == 0 and loaded.stdout.splitlines()[-1].split()[0] == '30', loaded.stderr[-2000:]
  assert not [p for p in pod.local_files() + os.listdir(ROOT) if 'gs:' in p]
  names = set(storage.listdir(workdir))
  assert {'config.json', 'metrics.jsonl', 'loss.png', 'tokenizer.json', 'checkpoints', 'cache'} <= names, names
  assert 'run.lock' not in names


@pytest.mark.parametrize('experiment', ['bert.py:tiny', 'vit_rotation.py'])
def test_bert_and_a_vision_task_train_on_two_hosts_in_a_bucket(tmp_path, gcs, corpus, experiment):
  pod = Pod(tmp_path, gcs.env)
  workdir = f'{gcs.url}/{experiment.split(".")[0]}'
  data = ['--config.model.num_layers=2', '--config.model.num_heads=2', '--config.model.d_model=32',
          '--config.model.d_ff=64']          # vision: its embedded images
  if experiment.startswith('bert'):
    data = [f'--config.data.path={upload_corpus(gcs.url, corpus)}', '--config.data.seq_len=32',
            '--config.model.max_len=64', '--config.data.max_predictions=5']
  out = pod.run(['train', '--config', f'experiments/{experiment}', *data, '--config.train.steps=4',
                 '--config.train.eval_every=4', '--config.train.eval_batches=1', '--config.train.checkpoint_every=4',
                 '--config.train.batch_size=8', '--config.mesh.data=1', '--config.mesh.fsdp=-1',
                 '--workdir', workdir])
  assert 'on 2 hosts' in out[0]
  losses = train_losses(workdir)
  assert sorted(losses) == [1, 2, 3, 4]
  assert '4' in storage.listdir(storage.join(workdir, 'checkpoints'))
  assert not [p for p in pod.local_files() if 'gs:' in p]


def test_sigterm_to_one_host_makes_both_save_the_same_step_and_a_truncated_part_makes_both_fall_back(tmp_path, corpus):
  pod = Pod(tmp_path, {})
  # train.steps stays the same throughout: the learning-rate schedule is a function of it.
  args = ['train', f'--config.data.path={corpus}', *GPT, '--config.train.checkpoint_every=1000',
          '--config.train.steps=60']
  workdir = str(tmp_path / 'shared')       # one folder both hosts see
  procs = pod.start([*args, '--workdir', workdir], 2)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 300
  while time.time() < deadline and not (os.path.exists(metrics) and os.path.getsize(metrics) > 1000):
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)    # the notice reaches one host only
  outputs = finish(procs)
  saved = [line for out in outputs for line in out.splitlines() if line.startswith('SIGTERM: saved')]
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())
  assert len(steps) == 1 and steps[0] < 60, (steps, saved)
  assert saved == [f'SIGTERM: saved the checkpoint of step {steps[0]} on all 2 hosts; exiting'], outputs[0][-2000:]

  # Resumed, the run logs the losses of one never stopped.
  out = pod.run([*args, '--workdir', workdir])
  assert f'resumed from step {steps[0]}' in out[0]
  reference = str(tmp_path / 'reference')
  pod.run([*args, '--workdir', reference])
  losses, expected = train_losses(workdir), train_losses(reference)
  assert sorted(losses) == sorted(expected) == list(range(1, 61))
  for step, loss in expected.items():
    assert losses[step] == pytest.approx(loss, rel=1e-6), step

  # Host 1's part of the newest checkpoint truncated (its disk filled mid-write, say): both
  # hosts restore the step before, together, and train on to the same losses.
  part = os.path.join(workdir, 'checkpoints', '60', 'state', 'ocdbt.process_1')
  for folder, _, names in os.walk(part):
    for name in names:
      if 'manifest' not in name:
        path = os.path.join(folder, name)
        os.truncate(path, os.path.getsize(path) // 3)
  started = time.time()
  out = pod.run([*args, '--workdir', workdir])
  assert f'resumed from step {steps[0]}' in out[0], out[0][-3000:]
  assert time.time() - started < 120
  losses = train_losses(workdir)
  for step, loss in expected.items():
    assert losses[step] == pytest.approx(loss, rel=1e-6), step


def test_hosts_that_do_not_share_the_workdir_stop_with_one_line(tmp_path, corpus):
  pod = Pod(tmp_path, {})
  started = time.time()
  # The same relative path on each host's own disk: what a TPU VM's local folder is.
  procs = pod.start(['train', f'--config.data.path={corpus}', *GPT, '--config.train.steps=2', '--workdir', 'run'], 2)
  outputs = [p.communicate(timeout=120)[0] for p in procs]
  assert time.time() - started < 60 + 30     # within 60 s of start-up (the rest is Python and JAX importing)
  for p, out in zip(procs, outputs):
    assert p.returncode != 0
    errors = [line for line in out.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'is not shared' in errors[0] and 'gs://' in errors[0], out[-2000:]
    assert 'Traceback' not in out
  assert not (tmp_path / 'host1' / 'cwd' / 'run' / 'config.json').exists()


def test_the_run_lock_refuses_a_live_run_on_another_machine_and_takes_over_a_dead_ones(tmp_path, gcs):
  for workdir in (str(tmp_path), f'{gcs.url}/run'):
    path = storage.join(workdir, 'run.lock')
    storage.write_text(path, json.dumps({'host': 'node-7', 'pid': 1, 'token': 'x', 'renewed': time.time()}))
    with pytest.raises(workdirs.TrainingError, match='pid 1 on node-7'):
      workdirs.Lock(workdir).acquire()
    storage.write_text(path, json.dumps({'host': 'node-7', 'pid': 1, 'token': 'x',
                                         'renewed': time.time() - workdirs.LEASE_S - 1}))
    lock = workdirs.Lock(workdir)
    lock.acquire()                             # its lease ran out: taken over
    assert json.loads(storage.read_text(path))['token'] == lock.token
    with pytest.raises(workdirs.TrainingError):
      workdirs.Lock(workdir).acquire()         # held, and renewed: a second run is refused
    lock.release()
    assert not storage.exists(path)
