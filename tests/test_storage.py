"""ssl_jax.storage: one path layer for a workdir that is a folder or a gs:// URL (here a
fake-gcs-server bucket on loopback), and the files a run keeps there going through it:
tokenizers, plan.json, best/, reports and pictures."""

import json
import os
import socket
import time

import numpy as np
import pytest

from conftest import ROOT, TINY, last_json_line, run_cli
from ssl_jax import storage
from ssl_jax.data import tokenizer as tokenizers

TEXT = 'the quick brown fox jumps over the lazy dog\nwhile seven wizards hex jolly boxes\n' * 40


@pytest.fixture(params=['local', 'gs'])
def base(request, tmp_path, monkeypatch):
  """A workdir of each kind; the test runs in a fresh current folder (nothing may appear there)."""
  monkeypatch.chdir(tmp_path)
  if request.param == 'local':
    yield str(tmp_path / 'run')
  else:
    yield storage.join(request.getfixturevalue('gcs').url, 'run')
  assert not os.path.exists(tmp_path / 'gs:'), 'a URL was taken for a local path'


def one_line(e) -> str:
  text = str(e.value)
  assert '\n' not in text, text
  return text


def test_files_round_trip_list_move_and_remove(base):
  storage.makedirs(base)
  a = storage.join(base, 'a.json')
  storage.write_text(a, '{"x": 1}')
  storage.makedirs(storage.join(base, 'sub'))      # a no-op for a URL: a prefix exists once an object does
  storage.write_bytes(storage.join(base, 'sub', 'b.bin'), b'\0\1')
  assert storage.read_text(a) == '{"x": 1}' and storage.exists(a) and not storage.isdir(a)
  assert storage.listdir(base) == ['a.json', 'sub'] and storage.isdir(storage.join(base, 'sub'))
  assert storage.listdir(storage.join(base, 'nothing')) == [] and not storage.exists(storage.join(base, 'nothing'))
  storage.write_text(a, 'replaced')                # whole: no temporary left beside it
  assert storage.read_text(a) == 'replaced' and storage.listdir(base) == ['a.json', 'sub']
  with storage.open_file(a) as f:
    assert f.read() == b'replaced'
  with pytest.raises(ValueError):
    storage.open_file(a, 'w')
  storage.move(a, storage.join(base, 'c.json'))
  assert storage.listdir(base) == ['c.json', 'sub']
  storage.remove(storage.join(base, 'sub'))
  storage.remove(storage.join(base, 'never-was'))
  assert storage.listdir(base) == ['c.json']
  with pytest.raises(FileNotFoundError):
    storage.read_bytes(storage.join(base, 'a.json'))


def test_upload_download_and_names(base, tmp_path):
  local = tmp_path / 'local.bin'
  local.write_bytes(b'payload' * 1000)
  storage.makedirs(base)
  target = storage.join(base, 'up.bin')
  storage.upload(str(local), target)
  storage.download(target, str(tmp_path / 'back.bin'))
  assert (tmp_path / 'back.bin').read_bytes() == local.read_bytes()
  assert storage.basename(target) == 'up.bin' and storage.dirname(target) == base
  assert storage.absolute(target) == (target if storage.is_url(target) else os.path.abspath(target))
  assert storage.basename('gs://b/run/') == 'run' and storage.join('gs://b', 'run', 'x') == 'gs://b/run/x'
  assert not [n for n in os.listdir(tmp_path) if '.tmp' in n]


def test_missing_bucket_is_one_storage_error(gcs, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  missing = f'gs://no-such-bucket-{os.getpid()}/run'
  for act in (lambda: storage.read_text(storage.join(missing, 'config.json')),
              lambda: storage.write_text(storage.join(missing, 'config.json'), '{}'),
              lambda: storage.exists(storage.join(missing, 'config.json')),
              lambda: storage.listdir(missing)):
    with pytest.raises(storage.StorageError) as e:
      act()
    assert f'bucket gs://no-such-bucket-{os.getpid()} does not exist' in one_line(e)
  # a missing object in a bucket that exists is a missing file, as on a disk
  with pytest.raises(FileNotFoundError) as e:
    storage.read_text(storage.join(gcs.url, 'nothing.json'))
  assert not isinstance(e.value, storage.StorageError)
  assert gcs.objects(gcs.url[len('gs://'):]) == [] and os.listdir(tmp_path) == []


def test_unreachable_store_is_one_storage_error_at_once(gcs, monkeypatch):
  with socket.socket() as s:       # a port that nothing listens on
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  monkeypatch.setenv('STORAGE_EMULATOR_HOST', f'http://127.0.0.1:{port}')
  import gcsfs  # pylint: disable=import-outside-toplevel
  gcsfs.GCSFileSystem.clear_instance_cache()
  try:
    t = time.time()
    for act in (lambda: storage.write_text('gs://bucket/run/config.json', '{}'),
                lambda: storage.exists('gs://bucket/run/config.json')):
      with pytest.raises(storage.StorageError) as e:
        act()
      assert 'cannot be reached' in one_line(e) and f'127.0.0.1:{port}' in one_line(e)
    assert time.time() - t < 10
  finally:
    gcsfs.GCSFileSystem.clear_instance_cache()


def _hf_tokenizer():
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=import-outside-toplevel
  words = sorted(set(TEXT.split()))
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(['[UNK]'] + words)}, unk_token='[UNK]'))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  return tokenizers.HFTokenizer(tok.to_str())


@pytest.mark.parametrize('kind', ['char', 'sentencepiece', 'huggingface', 'wordpiece'])
def test_tokenizer_saves_and_loads_in_a_bucket(gcs, kind, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  if kind == 'huggingface':
    tok = _hf_tokenizer()
  elif kind == 'wordpiece':
    from ssl_jax.data.wordpiece import WordPieceTokenizer  # pylint: disable=import-outside-toplevel
    tok = WordPieceTokenizer(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + sorted(set(TEXT.split())))
  else:
    tok = tokenizers.build(kind, lambda: [TEXT], 320)
  workdir = storage.join(gcs.url, 'run')
  assert tokenizers.load(workdir) is None
  tokenizers.save(tok, workdir)
  again = tokenizers.load(workdir)
  assert again.kind == tok.kind and tokenizers.fingerprint(again) == tokenizers.fingerprint(tok)
  sample = 'the lazy fox jumps'
  np.testing.assert_array_equal(again.encode(sample), tok.encode(sample))
  tokenizers.check_matches(again, {'huggingface': 'huggingface', 'wordpiece': 'wordpiece'}.get(kind, kind),
                           storage.join(workdir, tokenizers.TOKENIZER_FILE))
  assert os.listdir(tmp_path) == []


def test_tokenizer_files_at_a_url(gcs):
  """data.tokenizer (and a Hugging Face folder's files) may name a URL too."""
  spm = tokenizers.build('sentencepiece', lambda: [TEXT], 320)
  model = storage.join(gcs.url, 'tok', 'my.model')
  storage.write_bytes(model, spm.model_proto)
  got = tokenizers.build(model, None, 0)
  assert tokenizers.fingerprint(got) == tokenizers.fingerprint(spm)
  tokenizers.check_matches(spm, model, 'the workdir')
  hf = _hf_tokenizer()
  storage.write_text(storage.join(gcs.url, 'hf', 'tokenizer.json'), hf.json_text)
  for spec in (storage.join(gcs.url, 'hf', 'tokenizer.json'), storage.join(gcs.url, 'hf')):
    assert tokenizers.fingerprint(tokenizers.from_path(spec)) == tokenizers.fingerprint(hf)
  assert tokenizers.from_path(storage.join(gcs.url, 'absent.model')) is None


def test_params_best_and_saved_config_in_a_bucket(gcs, tmp_path, monkeypatch):
  from ssl_jax import workdirs  # pylint: disable=import-outside-toplevel
  from ssl_jax.convert import files as convert_files  # pylint: disable=import-outside-toplevel
  from ssl_jax.finetune import best  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(tmp_path)
  workdir = storage.join(gcs.url, 'run')
  params = {'blocks': {'w': np.arange(6, dtype=np.float32).reshape(2, 3)}, 'b': np.ones(3, np.float32)}
  model = {'family': 'bert', 'num_layers': 1}
  assert best.keep_best(workdir, 5, {'accuracy': 0.5}, 'accuracy', params, model)
  assert not best.keep_best(workdir, 6, {'accuracy': 0.4}, 'accuracy', params, model)
  assert json.loads(storage.read_text(storage.join(workdir, 'best', 'best.json')))['step'] == 5
  back, model_back, vocab = convert_files.load_params(storage.join(workdir, 'best'))
  np.testing.assert_array_equal(back['blocks']['w'], params['blocks']['w'])
  assert model_back == model and vocab is None and convert_files.has_params(storage.join(workdir, 'best'))
  from ssl_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  storage.write_text(storage.join(workdir, 'config.json'), config_lib.base_config().to_json())
  assert workdirs.saved_config(workdir).model.family == config_lib.base_config().model.family
  assert os.listdir(tmp_path) == []


def test_pictures_and_reports_go_to_a_bucket(gcs, tmp_path, monkeypatch):
  from ssl_jax import evaluate  # pylint: disable=import-outside-toplevel
  from ssl_jax.tasks import vision  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(tmp_path)
  workdir = storage.join(gcs.url, 'run')
  png = vision.save_grid(storage.join(workdir, 'grid.png'), [('a', np.zeros((2, 4, 4, 3)))], 'title')
  evaluate.plot([{'shots': 0, 'accuracy': 0.5}, {'shots': 1, 'accuracy': 0.7}], 'task',
                storage.join(workdir, 'fewshot.png'))
  for path in (png, storage.join(workdir, 'fewshot.png')):
    assert storage.read_bytes(path).startswith(b'\x89PNG')
  task = storage.join(gcs.url, 'task.jsonl')
  storage.write_text(task, json.dumps({'context': 'a', 'choices': ['b', 'c'], 'label': 0}) + '\n')
  assert evaluate.read_task(task)[0]['label'] == 0
  assert os.listdir(tmp_path) == []


def test_plan_json_in_a_bucket(gcs):
  """`run.py plan --workdir gs://...` in a process of its own: plan.json in the bucket, and
  nothing named gs: in the folder it ran in."""
  workdir = storage.join(gcs.url, 'planned')
  proc = run_cli('plan', '--config', 'experiments/gpt.py:gpt:nano', *TINY, '--config.data.tokenizer=char',
                 '--devices', '1', '--workdir', workdir, env=gcs.env, timeout=300)
  printed = last_json_line(proc.stdout)
  saved = json.loads(storage.read_text(storage.join(workdir, 'plan.json')))
  assert saved == printed and saved['fits'] and saved['bytes_per_device']['peak'] > 0
  assert 'plan.json' in storage.listdir(workdir)
  assert not os.path.exists(os.path.join(ROOT, 'gs:'))


def test_convert_to_hf_from_a_bucket_into_a_bucket(gcs, tmp_path, monkeypatch):
  """`convert --to_hf` with both sides at URLs: our params read from the bucket, the Hugging
  Face files written whole into it, nothing local."""
  from safetensors.numpy import load as load_bytes  # pylint: disable=import-outside-toplevel
  from ssl_jax.convert import command, files as convert_files  # pylint: disable=import-outside-toplevel
  from test_gpt2_convert import TINY as GPT_TINY  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(tmp_path)
  params, ours, hf = _random_gpt(GPT_TINY), storage.join(gcs.url, 'ours'), storage.join(gcs.url, 'hf')
  convert_files.save_params(params, GPT_TINY, ours)
  report = command.convert_command(None, hf, ours)
  assert sorted(storage.listdir(hf)) == sorted(report['files']) == ['config.json', 'model.safetensors']
  tensors = load_bytes(storage.read_bytes(storage.join(hf, 'model.safetensors')))
  np.testing.assert_array_equal(tensors['wte.weight'], params['wte'])
  assert json.loads(storage.read_text(storage.join(hf, 'config.json')))['model_type'] == 'gpt2'
  assert os.listdir(tmp_path) == []


def _random_gpt(model_config):
  """A GPT's parameter tree filled with numpy noise (its shapes traced, nothing compiled)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import linen as nn  # pylint: disable=import-outside-toplevel
  from ssl_jax.convert import files as convert_files  # pylint: disable=import-outside-toplevel
  from ssl_jax.models.gpt import GPT  # pylint: disable=import-outside-toplevel
  model = GPT(convert_files.transformer_config(model_config))
  shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params']))
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(lambda x: rng.normal(size=x.shape).astype(np.float32), shapes)
