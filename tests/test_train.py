"""The trainer: exact resume (also after kill -9), sharded equality, gradient accumulation."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from ssl_jax import checkpoint, trainer
from conftest import ROOT, TINY, read_metrics, tiny_config


def losses(records):
  return {r['step']: r['train_loss'] for r in records if 'train_loss' in r}


def fresh_losses_from(config, step, steps):
  """Train losses of steps step+1 .. step+steps from a fresh init whose counter starts at `step`:
  what a resume that lost its checkpoint's parameters (but not its step) would log."""
  s = trainer.setup(config, tempfile.mkdtemp())
  state = s.init_fn(jax.random.key(config.seed))
  state = state.replace(step=state.step + step)
  out = []
  for i in range(step, step + steps):
    state, m = s.train_fn(state, s.global_batch(s.data.train.batch(i)))
    out.append(float(m['loss']))
  return out


def assert_resume_is_exact(tmp_path, capfd, config):
  """Trains train.steps, drops the last checkpoint, trains again: the second run must start from
  the one before (and say so), log every step once, and log the very same losses as the first;
  the losses after it must depend on the checkpoint's parameters (a fresh init there differs)."""
  steps, every = config.train.steps, config.train.checkpoint_every
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(config, workdir)
  reference = read_metrics(workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == sorted([str(steps - every), str(steps)])
  shutil.rmtree(os.path.join(workdir, 'checkpoints', str(steps)))   # as if the run died after the save before
  capfd.readouterr()
  trainer.train_and_evaluate(config, workdir)
  out = capfd.readouterr()
  assert f'resumed from step {steps - every} of {workdir}' in out.out + out.err
  resumed = read_metrics(workdir)
  assert [r['step'] for r in resumed if 'train_loss' in r] == list(range(1, steps + 1))  # no step twice
  assert losses(resumed) == losses(reference)                                           # bit for bit
  assert [r['eval_loss'] for r in resumed if 'eval_loss' in r] == \
         [r['eval_loss'] for r in reference if 'eval_loss' in r]
  fresh = fresh_losses_from(config, steps - every, every)
  assert all(a != losses(reference)[i] for a, i in zip(fresh, range(steps - every + 1, steps + 1))), fresh
  return reference


@pytest.mark.parametrize('experiment', ['default.py', 'bert.py:tiny'])
def test_resume_continues_the_same_losses_exactly(tmp_path, corpus, experiment, capfd):
  # Dropout 0.1: its masks come from fold_in(seed, step), so they too must repeat after a resume.
  settings = {'train.steps': 8, 'train.checkpoint_every': 4, 'train.eval_every': 4, 'model.dropout': 0.1}
  reference = assert_resume_is_exact(tmp_path, capfd, tiny_config(corpus, experiment, **settings))
  # ... and dropout is at work: without it the first step's loss is another.
  without = fresh_losses_from(tiny_config(corpus, experiment, **{**settings, 'model.dropout': 0.0}), 0, 1)
  assert without[0] != losses(reference)[1]


def run_steps(corpus, steps, devices, *overrides):
  env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}', 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'steps.py'), corpus, str(steps), *overrides],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


MESHES = '8,1,1/2,2,2/1,4,2/1,1,8'   # (data, fsdp, tensor)


@pytest.mark.parametrize('experiment', ['default.py', 'bert.py:tiny', 'vit_mae.py'])
def test_data_fsdp_and_tensor_meshes_on_8_devices_match_one_device(corpus, experiment):
  data = '' if experiment.startswith('vit') else corpus    # ViT: the embedded images
  # Dropout 0.1: each mask must be a function of the key and the global element index, not of
  # the shard a device holds (that dropout acts at all: the resume tests).
  one = run_steps(data, 5, 1, f'--experiment={experiment}', '--meshes=1,1,1', '--config.model.dropout=0.1')
  sharded = run_steps(data, 5, 8, f'--experiment={experiment}', f'--meshes={MESHES}', '--config.model.dropout=0.1')
  assert one['devices'] == 1 and sharded['devices'] == 8
  reference = one['runs'][0]
  for run in sharded['runs']:
    assert run['losses'] == pytest.approx(reference['losses'], rel=1e-5), run['mesh']
    # The MLP's input kernel (embed, mlp) is split over fsdp and tensor as the mesh says.
    d_model, d_ff = run['fc_kernel_shape']
    _, fsdp, tensor = run['mesh']
    assert run['fc_kernel_shard_shape'] == [d_model // fsdp, d_ff // tensor], run['mesh']


@pytest.mark.parametrize('experiment', ['default.py', 'bert.py:tiny'])
def test_the_accelerator_formulation_on_a_sharded_cpu_mesh_matches_the_cpu_kernels(corpus, experiment):
  # model.kernels=xla: the plain products, norms, attention and chunked loss that GPUs and
  # TPUs run (without their fused attention kernels), here on 8 CPU devices.
  cpu = run_steps(corpus, 5, 1, f'--experiment={experiment}', '--meshes=1,1,1')
  xla = run_steps(corpus, 5, 8, f'--experiment={experiment}', '--meshes=2,2,2/1,4,2', '--config.model.kernels=xla')
  assert cpu['runs'][0]['choice'] == 'kernels cpu, attention cpu, float32 on cpu'
  for run in xla['runs']:
    assert run['choice'] == 'kernels xla, attention xla, float32 on cpu'
    assert run['losses'] == pytest.approx(cpu['runs'][0]['losses'], rel=2e-5), run['mesh']


def test_fsdp_shards_adam_moments_and_embeddings(corpus):
  sharded = run_steps(corpus, 1, 8, '--config.mesh.data=4', '--config.mesh.fsdp=2')
  assert sharded['adam_mu_fc_shard_shape'] == [16, 64]
  assert sharded['wte_shard_shape'][1] == 16


def test_gradient_accumulation_matches_the_full_batch(corpus):
  whole = run_steps(corpus, 3, 1)
  accumulated = run_steps(corpus, 3, 1, '--config.train.grad_accum=4')
  for a, b in zip(whole['losses'], accumulated['losses']):
    assert b == pytest.approx(a, rel=1e-5)


def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path, corpus):
  workdir = str(tmp_path / 'run')
  args = ['train', '--config.data.path=' + corpus, *TINY, '--config.train.steps=100000',
          '--config.train.checkpoint_every=100000', '--config.train.eval_every=100000', '--workdir', workdir]
  proc = subprocess.Popen([sys.executable, 'run.py', *args], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env={**os.environ, 'PYTHONUNBUFFERED': '1'})
  deadline = time.time() + 300
  while time.time() < deadline:
    if os.path.exists(os.path.join(workdir, 'metrics.jsonl')) and len(read_metrics(workdir)) >= 5:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  assert 'SIGTERM' in err
  saved = [int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))]
  assert len(saved) == 1 and saved[0] >= 5
  assert saved[0] >= read_metrics(workdir)[-1]['step']   # nothing logged was lost


def test_sentencepiece_run_trains_and_resumes_with_the_saved_model(tmp_path, corpus):
  from ssl_jax import trainer
  from ssl_jax.data import tokenizer as tokenizers
  overrides = {'data.tokenizer': 'sentencepiece', 'model.vocab_size': 600, 'train.steps': 4,
               'train.checkpoint_every': 2, 'train.eval_every': 2}
  workdir = str(tmp_path / 'spm')
  trainer.train_and_evaluate(tiny_config(corpus, **overrides), workdir)
  assert os.path.exists(os.path.join(workdir, 'tokenizer.model'))
  first = tokenizers.fingerprint(tokenizers.load(workdir))
  trainer.train_and_evaluate(tiny_config(corpus, **{**overrides, 'train.steps': 6}), workdir)
  assert tokenizers.fingerprint(tokenizers.load(workdir)) == first
  assert [r['step'] for r in read_metrics(workdir)] == list(range(1, 7))


def _poisoned(loss_fn, share, value=None):
  """The task's loss, unchanged in value, whose gradient is NaN or Inf (`value`, else each
  drawn at random) in the first parameter leaf on a `share` of the steps (drawn from the step's
  key): a finite loss with a non-finite gradient, which only the skip keeps out of the state."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  @jax.custom_vjp
  def poison(x, bad):
    return x

  def forward(x, bad):
    return x, bad

  def backward(bad, g):
    return jnp.where(bad != 0, bad, g), jnp.zeros_like(bad)   # NaN != 0 holds

  poison.defvjp(forward, backward)

  def wrapped(model, params, batch, rng, train):
    loss, metrics = loss_fn(model, params, batch, rng, train)
    u = jax.random.uniform(jax.random.fold_in(rng, 12345), (2,))
    kind = jnp.where(u[1] < 0.5, jnp.nan, jnp.inf) if value is None else jnp.float32(value)
    bad = jnp.where((u[0] < share) & train, kind, 0.0)      # 0: clean, else the gradient to plant
    loss = loss + 0.0 * poison(jnp.sum(jax.tree_util.tree_leaves(params)[0]), bad)
    return loss, {**metrics, 'loss': loss}
  return wrapped


@pytest.mark.parametrize('kernels', ['cpu', 'xla'])
def test_a_non_finite_gradient_with_a_finite_loss_leaves_the_state_bit_identical(corpus, monkeypatch, kernels):
  from ssl_jax.tasks import clm  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(clm, 'TASK', dataclasses.replace(clm.TASK, loss_fn=_poisoned(clm.loss_fn, 0.6)))
  s = trainer.setup(tiny_config(corpus, **{'model.kernels': kernels}), tempfile.mkdtemp())
  state = s.init_fn(jax.random.key(0))
  seen = set()
  for step in range(10):
    before = jax.device_get((state.params, state.opt_state))
    state, m = s.train_fn(state, s.global_batch(s.data.train.batch(step)))      # donates the old state
    after = jax.device_get((state.params, state.opt_state))
    same = [np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after))]
    assert np.isfinite(float(m['loss'])) and int(state.step) == step + 1
    norm = float(m['grad_norm'])
    if float(m['skipped']):
      seen.add('nan' if np.isnan(norm) else 'inf' if np.isinf(norm) else 'finite?')
      assert all(same), step                    # parameters and Adam's moments and count alike
    else:
      seen.add('clean')
      assert np.isfinite(norm) and sum(same) < len(same) // 2, step
  assert seen == {'nan', 'inf', 'clean'}, seen


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(tmp_path, corpus, monkeypatch):
  from ssl_jax.tasks import clm  # pylint: disable=import-outside-toplevel
  original = clm.loss_fn
  monkeypatch.setattr(clm, 'TASK', dataclasses.replace(clm.TASK, loss_fn=_poisoned(original, 0.4, np.nan)))
  workdir = str(tmp_path / 'some')
  trainer.train_and_evaluate(tiny_config(corpus, **{'train.steps': 12, 'train.max_bad_steps': 12}), workdir)
  records = read_metrics(workdir)
  skipped = [r['train_skipped'] for r in records if 'train_skipped' in r]
  assert 0 < sum(skipped) < 12 and records[-1]['nonfinite_skipped'] == sum(skipped)
  assert all(np.isfinite(r['train_loss']) for r in records if 'train_loss' in r)   # the loss never told
  params = checkpoint.read_params(workdir)                        # the newest checkpoint's
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))
  every_step = _poisoned(original, 1.0, np.inf)     # stops after 3
  monkeypatch.setattr(clm, 'TASK', dataclasses.replace(clm.TASK, loss_fn=every_step))
  with pytest.raises(trainer.TrainingError, match='3 steps in a row'):
    trainer.train_and_evaluate(tiny_config(corpus, **{'train.steps': 12, 'train.max_bad_steps': 3}),
                             str(tmp_path / 'all'))


def test_a_second_run_in_the_same_workdir_refuses_while_the_first_lives(tmp_path, corpus):
  workdir = tmp_path / 'busy'
  workdir.mkdir()
  sleeper = subprocess.Popen(['sleep', '60'])
  try:
    (workdir / 'run.lock').write_text(json.dumps({'pid': sleeper.pid, 'host': os.uname().nodename}))
    with pytest.raises(trainer.TrainingError, match=f'pid {sleeper.pid}'):
      trainer.train_and_evaluate(tiny_config(corpus, **{'train.steps': 1}), str(workdir))
  finally:
    sleeper.kill()
    sleeper.wait()
  # Its process gone, the lock is stale: a new run takes it over, and leaves none behind,
  # and gives SIGTERM back to the caller's handler.
  before = signal.getsignal(signal.SIGTERM)
  trainer.train_and_evaluate(tiny_config(corpus, **{'train.steps': 1}), str(workdir))
  assert not (workdir / 'run.lock').exists()
  assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize('corruption', ['truncate', 'delete', 'garbage'])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(tmp_path, corpus, corruption, caplog):
  workdir = str(tmp_path / corruption)
  config = tiny_config(corpus, **{'train.steps': 6, 'train.checkpoint_every': 3, 'train.eval_every': 0})
  trainer.train_and_evaluate(config, workdir)
  reference = checkpoint.read_params(workdir)
  newest = os.path.join(workdir, 'checkpoints', '6', 'state')
  files = sorted((os.path.join(d, f) for d, _, fs in os.walk(newest) for f in fs), key=os.path.getsize)
  target = files[-1]                                     # the largest: array data
  if corruption == 'truncate':
    with open(target, 'r+b') as f:
      f.truncate(os.path.getsize(target) // 2)
  elif corruption == 'delete':
    os.remove(target)
  else:
    with open(target, 'r+b') as f:
      f.write(os.urandom(min(os.path.getsize(target), 4096)))
  s = trainer.setup(config, workdir)
  ckpt = checkpoint.Checkpointer(workdir)
  with caplog.at_level('WARNING'):
    restored = ckpt.restore(s.abstract_state, expect_meta=s.meta())
  ckpt.close()
  assert restored is not None and restored[2] == 3
  assert 'checkpoints 6 of' in caplog.text and 'fell back to step 3' in caplog.text
  # Training again sets the corrupt one aside, redoes steps 4-6 and saves a sound step 6.
  trainer.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  assert os.listdir(os.path.join(workdir, 'checkpoints_corrupt')) == ['6']
  again = checkpoint.read_params(workdir)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(again),
                                                  jax.tree_util.tree_leaves(reference)))


def test_mlm_cross_entropy_and_hits_match_optax_and_argmax():
  import optax
  from ssl_jax.tasks.mlm_nsp import cross_entropy_and_hits
  logits = jax.random.normal(jax.random.PRNGKey(0), (4, 5, 300)) * 3
  labels = jax.random.randint(jax.random.PRNGKey(1), (4, 5), 0, 300)
  labels = labels.at[0, :3].set(logits[0, :3].argmax(-1))          # some certain hits
  ce, hits = cross_entropy_and_hits(logits, labels)
  np.testing.assert_allclose(ce, optax.softmax_cross_entropy_with_integer_labels(logits, labels), rtol=1e-5)
  np.testing.assert_array_equal(hits, logits.argmax(-1) == labels)
  assert hits[0, :3].all()
  grad = jax.grad(lambda x: cross_entropy_and_hits(x, labels)[0].sum())(logits)
  want = jax.grad(lambda x: optax.softmax_cross_entropy_with_integer_labels(x, labels).sum())(logits)
  np.testing.assert_allclose(grad, want, atol=1e-6)


@pytest.mark.parametrize('kernels', ['cpu', 'xla'])
def test_global_norm_and_clipping_match_optax(kernels):
  import optax
  from ssl_jax import optim
  from ssl_jax.kernels import ops
  rng = np.random.default_rng(0)
  tree = {'embedding': rng.normal(size=(3000, 64)).astype(np.float32),     # takes the product path
          'kernel': rng.normal(size=(16, 3, 8)).astype(np.float32), 'bias': rng.normal(size=(8,)).astype(np.float32)}
  norm = ops.global_norm(tree, kernels)
  np.testing.assert_allclose(norm, optax.tree.norm(tree), rtol=1e-6)
  for max_norm in (1.0, 1e6):                          # clipped, and left alone
    ours, _ = optim.clip_by_global_norm(max_norm, kernels).update(tree, optax.EmptyState(), grad_norm=norm)
    theirs, _ = optax.clip_by_global_norm(max_norm).update(tree, optax.EmptyState())
    for k in tree:
      np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-6, atol=1e-9)
    assert max_norm < 1e6 or all(np.array_equal(ours[k], tree[k]) for k in tree)
  ours, _ = optim.clip_by_global_norm(1.0, kernels).update(tree, optax.EmptyState())    # computes the norm itself
  np.testing.assert_allclose(optax.tree.norm(ours), 1.0, rtol=1e-5)
  assert float(ops.global_norm({'z': np.zeros((300, 300), np.float32)}, kernels)) == 0.0
