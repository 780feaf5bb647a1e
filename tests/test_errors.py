"""Bad input: a one-line error naming the thing, exit status 1, no traceback (unless --debug),
and nothing in the workdir lost. One case per row of the README's table."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

import run
from ssl_jax import checkpoint, trainer
from conftest import ROOT, TINY, shared_data, tiny_config

STEPS = ['--config.train.steps=4', '--config.train.eval_every=0', '--config.train.sample_tokens=0']


def fail(capsys, *argv):
  """Runs run.py's main in this process; returns its stderr, checked to be one error line."""
  with pytest.raises(SystemExit) as exit_:
    run.main(list(argv))
  err = capsys.readouterr().err
  assert exit_.value.code == 1, err[-2000:]
  assert 'Traceback' not in err
  lines = [line for line in err.splitlines() if line.strip()]
  assert lines[-1].startswith('error: ') and '\n' not in lines[-1]
  return lines[-1]


def snapshot(workdir: str) -> dict:
  """Every file of a workdir but the logs, with its content's hash."""
  out = {}
  for d, _, files in os.walk(workdir):
    for f in files:
      if f.startswith('events.') or f in ('metrics.jsonl', 'loss.png'):
        continue
      with open(os.path.join(d, f), 'rb') as fh:
        out[os.path.relpath(os.path.join(d, f), workdir)] = hashlib.sha1(fh.read()).hexdigest()
  return out


@pytest.fixture(scope='module')
def trained(tmp_path_factory, corpus):
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  trainer.train_and_evaluate(tiny_config(corpus, **{'train.steps': 3, 'train.sample_tokens': 0}), workdir)
  return workdir


def test_missing_path(tmp_path, capsys):
  line = fail(capsys, 'train', f'--config.data.path={tmp_path}/nope.txt', *TINY, '--workdir', str(tmp_path / 'w'))
  assert 'data.path: no file matches' in line and 'nope.txt' in line


@pytest.mark.parametrize('content, words', [
    (b'', 'empty corpus'),
    (bytes(range(256)) * 20, 'looks like a binary file'),
    (b'too short\n', 'shorter than one sequence'),
])
def test_unusable_corpus(tmp_path, capsys, content, words):
  path = tmp_path / 'corpus.txt'
  path.write_bytes(content)
  line = fail(capsys, 'train', f'--config.data.path={path}', *TINY, '--workdir', str(tmp_path / 'w'))
  assert words in line


def test_unreadable_image(tmp_path, capsys):
  sample = shared_data('cifar10', 'train')
  first = sorted(os.listdir(sample))[0]
  for cls in ('cat', 'dog'):
    (tmp_path / 'images' / cls).mkdir(parents=True)
    shutil.copy(os.path.join(sample, first, sorted(os.listdir(os.path.join(sample, first)))[0]),
                tmp_path / 'images' / cls / 'ok.png')
  (tmp_path / 'images' / 'dog' / 'broken.png').write_bytes(b'not a png')
  line = fail(capsys, 'train', '--config', 'experiments/vit_rotation.py', f'--config.data.path={tmp_path}/images',
              '--config.train.batch_size=2', '--workdir', str(tmp_path / 'w'))
  assert 'broken.png: not a readable image' in line


@pytest.mark.parametrize('override, words', [
    ('--config.train.stepz=3', "unknown config key 'train.stepz'"),
    ('--config.train.steps=many', '--config.train.steps=many'),
    ('--config.mesh.data=3', 'mesh: data=3'),
    ('--config.model.max_len=16', "longer than the model's 16 positions"),
])
def test_bad_config(tmp_path, corpus, capsys, override, words):
  line = fail(capsys, 'train', f'--config.data.path={corpus}', *TINY, override, '--workdir', str(tmp_path / 'w'))
  assert words in line


def test_an_encoder_head_on_the_char_tokenizer(tmp_path, capsys):
  path = tmp_path / 'train.tsv'
  path.write_text('text\tlabel\n' + ''.join(f'row {i} is {"good" if i % 2 else "bad"}\t{i % 2}\n' for i in range(40)))
  line = fail(capsys, 'finetune', '--config', 'experiments/finetune_sst2.py', f'--config.data.path={path}',
              '--config.data.tokenizer=char', '--workdir', str(tmp_path / 'w'))
  assert 'an encoder needs a sub-word vocabulary' in line and 'data.tokenizer=sentencepiece' in line


def test_batch_not_divisible_by_the_data_axis(tmp_path, corpus):
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8', 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, 'run.py', 'train', f'--config.data.path={corpus}', *TINY,
                         '--config.mesh.data=8', '--config.train.batch_size=12', '--workdir', str(tmp_path / 'w')],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      'error: train.batch_size=12 is not divisible by the 8-way data axis (mesh.data x mesh.fsdp) x '
      'train.grad_accum=1')


@pytest.mark.parametrize('override, words', [
    ('--config.model.d_model=64', 'has model=gpt L2 H2 D32'),
    ('--config.data.tokenizer=sentencepiece', 'tokenizer.json holds the char tokenizer'),
])
def test_workdir_of_another_model_or_tokenizer(tmp_path, corpus, trained, capsys, override, words):
  workdir = str(tmp_path / 'copy')
  shutil.copytree(trained, workdir)
  before = snapshot(workdir)
  line = fail(capsys, 'train', f'--config.data.path={corpus}', *TINY, *STEPS, override, '--workdir', workdir)
  assert words in line
  assert snapshot(workdir) == before           # nothing lost, nothing overwritten


def test_full_disk_while_saving(tmp_path, corpus, trained, capsys, monkeypatch):
  workdir = str(tmp_path / 'copy')
  shutil.copytree(trained, workdir)
  before = snapshot(workdir)
  monkeypatch.setattr(checkpoint, '_free_bytes', lambda directory: 1 << 20)   # 1 MiB left
  line = fail(capsys, 'train', f'--config.data.path={corpus}', *TINY, *STEPS, '--workdir', workdir)
  assert 'saving checkpoint 4' in line and 'the disk is full' in line and 'resumes from step 3' in line
  after = snapshot(workdir)
  assert {k: v for k, v in after.items() if k.startswith('checkpoints')} == \
         {k: v for k, v in before.items() if k.startswith('checkpoints')}


def test_debug_shows_the_traceback(tmp_path):
  with pytest.raises(Exception, match='no file matches'):
    run.main(['train', f'--config.data.path={tmp_path}/nope.txt', '--workdir', str(tmp_path / 'w'), '--debug'])


def test_a_jsonl_line_with_a_lone_surrogate(tmp_path, capsys):
  path = tmp_path / 'corpus.jsonl'
  path.write_text(''.join(f'{{"text": "a good line of text, number {i}"}}\n' for i in range(50)) +
                  '{"text": "bad \\ud800 here"}\n')
  workdir = tmp_path / 'w'
  line = fail(capsys, 'train', f'--config.data.path={path}', *TINY, '--workdir', str(workdir))
  assert f'{path}:51: not Unicode text (a lone surrogate' in line
  left = os.listdir(workdir) if workdir.exists() else []
  assert not [name for name in left if name.startswith(('tokenizer', 'cache'))], left   # nothing of the data kept


@pytest.mark.parametrize('command, flag, content, words', [
    ('fewshot', '--task', '{"context": "a", "target": "b"}\n5\n', 'task.jsonl:2: expected a JSON object, not int'),
    ('fewshot', '--task', '{"context": "a", "choices": 3, "label": 0}\n', 'task.jsonl:1: expected "context"'),
    ('summarize', '--input', '{"article": "a"}\n\n{"article": "b"\n', 'task.jsonl:3: not JSON'),
    ('summarize', '--input', '["article"]\n', 'task.jsonl:1: expected a JSON object, not list'),
])
def test_a_task_or_articles_file_that_is_not_json_objects(tmp_path, trained, capsys, command, flag, content, words):
  path = tmp_path / 'task.jsonl'
  path.write_text(content)
  line = fail(capsys, command, '--workdir', trained, flag, str(path))
  assert f'{tmp_path}/{words}' in line


def test_a_record_cut_short_at_the_end_of_metrics_jsonl(tmp_path, corpus, trained, capsys):
  workdir = str(tmp_path / 'copy')
  shutil.copytree(trained, workdir)
  path = os.path.join(workdir, 'metrics.jsonl')
  with open(path) as f:
    whole = f.read()
  with open(path, 'a') as f:
    f.write('{"step": 4, "train_lo')                 # a full disk's last write
  run.main(['train', f'--config.data.path={corpus}', *TINY, *STEPS, '--workdir', workdir])
  assert 'metrics.jsonl:4: a record cut short, left out' in capsys.readouterr().err
  with open(path) as f:
    records = [json.loads(line) for line in f]
  assert [r['step'] for r in records] == [1, 2, 3, 4] and records[:3] == [json.loads(x) for x in whole.splitlines()]
  with open(path, 'a') as f:                         # a bad line before others: named, not skipped
    f.write('not json\n{"step": 5}\n')
  line = fail(capsys, 'train', f'--config.data.path={corpus}', *TINY, *STEPS, '--workdir', workdir)
  assert line.startswith(f'error: {path}:5: not a metrics record')


def test_an_eval_record_appended_after_one_cut_short(tmp_path, capsys):
  from ssl_jax import metrics  # pylint: disable=import-outside-toplevel
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1, "train_loss": 2.0}\n{"step": 2, "train_lo')
  metrics.append(str(tmp_path), {'step': 2, 'eval_loss': 1.5})         # `run.py eval`'s record
  assert metrics.read(str(tmp_path)) == [{'step': 1, 'train_loss': 2.0}, {'step': 2, 'eval_loss': 1.5}]
  assert 'metrics.jsonl:2: a record cut short, left out' in capsys.readouterr().err
