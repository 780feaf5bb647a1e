"""Tokenizers, the token cache, the held-out split and the deterministic batch sampler."""

import os

import numpy as np
import pytest

from ssl_jax import parallel
from ssl_jax.data import sources, text, tokenizer as tokenizers
from ssl_jax.data.corpus import TextCorpus
from conftest import tiny_config


def test_char_tokenizer_round_trip_and_unknown_character():
  tok = tokenizers.CharTokenizer.from_text(['hello world\n'])
  ids = tok.encode('hello\nworld')
  assert ids.dtype == np.int32 and tok.decode(ids) == 'hello\nworld'
  assert tok.vocab_size == len(set('hello world\n'))
  with pytest.raises(ValueError, match="'z'"):
    tok.encode('zebra')


def test_sentencepiece_trains_saves_and_reloads(tmp_path, corpus):
  with open(corpus) as f:
    texts = [f.read()]
  tok = tokenizers.build('sentencepiece', lambda: texts, 600, special=['[PAD]', '[MASK]'])
  assert tok.vocab_size == 600
  assert tok.piece_id('[PAD]') == 1 and tok.piece_id('[MASK]') == 2   # after <unk>, in order
  sample = texts[0][:500]
  assert tok.decode(tok.encode(sample)) == sample
  tokenizers.save(tok, str(tmp_path))
  again = tokenizers.load(str(tmp_path))
  assert tokenizers.fingerprint(again) == tokenizers.fingerprint(tok)
  np.testing.assert_array_equal(again.encode(sample), tok.encode(sample))


def test_token_cache_is_reused_and_split_is_the_last_tenth(tmp_path, corpus):
  config = tiny_config(corpus)
  first = TextCorpus(config, str(tmp_path))
  cached = os.listdir(tmp_path / 'cache')
  assert len(cached) == 1
  second = TextCorpus(config, str(tmp_path))
  assert os.listdir(tmp_path / 'cache') == cached
  with open(corpus) as f:
    ids = first.tokenizer.encode(f.read() + '\n\n')
  n = len(ids)
  np.testing.assert_array_equal(first.train_tokens, ids[:int(n * 0.9)])
  np.testing.assert_array_equal(second.eval_tokens, ids[int(n * 0.9):])


def test_batches_are_a_pure_function_of_seed_and_step():
  tokens = np.arange(10_000) % 997
  a = text.LMBatches(tokens, 16, 8, seed=3)
  b = text.LMBatches(tokens, 16, 8, seed=3)
  np.testing.assert_array_equal(a.batch(7)['inputs'], b.batch(7)['inputs'])
  assert not np.array_equal(a.batch(7)['inputs'], a.batch(8)['inputs'])
  assert not np.array_equal(a.batch(7)['inputs'], text.LMBatches(tokens, 16, 8, seed=4).batch(7)['inputs'])
  assert not np.array_equal(a.batch(0)['inputs'], a.eval_batch(0)['inputs'])
  batch = a.batch(5)
  np.testing.assert_array_equal(batch['inputs'][:, 1:], batch['targets'][:, :-1])   # shifted by one


def test_permute_is_a_keyed_bijection():
  for n in (1, 2, 3, 7, 64, 1000, 4097):
    order = text.permute(np.arange(n), n, (0, 1))
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
    np.testing.assert_array_equal(text.permute(np.arange(n)[::-1], n, (0, 1)), order[::-1])  # per index
  a, b = text.permute(np.arange(1000), 1000, (0, 1)), text.permute(np.arange(1000), 1000, (0, 2))
  assert (a != b).mean() > 0.9 and (a != np.arange(1000)).mean() > 0.9
  with pytest.raises(ValueError, match='out of range'):
    text.permute(np.array([5]), 5, (0,))


def test_training_windows_cover_the_stream_once_an_epoch():
  tokens = np.arange(10_001)                    # token value = its position
  T, B = 16, 8
  data = text.LMBatches(tokens, T, B, seed=5)
  m = (len(tokens) - T - 1) // T                # 624 windows an epoch = 78 steps
  starts = np.concatenate([data.batch(s)['inputs'][:, 0] for s in range(m // B)])
  assert len(set(starts.tolist())) == m                       # no window twice within the epoch
  assert len(set((starts % T).tolist())) == 1                  # all at the epoch's phase
  assert starts.max() + T + 1 <= len(tokens)
  assert not np.array_equal(starts[:B], np.sort(starts[:B]))   # shuffled, not in order
  nxt = np.concatenate([data.batch(s)['inputs'][:, 0] for s in range(m // B, 2 * m // B)])
  assert len(set(nxt.tolist())) == m and len(set((nxt % T).tolist())) == 1
  assert not np.array_equal(nxt - nxt[0] % T, starts - starts[0] % T)   # the next epoch: a new order
  held = [data.eval_batch(i)['inputs'][:, 0] for i in range(data.num_batches)]   # eval_batches=0: all
  held = np.concatenate(held)
  assert data.num_batches == (len(tokens) - 1) // T // B and len(set(held.tolist())) == len(held)
  assert (held % T == 0).all() and held.max() + T + 1 <= len(tokens)
  np.testing.assert_array_equal(data.eval_batch(3)['inputs'], text.LMBatches(tokens, T, B, seed=5).eval_batch(3)['inputs'])
  short = text.LMBatches(np.arange(20), T, 4, seed=0)           # shorter than two windows: still reads
  assert short.batch(0)['inputs'].shape == (4, T) and short.batch(3)['targets'].max() <= 19


def test_each_host_reads_only_its_rows_of_the_global_batch():
  tokens = np.arange(5_000)
  whole = text.LMBatches(tokens, 8, 8, seed=0).batch(11)['inputs']
  parts = [text.LMBatches(tokens, 8, parallel.host_share(8, i, 4), seed=0).batch(11)['inputs']
           for i in range(4)]
  assert all(p.shape == (2, 8) for p in parts)
  np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_bad_inputs_are_named(tmp_path):
  with pytest.raises(text.DataError, match='no file matches'):
    sources.resolve(str(tmp_path / 'missing*.txt'))
  binary = tmp_path / 'weights.bin'
  binary.write_bytes(bytes(range(256)) * 4)
  with pytest.raises(text.DataError, match='binary'):
    text.read_text(str(binary))
  with pytest.raises(text.DataError, match='shorter than one sequence'):
    text.LMBatches(np.arange(10), 16, 4, seed=0)


def test_embedded_corpus_exists_offline():
  paths = text.embedded_corpus_paths()
  assert len(paths) > 50
  assert sum(os.path.getsize(p) for p in paths) > 1_000_000
