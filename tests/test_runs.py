"""What a run says and leaves for its user: the printed config, start-up lines, resumes with a
changed config, a finished run, the compilation cache, logs off a terminal, TensorBoard and
Weights & Biases records, the Python API and the installed package."""

import glob
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import types

import numpy as np
import pytest

from conftest import ROOT, TINY, last_json_line, read_metrics, run_cli, tiny_config


def test_config_command_lists_every_key_with_what_it_does():
  from ssl_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  out = run_cli('config', '--config', 'experiments/default.py', '--config.train.lr=0.003').stdout
  lines = [line for line in out.splitlines() if ' = ' in line]
  parsed = {}
  for line in lines:
    match = re.fullmatch(r'(\S+) = (.+?)  +# (.+)', line)
    assert match, line
    parsed[match.group(1)] = (match.group(2), match.group(3))
  assert set(parsed) == set(config_lib.flatten(config_lib.base_config()))   # every leaf key, none invented
  assert not [k for k, (_, doc) in parsed.items() if doc == '(undocumented)' or len(doc) < 8]
  assert parsed['train.lr'][0] == '0.003'                                    # the resolved value
  assert 'spm' in parsed['data.tokenizer'][1] and 'bpe' in parsed['data.tokenizer'][1]   # aliases named


def test_resume_reports_what_changed_and_a_finished_run_exits_at_once(tmp_path, corpus):
  workdir = str(tmp_path / 'run')
  common = ['--config.data.path=' + corpus, *TINY, '--workdir', workdir]
  run_cli('train', *common, '--config.train.steps=2', '--config.train.eval_every=0')
  # No --config: the saved config (its tiny shape, 2 steps), not the default experiment; the run is
  # complete, so nothing is compiled, trained or sampled.
  done = run_cli('train', '--workdir', workdir)
  assert f'config: the one saved in {workdir}' in done.stdout
  assert f'{workdir} is already at step 2 of train.steps=2: nothing to train' in done.stderr
  assert 'compiled' not in done.stderr and '--- sample' not in done.stdout
  assert [r['step'] for r in read_metrics(workdir)] == [1, 2]
  resumed = run_cli('train', '--workdir', workdir, '--config.train.steps=4', '--config.train.lr=0.005')
  assert f'resumed from step 2 of {workdir}' in resumed.stderr
  assert 'train.steps 2 -> 4' in resumed.stderr and 'train.lr 0.001 -> 0.005' in resumed.stderr
  with open(os.path.join(workdir, 'config_history.jsonl')) as f:
    [history] = [json.loads(line) for line in f]
  assert history['replaced_at_step'] == 2 and history['changed']['train.lr'] == [0.001, 0.005]
  assert history['config']['train']['lr'] == 0.001 and history['config']['model']['d_model'] == 32
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['train']['lr'] == 0.005
  assert [r['step'] for r in read_metrics(workdir)] == [1, 2, 3, 4]


# run.py with JAX's own compilation-cache events counted (jax.monitoring), printed at exit.
COUNTED = """
import atexit, collections, json, runpy, sys
from jax import monitoring
counts = collections.Counter()
monitoring.register_event_listener(
    lambda event, **kwargs: counts.update([event.split('/jax/compilation_cache/')[-1]] if 'compilation_cache' in event else []))
atexit.register(lambda: print('cache events', json.dumps(counts), file=sys.stderr, flush=True))
sys.argv = ['run.py'] + sys.argv[1:]
runpy.run_path('run.py', run_name='__main__')
"""


def cache_events(*args):
  proc = subprocess.run([sys.executable, '-c', COUNTED, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env={**os.environ, 'PYTHONUNBUFFERED': '1'})
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(line for line in proc.stderr.splitlines() if line.startswith('cache events '))
  return json.loads(line[len('cache events '):])


def test_the_compilation_cache_serves_a_second_start(tmp_path, corpus):
  cache = str(tmp_path / 'cache')
  common = ['train', '--config.data.path=' + corpus, *TINY, '--config.train.steps=1', f'--config.compile_cache={cache}']
  first = cache_events(*common, '--workdir', str(tmp_path / 'a'))
  entries = sorted(os.listdir(cache))
  assert len(entries) >= 2 and first.get('cache_misses', 0) >= 2     # at least the train and eval steps
  second = cache_events(*common, '--workdir', str(tmp_path / 'b'))
  # Every program the first start compiled, the second read from the cache (JAX's own counters).
  assert second.get('cache_hits', 0) >= first['cache_misses'] and second.get('cache_misses', 0) == 0, second
  assert sorted(os.listdir(cache)) == entries
  off = cache_events(*common[:-1], '--config.compile_cache=', '--workdir', str(tmp_path / 'c'))
  assert off.get('cache_hits', 0) == 0 and off.get('cache_misses', 0) == 0, off    # '' turns it off: nothing read
  assert sorted(os.listdir(cache)) == entries


def test_the_end_of_run_sample_stays_within_the_context(tmp_path, corpus):
  from ssl_jax import trainer  # pylint: disable=import-outside-toplevel
  config = tiny_config(corpus, **{'train.steps': 1, 'train.sample_tokens': 500, 'model.max_len': 32,
                                  'train.sample_prompt': 'KING'})
  calls = []
  from ssl_jax import generate  # pylint: disable=import-outside-toplevel
  original = generate.complete

  def spy(model, params, tokenizer, prompts, max_new_tokens, *args, **kwargs):
    calls.append(max_new_tokens)
    return original(model, params, tokenizer, prompts, max_new_tokens, *args, **kwargs)

  generate.complete = spy
  try:
    trainer.train_and_evaluate(config, str(tmp_path / 'w'))
  finally:
    generate.complete = original
  assert calls == [28]        # 32 positions, 4 of them the prompt's


def _events(path):
  """The Event protos of a TensorBoard file (TFRecord framing: length, crc, data, crc)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  events = []
  with open(path, 'rb') as f:
    while header := f.read(12):
      (length,) = struct.unpack('<Q', header[:8])
      data = f.read(length)
      f.read(4)
      events.append(event_pb2.Event.FromString(data))
  return events


def test_tensorboard_and_wandb_get_config_sample_and_hparams(tmp_path, corpus, monkeypatch):
  from ssl_jax import trainer  # pylint: disable=import-outside-toplevel
  logged = {'init': [], 'log': [], 'finish': 0}

  class Run:
    def log(self, values, step):
      logged['log'].append((step, values))

    def finish(self):
      logged['finish'] += 1

  def init(**kwargs):
    logged['init'].append(kwargs)
    return Run()

  monkeypatch.setitem(sys.modules, 'wandb', types.SimpleNamespace(init=init))   # wandb's calls, recorded
  workdir = str(tmp_path / 'w')
  config = tiny_config(corpus, **{'train.steps': 3, 'train.sample_tokens': 8, 'log.wandb': 'ssl-test'})
  trainer.train_and_evaluate(config, workdir)
  [event_file] = glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  tags = {v.tag for e in _events(event_file) for v in e.summary.value}
  assert {'config/text_summary', 'sample/text_summary', 'train_loss', 'eval_loss', 'lr'} <= tags
  hparams = [v.metadata.plugin_data.plugin_name for f in glob.glob(os.path.join(workdir, 'hparams', 'events.*'))
             for e in _events(f) for v in e.summary.value]
  assert 'hparams' in hparams
  [init_kwargs] = logged['init']
  assert init_kwargs['project'] == 'ssl-test' and init_kwargs['config']['train']['steps'] == 3
  steps = [step for step, values in logged['log'] if 'train_loss' in values]
  assert steps == [1, 2, 3] and any('sample' in values for _, values in logged['log'])
  assert logged['finish'] == 1


def test_a_missing_wandb_is_a_one_line_error(tmp_path, corpus, monkeypatch):
  monkeypatch.setitem(sys.modules, 'wandb', None)     # import wandb raises ImportError
  from ssl_jax import config as config_lib, trainer  # pylint: disable=import-outside-toplevel
  with pytest.raises(config_lib.ConfigError, match='pip install wandb'):
    trainer.train_and_evaluate(tiny_config(corpus, **{'train.steps': 1, 'log.wandb': 'p'}), str(tmp_path / 'w'))


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(tmp_path, monkeypatch, capsys):
  from ssl_jax import metrics  # pylint: disable=import-outside-toplevel
  for tty in (True, False):
    monkeypatch.setattr(sys.stderr, 'isatty', lambda tty=tty: tty)
    logger = metrics.MetricLogger(str(tmp_path / str(tty)), total_steps=3)
    for step in (1, 2, 3):
      logger.progress(step, {'train_loss': 2.0 / step, 'tokens_per_sec': 1000.0, 'lr': 1e-3})
    logger.close()
    err = capsys.readouterr().err
    if tty:
      assert '\r' in err and 'step 2/3' not in err
    else:
      assert '\r' not in err and 'step 2/3  loss 1.0000  tokens/s 1,000  lr 1.00e-03' in err


def test_the_python_api_matches_eval_and_generate(tmp_path, corpus):
  import ssl_jax  # pylint: disable=import-outside-toplevel
  from ssl_jax import trainer  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / 'w')
  config = tiny_config(corpus, **{'train.steps': 4, 'train.eval_batches': 3})
  ssl_jax.train(config, workdir)
  model = ssl_jax.load(workdir)
  assert model.step == 4 and model.config.model.d_model == 32
  evaluated = last_json_line(run_cli('eval', '--workdir', workdir).stdout)
  # The held-out loss from the API's logits of the same windows equals what `eval` reports.
  s = trainer.setup(config, str(tmp_path / 'again'), compile_steps=False)
  losses = []
  for i in range(3):
    batch = s.data.eval.eval_batch(i)
    for inputs, targets in zip(batch['inputs'], batch['targets']):
      logits = model.logits(inputs)
      assert logits.shape == (len(inputs), model.tokenizer.vocab_size) and logits.dtype == np.float32
      log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
          - logits.max(-1, keepdims=True)
      losses.append(-log_probs[np.arange(len(targets)), targets].mean())
  assert abs(np.mean(losses) - evaluated['eval_loss']) < 1e-4
  text = 'First Citizen'
  assert model.decode(model.encode(text)) == text
  greedy = model.generate('KING', max_new_tokens=12, temperature=0)
  printed = run_cli('generate', '--workdir', workdir, '--prompt', 'KING', '--max_new_tokens', '12',
                    '--temperature', '0').stdout
  assert len(greedy) == 12 and printed.rstrip('\n').endswith('KING' + greedy)


def test_the_api_gives_an_encoders_masked_lm_logits(tmp_path, corpus):
  import ssl_jax  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / 'bert')
  ssl_jax.train(tiny_config(corpus, 'bert.py', **{'train.steps': 2, 'train.eval_every': 0}), workdir)
  model = ssl_jax.load(workdir)
  ids = model.encode('the king is dead')
  logits = model.logits(ids)
  assert logits.shape == (len(ids), 600) and np.isfinite(logits).all()
  with pytest.raises(ValueError, match='needs a decoder'):
    model.generate('the')


def test_pip_install_gives_the_package_and_the_console_script(tmp_path):
  wheels, venv, elsewhere, source = (tmp_path / name for name in ('wheels', 'venv', 'elsewhere', 'source'))
  elsewhere.mkdir()
  # Built from a copy: setuptools writes build/ and *.egg-info beside the sources it builds.
  shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns('.git', 'runs', 'build', '*.egg-info', '__pycache__',
                                                                '.whl', '.venv', '.nanogpt', '.pytest_cache'))
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(wheels),
                  str(source)], check=True, capture_output=True)
  # The dependencies come from this environment (--system-site-packages); the package from the wheel.
  subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', str(venv)], check=True)
  [wheel] = glob.glob(str(wheels / '*.whl'))
  subprocess.run([str(venv / 'bin' / 'pip'), 'install', '-q', '--no-deps', wheel], check=True, capture_output=True)
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  where = subprocess.run([str(venv / 'bin' / 'python'), '-c', 'import ssl_jax; print(ssl_jax.__file__)'],
                         cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout
  assert where.startswith(str(venv))
  script = str(venv / 'bin' / 'ssl-jax')
  train_help = subprocess.run([script, 'train', '--help'], cwd=elsewhere, env=env, capture_output=True, text=True,
                              check=True).stdout
  bench_help = subprocess.run([script, 'bench', '--help'], cwd=elsewhere, env=env, capture_output=True, text=True,
                              check=True).stdout
  assert train_help.startswith('usage: ssl-jax train') and '--steps' not in train_help and '--steps' in bench_help
  printed = subprocess.run([script, 'config', '--config', 'experiments/bert.py:tiny'], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout   # the installed experiments
  assert "model.family = 'bert'" in printed


def test_pyproject_agrees_with_the_requirements_and_the_tree():
  import tomllib  # pylint: disable=import-outside-toplevel
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    project = tomllib.load(f)

  def requirements(path):
    with open(path) as f:
      lines = [line.split('#')[0].strip() for line in f]
    return sorted(line for line in lines if line and not line.startswith('-r'))

  assert project['tool']['setuptools']['dynamic']['dependencies']['file'] == ['requirements.txt']
  assert sorted(project['project']['optional-dependencies']['test']) == requirements(
      os.path.join(ROOT, 'tests', 'requirements.txt'))
  packages = sorted(os.path.relpath(d, ROOT).replace(os.sep, '.') for d, _, files in os.walk(
      os.path.join(ROOT, 'ssl_jax')) if '__init__.py' in files)
  assert sorted(p for p in project['tool']['setuptools']['packages'] if p != 'ssl_jax.experiments') == packages
  assert project['project']['scripts']['ssl-jax'] == 'ssl_jax.command_line:entry'


def test_importing_the_package_and_the_command_line_loads_no_jax():
  # The command line sets JAX's flags (devices, platforms) after parsing: JAX must not be loaded before.
  loaded = ('sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "flax", "optax", "orbax"))')
  code = f'import sys, ssl_jax, ssl_jax.command_line; print({loaded}); ssl_jax.load; print("jax" in sys.modules)'
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ['[]', 'True'], proc.stdout[:300]   # none; then ssl_jax.load brings it
