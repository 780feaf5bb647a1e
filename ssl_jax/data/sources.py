"""Corpus sources, streamed: text, JSONL, Parquet and Arrow files (each optionally .gz or .zst),
Hugging Face `datasets` folders written by `save_to_disk`, local or behind an fsspec URL.

  text      the whole file is one document (files are joined by a blank line)
  jsonl     one JSON object a line; its `data.text_field` (default `text`) is a document
  parquet   that column of every row group (pyarrow)
  arrow     that column of an Arrow IPC file or stream (what `datasets` writes)
The format follows the extension (after .gz / .zst), or `data.format`. A folder holding a
`datasets` save (state.json, or dataset_dict.json: its `train` split) stands for its .arrow
files. gs://, s3://, ... paths go through fsspec (its filesystem package installed by the user).

A corpus is cut into `Unit`s, each read on its own (by one worker of the token pipeline):
a byte range of an uncompressed local text or JSONL file (starting at a line start), a
Parquet row group, or a whole compressed, remote or Arrow file. Units depend only on the
files and `unit_bytes`, so the shards built from them do too. Nothing reads a file or a text
line whole: text comes in pieces of about `PIECE_BYTES`, whole lines but for a longer line's.

Bad input is a DataError naming the file and the line (or row group): a line that is not a
JSON object or lacks the field, a corrupt compressed stream, a Parquet file without the column.
"""

import codecs
import dataclasses
import functools
import glob
import gzip
import io
import json
import os
import zlib
from typing import Iterator, List, Sequence, Tuple

from ssl_jax.data.text import DataError, embedded_corpus_paths

FORMATS = ('text', 'jsonl', 'parquet', 'arrow')
EXTENSIONS = {'.jsonl': 'jsonl', '.json': 'jsonl', '.ndjson': 'jsonl', '.parquet': 'parquet', '.arrow': 'arrow'}
COMPRESSIONS = ('.gz', '.zst')
PIECE_BYTES = 1 << 20          # text documents are read (and tokenised) in pieces of whole lines this big


@dataclasses.dataclass(frozen=True)
class Unit:
  """One independently readable part of a source file."""
  path: str
  format: str
  start: int = 0               # byte range [start, end) of a splittable file; row group of a Parquet file
  end: int = -1                # -1: to the end
  last: bool = True            # the file's last unit (a text file's separator follows it)


def is_url(path: str) -> bool:
  return '://' in path


def format_of(path: str, override: str = '') -> str:
  if override:
    if override not in FORMATS:
      raise DataError(f'data.format={override!r}: expected one of {", ".join(FORMATS)} (or empty: by extension)')
    return override
  stem = path
  for ext in COMPRESSIONS:
    if stem.endswith(ext):
      stem = stem[:-len(ext)]
  return EXTENSIONS.get(os.path.splitext(stem)[1].lower(), 'text')


def compression_of(path: str) -> str:
  return next((ext for ext in COMPRESSIONS if path.endswith(ext)), '')


def resolve(spec: str, key: str = 'data.path') -> List[str]:
  """Files named by a comma-separated list of paths, globs, URLs and `datasets` folders, in a stable order."""
  if not spec:
    return embedded_corpus_paths()
  paths = []
  for part in [p.strip() for p in spec.split(',') if p.strip()]:
    if is_url(part):
      matches = _remote_glob(part)
    else:
      matches = sorted(glob.glob(os.path.expanduser(part), recursive=True))
      expanded = []
      for m in matches:
        if os.path.isdir(m) and _is_dataset_dir(m):
          expanded.extend(dataset_files(m))
        elif os.path.isfile(m):
          expanded.append(m)
      matches = expanded
    if not matches:
      raise DataError(f'{key}: no file matches {part!r}')
    paths.extend(matches)
  return paths


def _remote_glob(url: str) -> List[str]:
  try:
    import fsspec  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise DataError(f'{url}: reading URLs needs fsspec (pip install fsspec and the filesystem\'s package)') from None
  try:
    fs, path = fsspec.core.url_to_fs(url)
    found = sorted(fs.glob(path)) if any(c in path for c in '*?[') else ([path] if fs.exists(path) else [])
  except ImportError as e:
    raise DataError(f'{url}: {e}') from None
  protocol = url.split('://', 1)[0]
  return [p if is_url(p) else f'{protocol}://{p}' for p in found]


def _is_dataset_dir(path: str) -> bool:
  return any(os.path.exists(os.path.join(path, f)) for f in ('state.json', 'dataset_dict.json'))


def dataset_files(path: str) -> List[str]:
  """The .arrow files of a `datasets` save_to_disk folder (a DatasetDict: its train split)."""
  if os.path.exists(os.path.join(path, 'dataset_dict.json')):
    with open(os.path.join(path, 'dataset_dict.json')) as f:
      splits = json.load(f).get('splits', [])
    if 'train' not in splits:
      raise DataError(f'{path}: a DatasetDict without a train split (splits: {splits}); name a split\'s folder')
    path = os.path.join(path, 'train')
  state_path = os.path.join(path, 'state.json')
  try:
    with open(state_path) as f:
      files = [d['filename'] for d in json.load(f)['_data_files']]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DataError(f'{state_path}: not a datasets save_to_disk state ({e})') from None
  return [os.path.join(path, name) for name in files]


def stat(path: str) -> dict:
  """Size and modification time (what the token cache is keyed by)."""
  if is_url(path):
    import fsspec  # pylint: disable=import-outside-toplevel
    fs, p = fsspec.core.url_to_fs(path)
    info = fs.info(p)
    return {'path': path, 'size': int(info.get('size') or 0),
            'mtime': str(info.get('mtime') or info.get('updated') or info.get('LastModified') or info.get('etag', ''))}
  st = os.stat(path)
  return {'path': os.path.abspath(path), 'size': st.st_size, 'mtime': st.st_mtime_ns}


def units(paths: Sequence[str], fmt: str = '', unit_bytes: int = 64 << 20, split_text: bool = True) -> List[Unit]:
  """The corpus cut into independently readable units, in corpus order (a text file whole
  unless `split_text`: BERT's documents in it may span any byte range)."""
  out = []
  for path in paths:
    kind = format_of(path, fmt)
    if kind == 'parquet':
      groups = _parquet(path).num_row_groups
      out.extend(Unit(path, kind, g, g + 1, g == groups - 1) for g in range(groups))
    elif kind in ('text', 'jsonl') and not compression_of(path) and not is_url(path) and (split_text or kind != 'text'):
      size = os.path.getsize(path)
      starts = list(range(0, max(size, 1), unit_bytes))
      out.extend(Unit(path, kind, s, min(s + unit_bytes, size), s + unit_bytes >= size) for s in starts)
    else:
      out.append(Unit(path, kind))
  return out


def documents(unit: Unit, text_field: str = 'text', separator: bool = True) -> Iterator[str]:
  """The texts of a unit, in order: JSONL/Parquet/Arrow rows, or pieces of a text file
  (whole lines, the file's last piece followed by the blank line that separates files,
  unless not `separator`)."""
  if unit.format == 'jsonl':
    yield from _jsonl(unit, text_field)
  elif unit.format == 'parquet':
    yield from _parquet_rows(unit, text_field)
  elif unit.format == 'arrow':
    yield from _arrow_rows(unit, text_field)
  else:
    yield from _text_pieces(unit, separator)


def iter_documents(paths: Sequence[str], fmt: str = '', text_field: str = 'text',
                   separator: bool = True) -> Iterator[str]:
  for unit in units(paths, fmt):
    yield from documents(unit, text_field, separator)


def sample(paths: Sequence[str], budget_bytes: int, fmt: str = '', text_field: str = 'text') -> Iterator[str]:
  """A bounded sample streamed from the corpus: the first budget/len(paths) bytes of text of
  every file (a tokenizer's training text), so every file is represented."""
  per_file = max(1, budget_bytes // max(1, len(paths)))
  for path in paths:
    taken = 0
    for text in iter_documents([path], fmt, text_field):
      yield text[:per_file - taken]
      taken += len(text)
      if taken >= per_file:
        break


# Readers.

def _open_binary(path: str):
  """A binary stream of the file's bytes, decompressed (.gz, .zst)."""
  if is_url(path):
    import fsspec  # pylint: disable=import-outside-toplevel
    raw = io.BufferedReader(fsspec.open(path, 'rb').open())   # its readline takes a size limit
  else:
    raw = open(path, 'rb')  # pylint: disable=consider-using-with
  compression = compression_of(path)
  if compression == '.gz':
    return gzip.GzipFile(fileobj=raw)
  if compression == '.zst':
    try:
      import zstandard  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise DataError(f'{path}: reading .zst needs zstandard (pip install zstandard)') from None
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
  return raw


def _corrupt(unit: Unit, error: Exception, line: int) -> DataError:
  where = f'line {line}' if line else 'its start'
  return DataError(f'{unit.path}: corrupt {compression_of(unit.path)[1:] or "file"} data near {where} '
                   f'({type(error).__name__}: {str(error)[:120]})')


def _lines(unit: Unit, limit: int = -1) -> Iterator[tuple]:
  """(line number or None, bytes) of the unit's lines: those that start in [start, end). With a
  `limit`, a longer line comes in parts of at most that many bytes (all but its last part
  without a newline), so that no line is held whole."""
  try:
    import zstandard  # pylint: disable=import-outside-toplevel
    zstd_errors = (zstandard.ZstdError,)
  except ImportError:
    zstd_errors = ()
  with _open_binary(unit.path) as f:
    if unit.start > 0:
      f.seek(unit.start - 1)
      while (skipped := f.readline(1 << 20)) and not skipped.endswith(b'\n'):
        pass              # the rest of the line holding start - 1 belongs to the unit before
    position, n = (f.tell() if unit.start else 0), (None if unit.start else 1)
    reader = io.BufferedReader(f, 1 << 20) if compression_of(unit.path) else f
    within = False        # inside a line begun in the range
    while unit.end < 0 or position < unit.end or within:
      try:
        line = reader.readline(limit)
      except (OSError, EOFError, zlib.error, *zstd_errors) as e:   # gzip raises BadGzipFile (an OSError)
        raise _corrupt(unit, e, n or 0) from None
      if not line:
        break
      position += len(line)
      yield n, line
      within = not line.endswith(b'\n')
      if not within:
        n = None if n is None else n + 1


def _line_number(unit: Unit, k: int) -> int:
  """The file's line number of the unit's k-th line (counted only when an error is reported):
  the newlines before the unit's first line, plus k."""
  if unit.start == 0:
    return k
  count, remaining = 0, unit.start - 1
  with open(unit.path, 'rb') as f:
    while remaining > 0:
      block = f.read(min(remaining, 1 << 24))
      if not block:
        break
      count += block.count(b'\n')
      remaining -= len(block)
  return count + 1 + k


def _where(unit: Unit, n, k: int) -> str:
  return f'{unit.path}:{n if n is not None else _line_number(unit, k)}'


def jsonl_rows(path: str) -> Iterator[Tuple[str, dict]]:
  """('path:line', object) of every non-blank line of a JSONL file, local or a URL, .gz or .zst:
  the one reader of the JSON lines a user gives (corpora, few-shot tasks, articles). A line
  that is not a JSON object, or holds text that is not Unicode (a lone surrogate escaped as
  \\ud800), is a DataError naming the file and the line."""
  for where, row in _objects(Unit(path, 'jsonl'), whole_rows=True):
    yield where(), row


def _objects(unit: Unit, whole_rows: bool = False) -> Iterator[tuple]:
  """(() -> 'path:line', object) of the unit's JSON lines; with `whole_rows` all their text checked."""
  for k, (n, line) in enumerate(_lines(unit), 1):
    where = functools.partial(_where, unit, n, k)
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise DataError(f'{where()}: not JSON ({str(e)[:100]})') from None
    if not isinstance(row, dict):
      raise DataError(f'{where()}: expected a JSON object, not {type(row).__name__}')
    if whole_rows and b'\\u' in line:
      _check_unicode(json.dumps(row, ensure_ascii=False), where)
    yield where, row


def _check_unicode(text: str, where) -> None:
  """JSON's \\u escapes can spell half a surrogate pair, which no UTF-8 encoder accepts."""
  try:
    text.encode('utf-8')
  except UnicodeEncodeError as e:
    raise DataError(f'{where()}: not Unicode text (a lone surrogate {text[e.start]!r} at character '
                    f'{e.start})') from None


def _jsonl(unit: Unit, field: str) -> Iterator[str]:
  for where, row in _objects(unit):
    text = row.get(field)
    if not isinstance(text, str):
      raise DataError(f'{where()}: no {field!r} text field (set data.text_field)')
    if not text.isascii():     # (cheap) only text beyond ASCII can hold a surrogate
      _check_unicode(text, where)
    yield text


def _text_pieces(unit: Unit, separator: bool = True) -> Iterator[str]:
  """Pieces of about PIECE_BYTES, read in blocks of at most that: whole lines, except that a
  longer line is cut after its last space (or newline, or anywhere) within a block, so that
  what is held does not grow with a line's length."""
  decoder = codecs.getincrementaldecoder('utf-8')()
  piece, size, k = [], 0, 1
  for n, part in _lines(unit, PIECE_BYTES):
    if b'\x00' in part:
      raise DataError(f'{_where(unit, n, k)}: looks like a binary file, not text')
    try:
      piece.append(decoder.decode(part))
    except UnicodeDecodeError as e:
      raise DataError(f'{_where(unit, n, k)}: not UTF-8 text ({e.reason})') from None
    size += len(part)
    k += part.endswith(b'\n')
    if size >= PIECE_BYTES:
      text = ''.join(piece)
      cut = len(text) if text.endswith('\n') else max(text.rfind(' '), text.rfind('\n')) + 1 or len(text)
      yield text[:cut]
      piece, size = [text[cut:]], len(text[cut:].encode())   # bytes, as `size` counts
  try:
    decoder.decode(b'', final=True)
  except UnicodeDecodeError as e:
    raise DataError(f'{_where(unit, n, k)}: not UTF-8 text ({e.reason})') from None
  if unit.last and separator:
    piece.append('\n\n')
  if any(piece):
    yield ''.join(piece)


def _parquet(path: str):
  try:
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise DataError(f'{path}: reading Parquet needs pyarrow (pip install pyarrow)') from None
  try:
    if is_url(path):
      import fsspec  # pylint: disable=import-outside-toplevel
      return pq.ParquetFile(fsspec.open(path, 'rb').open())
    return pq.ParquetFile(path)
  except Exception as e:  # pylint: disable=broad-except   (pyarrow raises ArrowInvalid, OSError, ...)
    raise DataError(f'{path}: not a readable Parquet file ({str(e)[:160]})') from None


def _column(table, path: str, field: str, where: str):
  if field not in table.column_names:
    raise DataError(f'{path}: no column {field!r} (columns: {", ".join(table.column_names[:8])}); set data.text_field')
  column = table.column(field)
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
    raise DataError(f'{path}: {where} column {field!r} holds {column.type}, not text')
  return column


def _parquet_rows(unit: Unit, field: str) -> Iterator[str]:
  pf = _parquet(unit.path)
  if field not in pf.schema_arrow.names:
    raise DataError(f'{unit.path}: no column {field!r} (columns: {", ".join(pf.schema_arrow.names[:8])}); '
                    'set data.text_field')
  for group in range(unit.start, unit.end):
    try:
      table = pf.read_row_group(group, columns=[field])
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f'{unit.path}: row group {group} does not read ({str(e)[:160]})') from None
    for text in _column(table, unit.path, field, f'row group {group}:').to_pylist():
      if text is not None:
        yield text


def _arrow_rows(unit: Unit, field: str) -> Iterator[str]:
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  try:
    source = pa.memory_map(unit.path) if not is_url(unit.path) else pa.py_buffer(_open_binary(unit.path).read())
    try:
      reader = pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
      reader = pa.ipc.open_file(source)
      batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
      batches = iter(reader)
    for b, batch in enumerate(batches):
      for text in _column(batch, unit.path, field, f'record batch {b}:').to_pylist():
        if text is not None:
          yield text
  except (pa.ArrowException, OSError) as e:     # a bad stream's framing is an OSError
    raise DataError(f'{unit.path}: not a readable Arrow file ({str(e)[:160]})') from None
