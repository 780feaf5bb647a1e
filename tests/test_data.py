"""Tokenizers, the token cache, the held-out split and the deterministic batch sampler."""

import os

import numpy as np
import pytest

from ssl_jax.data import text, tokenizer as tokenizers
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


def test_each_host_reads_only_its_rows_of_the_global_batch():
  tokens = np.arange(5_000)
  whole = text.LMBatches(tokens, 8, 8, seed=0).batch(11)['inputs']
  parts = [text.LMBatches(tokens, 8, 8, seed=0, process_index=i, process_count=4).batch(11)['inputs']
           for i in range(4)]
  assert all(p.shape == (2, 8) for p in parts)
  np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_bad_inputs_are_named(tmp_path):
  with pytest.raises(text.DataError, match='no file matches'):
    text.resolve_paths(str(tmp_path / 'missing*.txt'))
  empty = tmp_path / 'empty.txt'
  empty.write_text('  \n')
  with pytest.raises(text.DataError, match='empty corpus'):
    text.read_texts([str(empty)])
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
