"""Corpora as they come: JSONL, Parquet, Arrow and `datasets` folders, .gz/.zst, streamed into
sharded token files on several processes; bad input is one line, exit 1, nothing written;
a killed build resumes to byte-identical shards; Hugging Face and tiktoken tokenizers."""

import base64
import gzip
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_cli
from ssl_jax.data import documents, shard_readers, shards, sources, tokenizer as tokenizers
from ssl_jax.data.text import DataError

WORDS = 'the old river runs past green hills under a wide grey sky while seven wizards quietly hex jolly boxes'.split()


def make_docs(n=300, seed=0):
  rng = np.random.default_rng(seed)
  return [' '.join(rng.choice(WORDS, rng.integers(5, 60))) + '.' for _ in range(n)]


def write_jsonl(path, docs, field='text'):
  with open(path, 'w') as f:
    f.writelines(json.dumps({field: d, 'id': i}) + '\n' for i, d in enumerate(docs))


@pytest.fixture(scope='module')
def docs():
  return make_docs()


def read_all(path, **kw):
  return list(sources.iter_documents(sources.resolve(str(path)), **kw))


def test_every_format_streams_the_same_documents(docs, tmp_path):
  pa = pytest.importorskip('pyarrow')
  pq = pytest.importorskip('pyarrow.parquet')
  zstd = pytest.importorskip('zstandard')
  write_jsonl(tmp_path / 'c.jsonl', docs)
  raw = (tmp_path / 'c.jsonl').read_bytes()
  (tmp_path / 'c.jsonl.gz').write_bytes(gzip.compress(raw))
  (tmp_path / 'c.jsonl.zst').write_bytes(zstd.ZstdCompressor().compress(raw))
  table = pa.table({'body': docs})
  pq.write_table(table, tmp_path / 'c.parquet', row_group_size=70)
  with pa.OSFile(str(tmp_path / 'c.arrow'), 'wb') as sink, pa.ipc.new_stream(sink, table.schema) as writer:
    writer.write_table(table, max_chunksize=50)
  # A `datasets` save_to_disk folder: state.json naming its .arrow files.
  saved = tmp_path / 'saved'
  saved.mkdir()
  os.link(tmp_path / 'c.arrow', saved / 'data-00000-of-00001.arrow')
  (saved / 'state.json').write_text(json.dumps({'_data_files': [{'filename': 'data-00000-of-00001.arrow'}]}))
  assert read_all(tmp_path / 'c.jsonl') == docs
  assert read_all(tmp_path / 'c.jsonl.gz') == docs and read_all(tmp_path / 'c.jsonl.zst') == docs
  assert read_all(tmp_path / 'c.parquet', text_field='body') == docs
  assert read_all(tmp_path / 'c.arrow', text_field='body') == docs
  assert read_all(saved, text_field='body') == docs
  # Cut into small byte ranges, a JSONL file still gives each line once, in order.
  units = sources.units([str(tmp_path / 'c.jsonl')], unit_bytes=997)
  assert len(units) > 10 and [d for u in units for d in sources.documents(u)] == docs
  # data.format overrides the extension; a text file is one document with a blank line after it.
  (tmp_path / 'c.data').write_bytes(raw)
  assert read_all(tmp_path / 'c.data', fmt='jsonl') == docs
  assert ''.join(read_all(tmp_path / 'c.data')) == raw.decode() + '\n\n'
  # BERT's documents: a row each, from any of these formats.
  bert_docs = documents.read_documents([str(tmp_path / 'c.jsonl.gz')]) + documents.read_documents(
      [str(tmp_path / 'c.parquet')], text_field='body')
  assert len(bert_docs) == 2 * len(docs) and bert_docs[0] == bert_docs[len(docs)] == [docs[0]]


def test_shards_equal_one_pass_on_any_number_of_workers(docs, tmp_path):
  write_jsonl(tmp_path / 'a.jsonl', docs[:150])
  write_jsonl(tmp_path / 'b.jsonl', docs[150:])
  paths = [str(tmp_path / 'a.jsonl'), str(tmp_path / 'b.jsonl')]
  tok = tokenizers.CharTokenizer.from_text(docs + ['\n'])
  tokenizers.save(tok, str(tmp_path))
  fp = tokenizers.fingerprint(tok)
  one = shards.build(paths, tok, str(tmp_path), fp, str(tmp_path / 'one'), workers=1, unit_bytes=2000)
  two = shards.build(paths, tok, str(tmp_path), fp, str(tmp_path / 'two'), workers=2, unit_bytes=2000)
  names = sorted(n for n in os.listdir(one) if n.endswith(('.bin', '.docs')))
  assert len(names) > 8 and names == sorted(n for n in os.listdir(two) if n.endswith(('.bin', '.docs')))
  for n in names:
    assert (open(os.path.join(one, n), 'rb').read() == open(os.path.join(two, n), 'rb').read()), n
  stream = shard_readers.ShardedTokens(one)
  expected = np.concatenate([tok.encode(d + '\n\n') for d in docs])
  assert stream.dtype == np.uint16 and np.array_equal(stream.to_array(), expected)
  index = json.load(open(os.path.join(one, shard_readers.INDEX)))
  assert index['documents'] == len(docs) and index['tokenizer'] == fp and len(index['sources']) == 2
  # Windows across shard boundaries, and slices of slices, read the right tokens.
  rows = np.array([[0, 1, 2], [len(stream) - 3, len(stream) - 2, len(stream) - 1]])
  assert np.array_equal(stream[rows], expected[rows])
  assert np.array_equal(stream[100:][5:50][np.arange(10)], expected[105:115])
  boundary = int(stream._ends[0])  # pylint: disable=protected-access
  starts = np.array([0, boundary - 4, boundary, len(stream) - 9])
  assert np.array_equal(stream.windows(starts, 9), expected[starts[:, None] + np.arange(9)])
  assert np.array_equal(stream[10:].windows(starts[:2], 9), expected[10 + starts[:2, None] + np.arange(9)])


KILL_SCRIPT = '''
import sys
sys.path.insert(0, {root!r})
from ssl_jax.data import shards, tokenizer
tok = tokenizer.load({work!r})
shards.build({paths!r}, tok, {work!r}, tokenizer.fingerprint(tok), {cache!r}, workers=1, unit_bytes=4000)
'''


def test_a_killed_build_resumes_to_identical_files(tmp_path):
  docs = make_docs(3000, seed=3)
  path = str(tmp_path / 'big.jsonl')
  write_jsonl(path, docs)
  work = str(tmp_path)
  tok = tokenizers.CharTokenizer.from_text(docs + ['\n'])
  tokenizers.save(tok, work)
  fp = tokenizers.fingerprint(tok)
  whole = shards.build([path], tok, work, fp, str(tmp_path / 'whole'), workers=1, unit_bytes=4000)
  cache = str(tmp_path / 'killed')
  script = KILL_SCRIPT.format(root=ROOT, work=work, paths=[path], cache=cache)
  proc = subprocess.Popen([sys.executable, '-c', script], start_new_session=True)
  target = shards.cache_dir_for([path], fp, cache, unit_bytes=4000)
  deadline = time.time() + 60
  while time.time() < deadline and len([n for n in os.listdir(target) if n.endswith('.json')]
                                       if os.path.isdir(target) else []) < 5:
    time.sleep(0.01)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  done_before = {n: os.path.getmtime(os.path.join(target, n)) for n in os.listdir(target) if n.endswith('.json')}
  assert 5 <= len(done_before) < len(os.listdir(whole)) // 3
  assert not os.path.exists(os.path.join(target, shard_readers.INDEX))
  resumed = shards.build([path], tok, work, fp, cache, workers=1, unit_bytes=4000)
  assert resumed == target
  for n, mtime in done_before.items():     # complete shards were not redone
    assert os.path.getmtime(os.path.join(target, n)) == mtime
  for n in os.listdir(whole):
    if n != shard_readers.INDEX:
      assert open(os.path.join(whole, n), 'rb').read() == open(os.path.join(target, n), 'rb').read(), n


@pytest.mark.parametrize('name,content,expected', [
    ('bad.jsonl', '{"text": "fine"}\n{"text": broken\n', 'bad.jsonl:2: not JSON'),
    ('nofield.jsonl', '{"text": "fine"}\n{"text": "also"}\n{"body": "no"}\n', "nofield.jsonl:3: no 'text' text field"),
    ('corrupt.jsonl.gz', gzip.compress(''.join(json.dumps({'text': d}) + '\n' for d in make_docs(2000)).encode(),
                                       mtime=0)[:20000],
     'corrupt.jsonl.gz: corrupt gz data'),
    ('nocolumn.parquet', None, "nocolumn.parquet: no column 'text'"),
], ids=['bad.jsonl', 'nofield.jsonl', 'corrupt.jsonl.gz', 'nocolumn.parquet'])   # one name on every xdist worker
def test_bad_input_is_one_line_exit_1_and_nothing_written(tmp_path, name, content, expected):
  path = tmp_path / name
  if content is None:
    pa = pytest.importorskip('pyarrow')
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    pq.write_table(pa.table({'body': ['a b c'] * 10}), path)
  elif isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text(content)
  work = tmp_path / 'work'
  work.mkdir()
  tokenizer = 'char' if name != 'nofield.jsonl' else 'sentencepiece'
  proc = run_cli('train', '--config', os.path.join(ROOT, 'experiments', 'gpt.py') + ':gpt:nano',
                 f'--config.data.path={path}', f'--config.data.tokenizer={tokenizer}', '--config.model.vocab_size=64',
                 '--config.train.steps=1', '--workdir', str(work), check=False)
  # One line of ours (libtpu, where installed, may print its own warnings before it).
  errors = [line for line in proc.stderr.strip().splitlines() if line.startswith('error: ')]
  assert proc.returncode == 1 and len(errors) == 1 and expected in errors[0], proc.stderr[-3000:]
  assert proc.stderr.strip().endswith(errors[0]) and 'Traceback' not in proc.stderr
  assert os.listdir(work) == []


def byte_level_bpe(texts, vocab_size=320):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=import-outside-toplevel
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=['<|endoftext|>'],
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  return tok


def tiktoken_file(hf_tok, path):
  """The BPE's tokens as raw bytes, one `base64 rank` a line (ranks are the BPE's ids)."""
  byte_of = {}
  n = 0
  for b in range(256):   # GPT-2's printable stand-ins for bytes (its bytes_to_unicode table)
    if chr(b).isprintable() and chr(b) != ' ' and not (127 <= b <= 160 or b == 173):
      byte_of[chr(b)] = b
    else:
      byte_of[chr(256 + n)] = b
      n += 1
  specials = {t.content for t in hf_tok.get_added_tokens_decoder().values()}
  with open(path, 'w') as f:
    for token, rank in sorted(hf_tok.get_vocab().items(), key=lambda kv: kv[1]):
      if token not in specials:
        f.write(f'{base64.b64encode(bytes(byte_of[c] for c in token)).decode()} {rank}\n')


def test_hugging_face_and_tiktoken_tokenizers_from_local_files(docs, tmp_path):
  pytest.importorskip('tiktoken')
  hf_tok = byte_level_bpe(docs)
  hf_path = str(tmp_path / 'tokenizer.json')
  hf_tok.save(hf_path)
  tik_path = str(tmp_path / 'mine.tiktoken')
  tiktoken_file(hf_tok, tik_path)
  eot = hf_tok.token_to_id('<|endoftext|>')
  data = type('Data', (), {'tiktoken_pattern': 'gpt2', 'tiktoken_special_tokens': f'<|endoftext|>:{eot}'})()
  hf = tokenizers.build(hf_path, None, 0, data=data)
  tik = tokenizers.build(tik_path, None, 0, data=data)
  assert (hf.kind, tik.kind) == ('huggingface', 'tiktoken')
  text = 'The old river, 42 grey hills... while wizards hex!\n\n  jolly boxes<|endoftext|>'
  assert hf.encode(text).tolist() == hf_tok.encode(text).ids == tik.encode(text).tolist()
  assert hf.decode(hf.encode(text)) == text == tik.decode(tik.encode(text))
  assert tik.piece_id('<|endoftext|>') == eot == hf.piece_id('<|endoftext|>')
  # Saved in a workdir and loaded back, each is the same tokenizer (same fingerprint).
  for tok in (hf, tik):
    work = str(tmp_path / tok.kind)
    tokenizers.save(tok, work)
    again = tokenizers.load(work)
    assert tokenizers.fingerprint(again) == tokenizers.fingerprint(tok) and again.encode(text).tolist() == \
        tok.encode(text).tolist()
    tokenizers.check_matches(again, tik_path if tok.kind == 'tiktoken' else hf_path, work, data)
  # GPT-2's own files (vocab.json + merges.txt, as OpenAI's release and older transformers
  # checkpoints ship them) load as the same byte-level BPE.
  gpt2_files = tmp_path / 'gpt2_files'
  gpt2_files.mkdir()
  hf_tok.model.save(str(gpt2_files))
  assert sorted(os.listdir(gpt2_files)) == ['merges.txt', 'vocab.json']
  from_files = tokenizers.load(str(gpt2_files))
  assert from_files.kind == 'huggingface' and from_files.encode(text).tolist() == hf.encode(text).tolist()
  assert from_files.decode(from_files.encode(text)) == text
  with pytest.raises(Exception, match='tiktoken_special_tokens'):
    tokenizers.build(tik_path, None, 0, data=type('D', (), {'tiktoken_pattern': 'gpt2',
                                                            'tiktoken_special_tokens': 'nocolon'})())


def test_sentencepiece_trains_on_a_bounded_sample(docs, tmp_path):
  paths = []
  for i in range(3):
    paths.append(str(tmp_path / f'{i}.jsonl'))
    write_jsonl(paths[-1], make_docs(2000, seed=i))
  budget = 30_000
  sample = list(sources.sample(paths, budget, text_field='text'))
  assert sum(len(t) for t in sample) <= budget and len({t for t in sample} & set(make_docs(2000, seed=2))) > 0
  with pytest.raises(DataError, match='empty corpus'):
    from ssl_jax.data.corpus import training_texts  # pylint: disable=import-outside-toplevel
    (tmp_path / 'empty.jsonl').write_text('{"text": "  "}\n')
    config = type('C', (), {'data': type('D', (), {'tokenizer': 'sentencepiece', 'tokenizer_sample_mb': 1.0,
                                                    'format': '', 'text_field': 'text'})()})()
    list(training_texts(config, [str(tmp_path / 'empty.jsonl')]))


def test_prepare_reads_compressed_and_jsonl_sources(docs, tmp_path):
  from ssl_jax.data import prepare  # pylint: disable=import-outside-toplevel
  text = '\n\n'.join(docs[:20]) + '\n'
  (tmp_path / 'c.txt.gz').write_bytes(gzip.compress(text.encode()))
  write_jsonl(tmp_path / 'c.jsonl', docs[:20])
  for name in ('c.txt.gz', 'c.jsonl'):
    found = list(prepare.documents([str(tmp_path / name)]))
    assert [d.text for d in found] == docs[:20], name
  (tmp_path / 'bad.txt.gz').write_bytes(gzip.compress(b'fine\n\xff\xfe not utf-8\n'))
  with pytest.raises(DataError, match='bad.txt.gz:2: not UTF-8'):
    list(prepare.documents([str(tmp_path / 'bad.txt.gz')]))


def test_fsspec_urls(docs):
  fsspec = pytest.importorskip('fsspec')
  fs = fsspec.filesystem('memory')
  for i in range(2):
    with fs.open(f'/corpus/part-{i}.jsonl', 'w') as f:
      f.writelines(json.dumps({'text': d}) + '\n' for d in docs[i * 10:(i + 1) * 10])
  paths = sources.resolve('memory://corpus/*.jsonl')
  assert paths == ['memory:///corpus/part-0.jsonl', 'memory:///corpus/part-1.jsonl']
  assert list(sources.iter_documents(paths)) == docs[:20]
  assert sources.stat(paths[0])['size'] > 0
