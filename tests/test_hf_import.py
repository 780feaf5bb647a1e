"""Imported checkpoints are first-class: a `convert --from_hf` workdir (GPT-2 with a byte-level
BPE tokenizer.json, BERT with a vocab.txt) runs eval, generate, fewshot, summarize, finetune and
train --config.init_from, and its GPT-2 logits equal transformers' on the same ids.

Nothing is downloaded: the models are transformers' own with random weights, the BPE is
trained here by `tokenizers`.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, run_cli
import ssl_jax
from ssl_jax import cli, workdirs
from ssl_jax.convert import command as convert_command, files as convert_files
from ssl_jax.data import tokenizer as tokenizers
from ssl_jax.models.gpt import GPT

WORDS = ('the quick brown fox jumps over a lazy dog while seven wizards quietly hex jolly boxes and '
         'every good reader finds that the old river runs past green hills under a wide grey sky').split()


def paragraphs(n=120, seed=0):
  """Documents of a few sentences each, a blank line between them (BERT's input format)."""
  rng = np.random.default_rng(seed)
  docs = []
  for _ in range(n):
    sentences = [' '.join(rng.choice(WORDS, rng.integers(5, 12))).capitalize() + '.' for _ in range(rng.integers(2, 5))]
    docs.append('\n'.join(sentences))
  return '\n\n'.join(docs) + '\n'


@pytest.fixture(scope='module')
def hf():
  hint = 'is not installed (pip install -r tests/requirements.txt)'
  torch = pytest.importorskip('torch', reason=f'torch {hint}')
  return torch, pytest.importorskip('transformers', reason=f'transformers {hint}')


@pytest.fixture(scope='module')
def texts(tmp_path_factory):
  folder = tmp_path_factory.mktemp('texts')
  corpus = folder / 'corpus.txt'
  corpus.write_text(paragraphs())
  tsv = folder / 'train.tsv'
  rng = np.random.default_rng(1)
  rows = [(' '.join(rng.choice(WORDS, 6)), int(rng.integers(0, 2))) for _ in range(64)]
  tsv.write_text('sentence\tlabel\n' + ''.join(f'{s}\t{label}\n' for s, label in rows))
  return str(corpus), str(tsv)


def byte_level_bpe(texts, vocab_size=300):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=import-outside-toplevel
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=['<|endoftext|>'],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  return tok


@pytest.fixture(scope='module')
def gpt2_dir(hf, texts, tmp_path_factory):
  torch, transformers = hf
  folder = str(tmp_path_factory.mktemp('hf_gpt2'))
  with open(texts[0]) as f:
    tok = byte_level_bpe(f.read().splitlines())
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  transformers.GPT2LMHeadModel(config).save_pretrained(folder)
  tok.save(os.path.join(folder, 'tokenizer.json'))
  return folder


def run(command, workdir, *overrides, config=None, **flags):
  """cli.run in this process (no second JAX start-up), as run.py calls it."""
  cli.run(command, config or os.path.join(ROOT, 'experiments', 'default.py'),
          [tuple(o.split('=', 1)) for o in overrides], config_given=config is not None, workdir=workdir, **flags)


def test_gpt2_import_runs_every_command_with_transformers_logits(hf, gpt2_dir, texts, tmp_path, capsys):
  torch, transformers = hf
  corpus, tsv = texts
  work = str(tmp_path / 'gpt2')
  report = convert_command.convert_command(gpt2_dir, None, work)
  assert report['tokenizer'] == 'huggingface' and 'config.json' in report['files']
  config = workdirs.saved_config(work)
  assert (config.task, config.model.family, config.data.seq_len) == ('clm', 'gpt', 64)

  # The tokenizer is the Hugging Face one: the same ids as transformers' fast tokenizer.
  tok = tokenizers.load(work)
  reference_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(gpt2_dir, 'tokenizer.json'))
  text = 'The quick brown fox, said the wizard, jumps over 7 lazy dogs.<|endoftext|>'
  ids = tok.encode(text)
  assert ids.tolist() == reference_tok.encode(text) and tok.decode(ids) == text
  assert ids[-1] == tok.piece_id('<|endoftext|>')

  # Logits on those ids equal GPT2LMHeadModel's.
  params, model_config, _ = convert_files.load_params(work)
  model = GPT(convert_files.transformer_config(model_config))
  ours = np.asarray(jax.jit(model.apply)({'params': params}, jnp.asarray(ids[None])))
  reference = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir, dtype=torch.float32).eval()
  with torch.no_grad():
    expected = reference(torch.from_numpy(ids[None].astype(np.int64))).logits.numpy()
  assert np.abs(ours - expected).max() < 1e-4
  loaded = ssl_jax.load(work)            # the Python API on the import: the same logits
  assert loaded.encode(text) == ids.tolist() and np.abs(loaded.logits(ids) - expected[0]).max() < 1e-4

  # Exported back, it carries its tokenizer.json: transformers reads both again.
  out = str(tmp_path / 'exported')
  assert 'tokenizer.json' in convert_command.convert_command(None, out, work)['files']
  assert transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(out, 'tokenizer.json')).encode(text) == \
      ids.tolist()

  data = f'data.path={corpus}'
  run('generate', work, data, prompt='The quick', max_new_tokens=8, temperature=0.0)
  assert capsys.readouterr().out.strip().splitlines()[-1].startswith('The quick')
  task = tmp_path / 'task.jsonl'
  task.write_text(''.join(json.dumps({'context': f'{w} is', 'choices': [' good', ' bad'], 'label': i % 2}) + '\n'
                          for i, w in enumerate(WORDS[:6])))
  run('fewshot', work, data, task_file=str(task), train_file=str(task), shots='0,1')
  assert os.path.exists(os.path.join(work, 'fewshot_task.json'))
  articles = tmp_path / 'articles.jsonl'
  articles.write_text(json.dumps({'article': 'The old river runs past green hills.', 'reference': 'A river.'}) + '\n')
  run('summarize', work, data, input_file=str(articles))
  assert json.load(open(os.path.join(work, 'rouge.json')))['scored'] == 1

  small = ['train.steps=2', 'train.batch_size=4', 'train.eval_every=2', 'train.eval_batches=1',
           'train.checkpoint_every=2', 'train.warmup_steps=1', 'data.seq_len=32']
  tuned = str(tmp_path / 'tuned')
  run('finetune', tuned, f'init_from={work}', f'data.path={tsv}', *small,
      config=os.path.join(ROOT, 'experiments', 'finetune_sst2.py'))
  assert os.path.exists(os.path.join(tuned, 'best', 'best.json'))

  # Pretraining on from the import: its shape and tokenizer; lr 0 keeps the weights it loaded.
  more = str(tmp_path / 'more')
  run('train', more, f'init_from={work}', data, *small, 'train.lr=0.0', 'train.schedule=constant', 'train.sample_tokens=0',
      config=os.path.join(ROOT, 'experiments', 'gpt.py') + ':gpt:nano')
  trained, trained_config, _ = convert_command.load_workdir_params(more)
  assert trained_config['d_model'] == 32 and tokenizers.fingerprint(tokenizers.load(more)) == tokenizers.fingerprint(tok)
  assert np.array_equal(trained['wte'], params['wte'])


def test_bert_import_with_vocab_txt_evaluates_and_finetunes(hf, texts, tmp_path, capsys):
  torch, transformers = hf
  corpus, tsv = texts
  folder = str(tmp_path / 'hf_bert')
  # BERT's own layout: [PAD] 0, [unused*], [UNK] [CLS] [SEP] [MASK] after them, then the words.
  vocab = ['[PAD]', '[unused0]', '[unused1]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + sorted(set(WORDS)) + ['.', ',']
  torch.manual_seed(0)
  config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=64)
  transformers.BertForPreTraining(config).save_pretrained(folder)
  with open(os.path.join(folder, 'vocab.txt'), 'w') as f:
    f.writelines(t + '\n' for t in vocab)
  work = str(tmp_path / 'bert')
  report = convert_command.convert_command(folder, None, work)
  assert report['tokenizer'] == 'wordpiece' and workdirs.saved_config(work).task == 'mlm_nsp'
  run('eval', work, f'data.path={corpus}', 'data.seq_len=32', 'train.batch_size=4', 'train.eval_batches=1',
      'data.max_predictions=5')
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert 'eval_loss' in result and np.isfinite(result['eval_loss'])
  tuned = str(tmp_path / 'tuned')
  run('finetune', tuned, f'init_from={work}', f'data.path={tsv}', 'train.steps=2', 'train.batch_size=4',
      'train.eval_every=2', 'train.eval_batches=1', 'train.checkpoint_every=2', 'train.warmup_steps=1',
      'data.seq_len=32', config=os.path.join(ROOT, 'experiments', 'finetune_sst2.py'))
  assert os.path.exists(os.path.join(tuned, 'best', 'best.json'))
  assert tokenizers.load(tuned).kind == 'wordpiece'


def test_a_failing_init_from_leaves_the_workdir_as_it_was(gpt2_dir, tmp_path):
  work = tmp_path / 'run'
  work.mkdir()
  (work / 'notes.txt').write_text('mine')
  empty = tmp_path / 'empty'
  empty.mkdir()
  gpt = os.path.join(ROOT, 'experiments', 'gpt.py') + ':gpt:nano'
  bert = os.path.join(ROOT, 'experiments', 'bert.py')
  imported = str(tmp_path / 'imported')
  convert_command.convert_command(gpt2_dir, None, imported)
  for config, init_from, expected in ((gpt, str(tmp_path / 'nowhere'), 'is not a directory'),
                                      (gpt, str(empty), 'no checkpoint to start from'),
                                      (bert, imported, 'holds a gpt model')):
    proc = run_cli('train', '--config', config, f'--config.init_from={init_from}', '--config.train.steps=1',
                   '--workdir', str(work), check=False)
    # One line of ours (libtpu, where installed, may print its own warnings before it).
    errors = [line for line in proc.stderr.strip().splitlines() if line.startswith('error: ')]
    assert proc.returncode == 1 and len(errors) == 1 and expected in errors[0], proc.stderr[-2000:]
    assert proc.stderr.strip().endswith(errors[0]) and 'Traceback' not in proc.stderr
    assert sorted(os.listdir(work)) == ['notes.txt']


def test_convert_refuses_before_writing(gpt2_dir, tmp_path):
  """A bad Hugging Face directory (a tokenizer that does not read) writes nothing."""
  import shutil  # pylint: disable=import-outside-toplevel
  bad = str(tmp_path / 'bad')
  shutil.copytree(gpt2_dir, bad)
  with open(os.path.join(bad, 'tokenizer.json'), 'w') as f:
    f.write('{"version": "1.0", "model": {"type": "nothing"}}')
  work = tmp_path / 'work'
  with pytest.raises(convert_files.ConversionError, match='tokenizer'):
    convert_command.convert_command(bad, None, str(work))
  assert not work.exists()
