"""BERT pretraining data: readers, pair construction, masking statistics, determinism."""

import os

import numpy as np
import pytest

from ssl_jax.data import documents, tokenizer as tokenizers
from ssl_jax.data.bert_examples import IS_NEXT, SPECIALS, PretrainingBatches
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


def test_batches_are_pure_functions_of_seed_step_and_row(corpus_docs, tok):
  data, encoded = make(corpus_docs, tok)
  again, _ = make(corpus_docs, tok)
  for key, value in data.batch(3).items():
    np.testing.assert_array_equal(value, again.batch(3)[key])
  assert not np.array_equal(data.batch(3)['inputs'], data.batch(4)['inputs'])
  halves = [PretrainingBatches(encoded, tok, 128, 32, 0, process_index=i, process_count=2).batch(3) for i in (0, 1)]
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
