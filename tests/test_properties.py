"""Property-based tests: the config override parser and the data readers (ssl_jax/data/sources.py's
text, JSONL and Parquet, plain and compressed, read whole or in units and pieces of any size;
documents, TSV, CoNLL-U, SQuAD, images), given anything, either work or raise their documented
error (ConfigError, DataError), never another."""

import contextlib
import gzip
import json
import os
import re
import tempfile

from hypothesis import HealthCheck, given, settings, strategies as st

from ssl_jax import config as config_lib
import zstandard

from ssl_jax.data import documents, labelled, sources, squad
from ssl_jax.data.text import DataError

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BASE = config_lib.base_config()
BASE.lock()
KEYS = []


def _keys(node, prefix=''):
  for k, v in node.items():
    if hasattr(v, 'items'):
      _keys(v, f'{prefix}{k}.')
    else:
      KEYS.append(f'{prefix}{k}')


_keys(BASE)
KEY = st.one_of(st.sampled_from(KEYS), st.text(max_size=30),
                st.lists(st.sampled_from(['model', 'train', 'data', 'd_model', 'x', '', 'mesh']), max_size=4)
                .map('.'.join))
VALUE = st.one_of(st.text(max_size=40), st.integers().map(str), st.floats().map(str),
                  st.sampled_from(['true', 'False', '[1, 2]', '(1,', '((((((', '1e400', '-0', 'None', '{}']))


@SETTINGS
@given(key=KEY, value=VALUE)
def test_override_sets_the_value_or_names_the_key(key, value):
  config = config_lib.base_config()
  config.lock()
  try:
    config_lib.override(config, key, value)
  except config_lib.ConfigError as e:
    # The whole key, quoted or as the flag that set it (a bare `key in` passed for any one letter).
    assert f'unknown config key {key!r}' in str(e) or str(e).startswith(f'--config.{key}={value}: ')
    return
  node = config
  for part in key.split('.'):
    node = node[part]
  assert type(node) is type(BASE[key.split('.')[0]] if '.' not in key else _get(BASE, key))   # type kept


def _get(config, key):
  for part in key.split('.'):
    config = config[part]
  return config


def _with_file(data: bytes, suffix: str, read):
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, 'input' + suffix)
    with open(path, 'wb') as f:
      f.write(data)
    try:
      return read(path)
    except DataError:
      return None


LINES = st.lists(st.one_of(st.text(max_size=60), st.sampled_from(
    ['', '# newdoc id = a', '# text = Hello there.', '1\tHello\thello\tINTJ\t_\t_\t0\troot\t_\t_',
     'sentence\tlabel', 'good film\t1', 'x\ty\tz', '\t', '# sent_id = 1'])), max_size=30)
BYTES = st.one_of(st.binary(max_size=400), LINES.map(lambda ls: '\n'.join(ls).encode('utf-8', 'surrogatepass')))


def _compressed(data: bytes, compression: str) -> bytes:
  if compression == '.gz':
    return gzip.compress(data)
  if compression == '.zst':
    return zstandard.ZstdCompressor().compress(data)
  return data


def _read_units(path: str, unit_bytes: int, **kwargs):
  """Every unit of the file read on its own, in order (as the token pipeline's workers read them)."""
  return [text for unit in sources.units([path], unit_bytes=unit_bytes)
          for text in sources.documents(unit, **kwargs)]


@contextlib.contextmanager
def _pieces_of(size: int):
  saved, sources.PIECE_BYTES = sources.PIECE_BYTES, size
  try:
    yield
  finally:
    sources.PIECE_BYTES = saved


COMPRESSION = st.sampled_from(['', '.gz', '.zst'])


@SETTINGS
@given(data=BYTES, compression=COMPRESSION, unit_bytes=st.integers(1, 64), piece=st.integers(1, 64))
def test_text_reader(data, compression, unit_bytes, piece):
  """Text, whole or in units and pieces of any size, reads back as the file's UTF-8 text, or
  is a DataError naming the file and a line."""
  with tempfile.TemporaryDirectory() as d, _pieces_of(piece):
    path = os.path.join(d, 'input.txt' + compression)
    with open(path, 'wb') as f:
      f.write(_compressed(data, compression))
    try:
      expected = data.decode('utf-8')
      assert '\x00' not in expected
    except (UnicodeDecodeError, AssertionError):
      expected = None
    try:
      texts = _read_units(path, unit_bytes, separator=False)
    except DataError as e:
      assert expected is None and re.match(re.escape(path) + r':\d+: ', str(e)), str(e)
      return
    assert expected is not None and ''.join(texts) == expected
    assert all(len(t.encode()) <= 2 * piece + 3 for t in texts[:-1])      # bounded, whatever the lines


ROW = st.one_of(st.dictionaries(st.sampled_from(['text', 'body', 'id']), st.one_of(
    st.text(max_size=30), st.integers(), st.none()), max_size=3).map(json.dumps),
    st.sampled_from(['', '  ', '5', '"text"', '[1]', '{"text": "a"', '{"text": "\\ud800"}', 'null']),
    st.text(max_size=20))


def _expected_jsonl(lines):
  """(texts, or the number of the first bad line) of JSONL lines, by the rules in sources.py."""
  texts = []
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:
      return n
    if not isinstance(row, dict) or not isinstance(row.get('text'), str):
      return n
    try:
      row['text'].encode('utf-8')
    except UnicodeEncodeError:
      return n
    texts.append(row['text'])
  return texts


@SETTINGS
@given(lines=st.lists(ROW, max_size=12), compression=COMPRESSION, unit_bytes=st.integers(1, 80))
def test_jsonl_reader(lines, compression, unit_bytes):
  """The texts of the good lines, whole or in units, or a DataError naming the first bad line."""
  expected = _expected_jsonl(''.join(line + '\n' for line in lines).split('\n')[:-1])   # a row may hold a newline
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, 'input.jsonl' + compression)
    with open(path, 'wb') as f:
      f.write(_compressed(''.join(line + '\n' for line in lines).encode('utf-8', 'surrogatepass'), compression))
    try:
      texts = _read_units(path, unit_bytes)
    except DataError as e:
      assert str(e).startswith(f'{path}:{expected}: '), (str(e), expected)
      return
    assert texts == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(column=st.lists(st.one_of(st.none(), st.text(max_size=20)), max_size=30), group=st.integers(1, 8),
       name=st.sampled_from(['text', 'body']), kind=st.sampled_from(['string', 'large_string', 'int64']))
def test_parquet_reader(column, group, name, kind):
  """A text column's non-null values in order, read row group by row group, or a DataError that
  names the file (a missing or non-text column)."""
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  values = [None if v is None else len(v) for v in column] if kind == 'int64' else column
  values = [v.encode('utf-8', 'surrogatepass').decode('utf-8', 'replace') if isinstance(v, str) else v for v in values]
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, 'input.parquet')
    pq.write_table(pa.table({name: pa.array(values, type=getattr(pa, kind)()), 'id': list(range(len(values)))}),
                   path, row_group_size=group)
    try:
      texts = _read_units(path, 1)
    except DataError as e:
      assert str(e).startswith(f'{path}: ') and (name != 'text' or kind == 'int64'), str(e)
      return
    assert name == 'text' and kind != 'int64' and texts == [v for v in values if v is not None]


@SETTINGS
@given(data=st.binary(max_size=300), suffix=st.sampled_from(['.parquet', '.txt.gz', '.jsonl.zst', '.arrow']))
def test_corrupt_files_are_data_errors(data, suffix):
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, 'input' + suffix)
    with open(path, 'wb') as f:
      f.write(data)
    try:
      list(sources.iter_documents([path]))
    except DataError as e:
      assert str(e).startswith(path), str(e)


@SETTINGS
@given(lines=LINES)
def test_document_readers(lines):
  body = '\n'.join(lines)
  for read in (documents.read_plain, documents.read_conllu):
    try:
      docs = read(body)
    except DataError:
      continue
    assert all(isinstance(sentence, str) for doc in docs for sentence in doc)


@SETTINGS
@given(data=BYTES)
def test_labelled_readers(data):
  rows = _with_file(data, '.tsv', labelled.read_tsv)
  if rows is not None:
    texts, pairs, labels = rows
    assert len(texts) == len(pairs) == len(labels) > 0
  tagged = _with_file(data, '.conllu', labelled.read_conllu_tags)
  if tagged is not None:
    assert all(len(words) == len(tags) for words, tags in tagged)


JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
                       lambda inner: st.one_of(st.lists(inner, max_size=4),
                                               st.dictionaries(st.sampled_from(
                                                   ['data', 'paragraphs', 'context', 'qas', 'id', 'question',
                                                    'answers', 'text', 'answer_start', 'is_impossible']),
                                                   inner, max_size=5)), max_leaves=20)


@SETTINGS
@given(value=st.one_of(JSONISH, st.binary(max_size=100)))
def test_squad_reader(value):
  import json  # pylint: disable=import-outside-toplevel
  data = value if isinstance(value, bytes) else json.dumps(value).encode()
  examples = _with_file(data, '.json', squad.read_squad)
  assert examples is None or len(examples) > 0


MAGIC = st.sampled_from([b'', b'\x89PNG\r\n\x1a\n', b'GIF89a', b'BM', b'\xff\xd8\xff', b'RIFF\x00\x00\x00\x00WEBP'])


@SETTINGS
@given(head=MAGIC, body=st.binary(max_size=300))
def test_image_decoder(head, body):
  from ssl_jax.data import images  # pylint: disable=import-outside-toplevel
  image = _with_file(head + body, '.png', lambda path: images._decode(path, 8))  # pylint: disable=protected-access
  assert image is None or (image.shape == (8, 8, 3) and image.dtype.name == 'uint8')
