"""Property-based tests: the config override parser and the data readers, given anything,
either work or raise their documented error (ConfigError, DataError), never another."""

import os
import tempfile

from hypothesis import HealthCheck, given, settings, strategies as st

from ssl_jax import config as config_lib
from ssl_jax.data import documents, labelled, squad, text
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


@SETTINGS
@given(data=BYTES)
def test_text_reader(data):
  result = _with_file(data, '.txt', text.read_text)
  assert result is None or isinstance(result, str)


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
