"""Shared helpers: a tiny config, a small real corpus, and running run.py in a subprocess."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.normpath(os.path.join(ROOT, '..', 'shared', 'data'))
sys.path.insert(0, ROOT)

TINY = [
    '--config.model.num_layers=2', '--config.model.num_heads=2', '--config.model.d_model=32',
    '--config.model.d_ff=64', '--config.data.seq_len=32', '--config.train.batch_size=8',
    '--config.train.warmup_steps=2', '--config.train.eval_batches=2', '--config.train.sample_tokens=20',
]


def shared_data(*parts):
  """A path under ../shared/data, or a skip saying it is absent (a user's fresh clone)."""
  path = os.path.join(SHARED_DATA, *parts)
  if not os.path.exists(path):
    pytest.skip(f'{path} is absent: the shared data sets sit beside the repository in CI')
  return path


@pytest.fixture(scope='session')
def corpus(tmp_path_factory):
  """~60 KB of English prose: the first part of tinyshakespeare if present, else generated text."""
  path = tmp_path_factory.mktemp('corpus') / 'corpus.txt'
  source = os.path.join(SHARED_DATA, 'tinyshakespeare', 'input.txt')
  if os.path.exists(source):
    with open(source) as f:
      text = f.read(60_000)
  else:
    words = 'the quick brown fox jumps over a lazy dog while seven wizards quietly hex jolly boxes'.split()
    text = '\n'.join(' '.join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(5000))
  path.write_text(text)
  return str(path)


def tiny_config(corpus_path, experiment='default.py', **overrides):
  """An experiment (default: the GPT default) shrunk to seconds, as a locked ConfigDict."""
  from ssl_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  c = config_lib.load(os.path.join(ROOT, 'experiments', experiment))
  c.unlock()
  c.model.num_layers, c.model.num_heads, c.model.d_model, c.model.d_ff = 2, 2, 32, 64
  if c.task == 'mlm_nsp':
    c.model.vocab_size, c.model.max_len, c.data.max_predictions = 600, 64, 5
    c.model.dropout = 0.0
  c.data.path = corpus_path
  c.data.seq_len = 32
  c.train.batch_size = 8
  c.train.steps = 6
  c.train.warmup_steps = 2
  c.train.eval_every = 3
  c.train.eval_batches = 2
  c.train.checkpoint_every = 3
  c.train.sample_tokens = 0
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  c.lock()
  return c


def run_cli(*args, env=None, check=True, timeout=600):
  """Runs `python run.py ARGS` from the repository root; returns the CompletedProcess."""
  full_env = {**os.environ, 'PYTHONUNBUFFERED': '1', **(env or {})}
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'run.py'), *args], cwd=ROOT, env=full_env,
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f'run.py {" ".join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
  return proc


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def last_json_line(text):
  return json.loads([line for line in text.strip().splitlines() if line.startswith('{')][-1])


from fake_gcs import gcs, gcs_server  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import


def pytest_configure(config):
  config.addinivalue_line('markers', 'multihost: starts several processes (hosts of a job); run them as one group '
                                     'with -m multihost, or leave them out with -m "not multihost"')


# Tests marked multihost (they start several JAX processes at once, the hosts of a job, or time
# their kills) run one after another on one pytest-xdist worker (`--dist loadgroup`), so that no
# two of them share the cores at once, as their heartbeat and shutdown timeouts assume. Without
# xdist the group does nothing.
@pytest.hookimpl(tryfirst=True)    # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  for item in items:
    if item.get_closest_marker('multihost'):
      item.add_marker(pytest.mark.xdist_group('hosts'))
