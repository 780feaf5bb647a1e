"""Corpus preparation: planted exact and near duplicates, report arithmetic, the cache, and a
training run on the prepared corpus."""

import json
import os

import numpy as np
import pytest

from ssl_jax import config as config_lib
from ssl_jax.data import prepare, shard_readers, shards, tokenizer as tokenizers
from conftest import SHARED_DATA, read_metrics, run_cli

LINES_PER_DOC = 40


def planted_corpus(path, copies=60, edits=60, seed=0):
  """tinyshakespeare's non-blank lines in documents of 40 lines; then exact copies of `copies`
  documents and copies of `edits` others with 3 words changed, each placed after its original.

  Returns {document index in the file: 'original' | 'exact' | 'near'}.
  """
  source = os.path.join(SHARED_DATA, 'tinyshakespeare', 'input.txt')
  if not os.path.exists(source):
    pytest.skip(f'{source} is absent: the shared data sets sit beside the repository in CI')
  with open(source) as f:
    lines = [l for l in f.read().splitlines() if l.strip()]
  docs = ['\n'.join(lines[i:i + LINES_PER_DOC]) for i in range(0, len(lines) - LINES_PER_DOC + 1, LINES_PER_DOC)]
  rng = np.random.default_rng(seed)
  chosen = rng.choice(len(docs), copies + edits, replace=False)
  order = [(d, 'original') for d in docs]
  for k, index in enumerate(chosen):
    text = docs[index]
    if k >= copies:                                   # a few words changed
      words = text.split(' ')
      inside_lines = [i for i, w in enumerate(words) if '\n' not in w]     # keep the line count
      for w in rng.choice(inside_lines, 3, replace=False):
        words[w] = 'zounds'
      text = ' '.join(words)
    position = next(i for i, (t, kind) in enumerate(order) if t == docs[index] and kind == 'original')
    order.insert(int(rng.integers(position + 1, len(order) + 1)), (text, 'exact' if k < copies else 'near'))
  with open(path, 'w') as f:
    f.write('\n\n'.join(t for t, _ in order) + '\n')
  return {i: kind for i, (_, kind) in enumerate(order)}


def settings(**overrides):
  p = config_lib.base_config().data.prepare
  for key, value in overrides.items():
    p[key] = value
  return p


def test_planted_duplicates_are_removed_and_distinct_documents_kept(tmp_path):
  corpus = tmp_path / 'planted.txt'
  kinds = planted_corpus(str(corpus))
  report = prepare.prepare([str(corpus)], str(tmp_path / 'out'), settings(), progress=False)
  kept_first_lines = set()
  with open(tmp_path / 'out' / 'provenance.jsonl') as f:
    for line in f:
      kept_first_lines.add(json.loads(line)['first_line'])
  kept = {i for i in kinds if i * (LINES_PER_DOC + 1) + 1 in kept_first_lines}
  count = lambda kind, ids: sum(kinds[i] == kind for i in ids)
  originals = count('original', kinds)
  assert count('exact', kept) == 0                                      # every exact copy removed
  assert count('near', kept) <= 0.1 * count('near', kinds)               # at least 90% of near copies
  assert originals - count('original', kept) <= 0.01 * originals         # at most 1% of distinct ones
  # The report's counts add up.
  assert report['documents_in'] == len(kinds)
  assert report['documents_in'] == report['documents_out'] + sum(report['removed'].values())
  assert report['documents_out'] == len(kept)
  assert report['removed']['exact'] >= count('exact', kinds)


def test_each_filter_is_switchable_and_counted_once(tmp_path):
  text = ('lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\n\n'
          'The quick brown fox jumps over the lazy dog, and runs away.\n\n'
          'The quick brown fox jumps over the lazy dog, and runs away.\n\n'
          '$$$ ### @@@ %%% ^^^ &&& *** !!! ??? +++ ===\n\n'
          'A perfectly ordinary sentence about the weather today.\nBuy now: javascript is required.\n')
  path = tmp_path / 'c.txt'
  path.write_text(text)
  report = prepare.prepare([str(path)], str(tmp_path / 'a'), settings(), progress=False)
  assert report['removed'] == {'quality': 2, 'exact': 1, 'lines': 0, 'near': 0}
  kept = (tmp_path / 'a' / 'corpus.txt').read_text()
  assert 'javascript' not in kept and 'weather' in kept                 # the boilerplate line went
  off = prepare.prepare([str(path)], str(tmp_path / 'b'), settings(quality=False, exact=False, near=False,
                                                                    lines=False), progress=False)
  assert off['documents_out'] == off['documents_in'] == 5


def test_prepare_command_then_train_on_the_prepared_corpus(tmp_path, corpus):
  workdir = str(tmp_path / 'run')
  proc = run_cli('prepare', f'--config.data.path={corpus}', '--workdir', workdir)
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report['documents_in'] == report['documents_out'] + sum(report['removed'].values())
  assert os.path.exists(os.path.join(workdir, 'prepare_lengths.png'))
  run_cli('train', f'--config.data.path={corpus}', '--config.data.prepare.enabled=true', '--workdir', workdir,
          '--config.train.steps=2', '--config.model.num_layers=1', '--config.model.d_model=32',
          '--config.model.d_ff=64', '--config.model.num_heads=2', '--config.train.sample_tokens=0')
  assert read_metrics(workdir)[-1]['step'] == 2
  with open(os.path.join(workdir, 'prepare_report.json')) as f:
    assert json.load(f)['key'] == prepare.cache_key([corpus], config_lib.base_config().data.prepare)


def shingles(text, n=5):
  words = text.lower().split()
  return {' '.join(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))}


def jaccard(a, b):
  a, b = shingles(a), shingles(b)
  return len(a & b) / len(a | b)


def edited(text, target, salt):
  """`text` with words replaced, spread evenly and apart, until the word 5-shingle Jaccard with
  the original falls to `target`."""
  words = text.split(' ')
  inside = [i for i, w in enumerate(words) if '\n' not in w][2:]    # keep the lines as they are
  spread = inside[::6] + inside[3::6]
  for k, i in enumerate(spread):
    words[i] = f'zq{salt}x{k}'
    if jaccard(' '.join(words), text) <= target:
      break
  return ' '.join(words)


def test_near_duplicates_at_jaccard_08_are_removed_and_at_05_kept_by_the_near_filter(tmp_path):
  source = os.path.join(SHARED_DATA, 'tinyshakespeare', 'input.txt')
  if not os.path.exists(source):
    pytest.skip(f'{source} is absent: the shared data sets sit beside the repository in CI')
  with open(source) as f:
    lines = [l for l in f.read().splitlines() if l.strip()]
  docs = ['\n'.join(lines[i:i + LINES_PER_DOC]) for i in range(0, 60 * LINES_PER_DOC, LINES_PER_DOC)]
  order, kinds = [], []
  for d, text in enumerate(docs):
    order.append(text)
    kinds.append('original')
    if d % 3 < 2:      # two thirds get a copy: at ~0.8 of the original, or at ~0.5
      target = 0.8 if d % 3 == 0 else 0.5
      copy = edited(text, target, d)
      assert abs(jaccard(copy, text) - target) < 0.04, (d, jaccard(copy, text))
      order.append(copy)
      kinds.append(target)
  corpus = tmp_path / 'near.txt'
  corpus.write_text('\n\n'.join(order) + '\n')
  report = prepare.prepare([str(corpus)], str(tmp_path / 'out'), settings(), progress=False)
  with open(tmp_path / 'out' / 'provenance.jsonl') as f:
    kept_first_lines = {json.loads(line)['first_line'] for line in f}
  kept = [kinds[i] for i in range(len(order)) if i * (LINES_PER_DOC + 1) + 1 in kept_first_lines]
  assert kept.count('original') == 60
  assert kept.count(0.8) == 0 and kept.count(0.5) == 20
  assert report['removed']['near'] == 20 and report['removed']['lines'] == 0   # the near filter's work


def test_training_tokenises_the_kept_documents_from_the_sources(tmp_path, corpus):
  """Training writes no copy of the corpus: keep.bin says which documents the filters kept, and
  the token pipeline's workers read those from the sources. Its report is prepare's, and its
  tokens are the prepared corpus.txt's, on 1 and 2 workers."""
  with open(corpus) as f:
    lines = [l for l in f.read().splitlines() if l.strip()]
  docs = ['\n'.join(lines[i:i + 8]) for i in range(0, len(lines) - 8, 8)]
  half = len(docs) // 2
  (tmp_path / 'a.txt').write_text('\n\n'.join(docs[:half]) + '\n')
  (tmp_path / 'b.txt').write_text('\n\n'.join(docs[half:] + docs[:20]) + '\n')   # copies of a's: removed only
  paths = [str(tmp_path / 'a.txt'), str(tmp_path / 'b.txt')]                       # by state across files
  p = settings()
  full, report = prepare.prepared_corpus(paths, str(tmp_path / 'full'), p, progress=False)
  keep, trained = prepare.prepared_corpus(paths, str(tmp_path / 'train'), p, progress=False, write_corpus=False)
  assert not os.path.exists(tmp_path / 'train' / 'prepared' / 'corpus.txt')
  counts = ('documents_in', 'documents_out', 'words_in', 'words_out', 'removed')
  assert [trained[k] for k in counts] == [report[k] for k in counts] and report['removed']['exact'] >= 20
  assert 0 < report['documents_out'] < report['documents_in']
  with open(full) as f:
    prepared = f.read()
  tok = tokenizers.CharTokenizer.from_text([prepared, '\n'])
  tokenizers.save(tok, str(tmp_path / 'train'))
  select = prepare.selection(paths, keep, trained, p)
  for workers in (1, 2):
    out = shards.build(paths, tok, str(tmp_path / 'train'), tokenizers.fingerprint(tok), str(tmp_path / f'c{workers}'),
                       workers=workers, select=select)
    np.testing.assert_array_equal(shard_readers.ShardedTokens(out).to_array(), tok.encode(prepared))
    with open(os.path.join(out, shard_readers.INDEX)) as f:
      assert json.load(f)['documents'] == report['documents_out']


def test_a_line_longer_than_a_read_block_stays_one_line(tmp_path):
  """sources.py reads text in blocks of at most 1 MiB: a 3 MiB line is still one line of one
  paragraph, and the line numbers after it are the file's."""
  path = tmp_path / 'long.txt'
  text = 'first line\n' + 'x' * (3 << 20) + ' tail\n\nsecond paragraph\nend'
  path.write_text(text)
  docs = list(prepare.documents([str(path)]))
  assert [(d.first_line, d.last_line) for d in docs] == [(1, 2), (4, 5)]
  assert docs[0].text == 'first line\n' + 'x' * (3 << 20) + ' tail' and docs[1].text == 'second paragraph\nend'
