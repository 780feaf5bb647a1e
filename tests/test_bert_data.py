"""BERT pretraining data: readers, pair construction, masking statistics, determinism."""

import hashlib
import json
import os

import numpy as np
import pytest

from ssl_jax import parallel
from ssl_jax.data import documents, shard_readers, shards, tokenizer as tokenizers
from ssl_jax.data.bert_examples import IS_NEXT, SPECIALS, PretrainingBatches
from ssl_jax.data.wordpiece import SPECIAL_TOKENS as WORDPIECE_SPECIALS, WordPieceTokenizer
from conftest import SHARED_DATA

UD = os.path.join(SHARED_DATA, 'ud_ewt', 'en_ewt-ud-dev.conllu')


def test_readers():
  text = '# newdoc id = a\n# sent_id = 1\n# text = Hello there.\n1\tHello\n\n# text = Bye.\n\n' \
         '# newdoc id = b\n# text = Another one.\n'
  assert documents.read_conllu(text) == [['Hello there.', 'Bye.'], ['Another one.']]
  plain = 'First line. Second sentence!\nThird\n\n\nNew doc here.\n'
  assert documents.read_plain(plain) == [['First line.', 'Second sentence!', 'Third'], ['New doc here.']]


@pytest.fixture(scope='module')
def corpus_docs():
  """Real web text (UD English EWT) when present, else generated documents."""
  if os.path.exists(UD):
    return documents.read_documents([UD])
  rng = np.random.default_rng(0)
  words = 'alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho'.split()
  return [[' '.join(rng.choice(words, rng.integers(3, 15))) + '.' for _ in range(rng.integers(1, 8))]
          for _ in range(300)]


@pytest.fixture(scope='module')
def tok(corpus_docs):
  return tokenizers.build('sentencepiece', lambda: ['\n'.join(d) for d in corpus_docs], 1000, SPECIALS)


def make(corpus_docs, tok, **kw):
  encoded = [[tok.encode(s) for s in d] for d in corpus_docs]
  args = dict(seq_len=128, global_batch=32, seed=0)
  args.update(kw)
  return PretrainingBatches(encoded, tok, **args), encoded


def test_special_pieces_take_the_first_ids(tok):
  assert [tok.piece_id(p) for p in SPECIALS] == [0, 1, 2, 3, 4]


def test_masking_and_nsp_statistics_over_100k_tokens(corpus_docs, tok):
  data, _ = make(corpus_docs, tok)
  candidates = selected = masked = kept = replaced = 0
  labels = []
  step = 0
  while candidates < 100_000:
    b = data.batch(step)
    step += 1
    special = np.isin(b['inputs'], [tok.piece_id('[CLS]'), tok.piece_id('[SEP]'), tok.piece_id('[PAD]')])
    chosen = b['weights'] > 0
    candidates += int((~special).sum())
    selected += int(chosen.sum())
    rows = np.nonzero(chosen)[0]
    pos = b['positions'][chosen]
    original = b['labels'][chosen]
    now = b['inputs'][rows, pos]
    assert not np.isin(original, [0, 1, 2, 3, 4]).any(), 'a special token was chosen'
    masked += int((now == tok.piece_id('[MASK]')).sum())
    kept += int((now == original).sum())
    replaced += int(((now != original) & (now != tok.piece_id('[MASK]'))).sum())
    labels.extend(b['nsp'].tolist())
  assert selected / candidates == pytest.approx(0.15, abs=0.005)
  assert masked / selected == pytest.approx(0.8, abs=0.01)
  assert kept / selected == pytest.approx(0.1, abs=0.01)
  assert replaced / selected == pytest.approx(0.1, abs=0.01)
  assert np.mean(np.array(labels) == IS_NEXT) == pytest.approx(0.5, abs=0.02)


def test_is_next_pairs_are_consecutive_sentences_of_one_document(corpus_docs, tok):
  data, encoded = make(corpus_docs, tok)
  seen_not_next = 0
  for i in range(2000):
    rng = np.random.default_rng([0, i])
    a_tokens, b_tokens, label, (doc_a, a, doc_b, b) = data.pair(rng)
    assert a == list(range(a[0], a[-1] + 1)) and b == list(range(b[0], b[-1] + 1))
    assert len(a_tokens) + len(b_tokens) <= 128 - 3 and a_tokens and b_tokens
    if label == IS_NEXT:
      assert doc_a == doc_b and b[0] == a[-1] + 1
    else:
      assert doc_a != doc_b
      seen_not_next += 1
  assert 800 < seen_not_next < 1200


def test_without_nsp_an_example_is_one_chunk_of_a_single_sentence_corpus(corpus_docs, tok):
  """mlm_nsp.nsp=false: one document of unrelated lines (SST-2's rows) is enough; an example is
  `[CLS] consecutive sentences [SEP]`, all segment 0."""
  lines = [s for d in corpus_docs for s in d]
  with pytest.raises(documents.DataError):
    make([[s] for s in lines], tok)                     # single-sentence documents: no IsNext pair
  data, encoded = make([lines], tok, seq_len=32, nsp=False)
  sep = tok.piece_id('[SEP]')
  for i in range(200):
    tokens_a, tokens_b, _, (doc, a, _, b) = data.pair(np.random.default_rng([0, i]))
    assert doc == 0 and not tokens_b and not b and a == list(range(a[0], a[-1] + 1))
    assert 0 < len(tokens_a) <= 30
    assert tokens_a == np.concatenate([encoded[0][j] for j in a]).tolist()[:30]
  batch = data.batch(0)
  n = batch['padding'].sum(1)
  assert (batch['segments'] == 0).all() and ((batch['inputs'] == sep).sum(1) == 1).all()
  assert (batch['inputs'][np.arange(32), n - 1] == sep).all() and (batch['weights'].sum(1) >= 1).all()


def test_batches_are_pure_functions_of_seed_step_and_row(corpus_docs, tok):
  data, encoded = make(corpus_docs, tok)
  again, _ = make(corpus_docs, tok)
  for key, value in data.batch(3).items():
    np.testing.assert_array_equal(value, again.batch(3)[key])
  assert not np.array_equal(data.batch(3)['inputs'], data.batch(4)['inputs'])
  halves = [PretrainingBatches(encoded, tok, 128, parallel.host_share(32, i, 2), 0).batch(3) for i in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([h['inputs'] for h in halves]), data.batch(3)['inputs'])


def test_whole_word_masking_masks_every_piece_of_a_chosen_word(corpus_docs, tok):
  data, _ = make(corpus_docs, tok, whole_word=True)
  b = data.batch(0)
  for row in range(32):
    n = int(b['padding'][row].sum())
    chosen = set(b['positions'][row][b['weights'][row] > 0].tolist())
    original = b['inputs'][row].copy()
    original[b['positions'][row][b['weights'][row] > 0]] = b['labels'][row][b['weights'][row] > 0]
    for i in chosen:   # a continuation piece is chosen only with the piece before it, and vice versa
      if not data.word_start[original[i]]:
        assert i - 1 in chosen
      if i + 1 < n and not data.word_start[original[i + 1]] and original[i + 1] not in (2, 3):
        assert i + 1 in chosen


# --- documents read memory-mapped from the token cache --------------------------------

GREEK = 'alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho'.split()


def write_three_formats(directory):
  """60 documents: 20 as plain text (some lines of two sentences), 20 JSONL rows, 20 CoNLL-U."""
  rng = np.random.default_rng(7)
  docs = [[' '.join(rng.choice(GREEK, rng.integers(2, 12))) + rng.choice(['.', '!', '?'])
           for _ in range(rng.integers(1, 7))] for _ in range(60)]
  with open(os.path.join(directory, 'a.txt'), 'w') as f:
    f.write('\n\n'.join(' '.join(doc[:2]) + '\n' + '\n'.join(doc[2:]) for doc in docs[:20]) + '\n')
  with open(os.path.join(directory, 'b.jsonl'), 'w') as f:
    f.writelines(json.dumps({'text': ' '.join(doc)}) + '\n' for doc in docs[20:40])
  with open(os.path.join(directory, 'c.conllu'), 'w') as f:
    for i, doc in enumerate(docs[40:]):
      f.write(f'# newdoc id = d{i}\n' + ''.join(f'# text = {s}\n1\tx\n\n' for s in doc))
  return [os.path.join(directory, n) for n in ('a.txt', 'b.jsonl', 'c.conllu')], docs


def greek_wordpiece():
  pieces = sorted({w[:k] for w in GREEK for k in (2, 3)} | {'##' + w[k:] for w in GREEK for k in (2, 3)})
  return WordPieceTokenizer(list(WORDPIECE_SPECIALS) + ['.', '!', '?'] + pieces)


def batches_digest(data, steps=3):
  h = hashlib.sha256()
  for b in [data.batch(s) for s in range(steps)] + [data.eval_batch(0)]:
    for k in sorted(b):
      h.update(k.encode())
      h.update(np.ascontiguousarray(b[k]).tobytes())
  return h.hexdigest()


# Recorded from the in-memory path before documents came from the cache (commit 33b9ed3).
RECORDED = {'plain': '9b80810d60b3ebff16548f0854aff38970fdc6cc7a352f21868e05794c7fb645',
            'whole_word': 'f928b413b2f9c875c12bc6f189a6f828c80b44c56afb56d088891aa5f27b187c'}
SETTINGS = {'plain': {}, 'whole_word': dict(whole_word=True, short_seq_prob=0.5)}


def test_documents_from_the_cache_give_the_recorded_batches(tmp_path):
  paths, written = write_three_formats(str(tmp_path))
  tok = greek_wordpiece()
  tokenizers.save(tok, str(tmp_path))
  read = documents.read_documents(paths)
  assert read == written[:20] + written[20:40] + written[40:]
  fp = tokenizers.fingerprint(tok)
  one = shards.build(paths, tok, str(tmp_path), fp, str(tmp_path / 'one'), workers=1, sentences=True)
  two = shards.build(paths, tok, str(tmp_path), fp, str(tmp_path / 'two'), workers=2, unit_bytes=300,
                     sentences=True)   # the JSONL file in several units; text files stay whole
  index = json.load(open(os.path.join(two, shard_readers.INDEX)))
  assert len(index['shards']) > 5 and index['documents'] == 60 and index['sentences'] == sum(map(len, read))
  encoded = [[tok.encode(s) for s in doc] for doc in read]
  for directory in (one, two):
    cached = shard_readers.ShardedDocuments(directory)
    assert cached.num_pairs() == sum(len(d) >= 2 for d in read)
    for name, kw in SETTINGS.items():
      assert batches_digest(PretrainingBatches(cached, tok, 32, 8, 3, 5, **kw)) == RECORDED[name], name
      assert batches_digest(PretrainingBatches(encoded, tok, 32, 8, 3, 5, **kw)) == RECORDED[name], name
  # A view of documents [a, b) (the held-out split) is those documents, pairs and all.
  cached = shard_readers.ShardedDocuments(two)
  for a, b in ((0, 45), (13, 60), (21, 39)):
    view = cached[a:b]
    assert len(view) == b - a and view.num_pairs() == sum(len(d) >= 2 for d in read[a:b])
    assert [len(read[a + view.pair_document(k)]) >= 2 for k in range(view.num_pairs())] == [True] * view.num_pairs()
    for d in (0, b - a - 1):
      doc = view.document(d)
      assert doc.lengths == [len(s) for s in encoded[a + d]]
      np.testing.assert_array_equal(doc.tokens(0, len(doc)), np.concatenate(encoded[a + d]))
    np.testing.assert_array_equal(PretrainingBatches(view, tok, 32, 8, 1).batch(2)['inputs'],
                                  PretrainingBatches(encoded[a:b], tok, 32, 8, 1).batch(2)['inputs'])


def test_mask_prob_sets_the_masked_share(tmp_path):
  """data.mask_prob reaches the batches through the task: 40% of the pieces masked where
  data.max_predictions leaves room, 15% by default; a share outside (0, 1] is refused."""
  from ssl_jax.config import base_config
  from ssl_jax.errors import ConfigError
  from ssl_jax.tasks import mlm_nsp
  rng = np.random.default_rng(0)
  words = 'alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho'.split()
  path = tmp_path / 'corpus.txt'
  path.write_text('\n\n'.join('\n'.join(' '.join(rng.choice(words, 12)) + '.' for _ in range(6)) for _ in range(60)))
  shares = {}
  for mask_prob in (0.15, 0.4):
    c = base_config()
    c.task, c.model.family = 'mlm_nsp', 'bert'
    c.data.path, c.data.tokenizer, c.model.vocab_size = str(path), 'sentencepiece', 300
    c.data.seq_len, c.data.max_predictions, c.train.batch_size = 64, 32, 16
    c.data.mask_prob = mask_prob
    data = mlm_nsp.make_data(c, str(tmp_path / f'w{mask_prob}'))
    b = data.train.batch(0)
    special = np.isin(b['inputs'], [0, 1, 2, 3])    # [UNK] [PAD] [CLS] [SEP]; [MASK] is a chosen piece
    shares[mask_prob] = (b['weights'] > 0).sum() / (~special).sum()
  assert shares[0.15] == pytest.approx(0.15, abs=0.02)
  assert shares[0.4] == pytest.approx(0.4, abs=0.02)
  c.data.mask_prob = 0
  with pytest.raises(ConfigError, match='data.mask_prob'):
    mlm_nsp.make_data(c, str(tmp_path / 'w0'))
