"""The token cache: a corpus tokenised once, on every core, into sharded token files.

  cache/tokens-<key>/shard-00000.bin     the tokens of one source unit (sources.Unit), raw
                                         uint16 where the vocabulary fits, else uint32
                     shard-00000.json    written once its .bin is complete: tokens, documents
                     shard-00000.docs    int64 end offset (in the shard) of each document that
                                         ends there (a text file is one document)
                     index.json          written last: the tokenizer's fingerprint, the sources'
                                         sizes and modification times, the shards' token and
                                         document counts
The key hashes the sources (path, size, mtime), the tokenizer's fingerprint, data.format,
data.text_field and the unit size, so a changed input or tokenizer builds a new cache.

BERT's documents are a second kind of cache, `cache/sentences-<key>/`, each sentence
tokenised on its own (ssl_jax/data/documents.py reads the documents; a text file is one
unit, as its documents may span any byte range):
                     shard-00000.bin     the sentences' tokens, one after another
                     shard-00000.sents   int64 end offset (in the shard's tokens) of each sentence
                     shard-00000.docs    int64 end (in the shard's sentences) of each document
                     shard-00000.pairs   int64 the shard's documents of 2+ sentences (IsNext pairs)
`ShardedDocuments` reads them memory-mapped: an example touches the offsets of its two
documents and the tokens of its sentences, nothing else.

Each unit is read and tokenised by one worker process in bounded memory (text in pieces,
tokens written as they come), so memory does not grow with the corpus. Shards are a
function of the sources alone, never of the number of workers or their timing: a build that
was killed starts again from the shards that are complete (their .json exists) and ends
with files identical to an uninterrupted build's.

`ShardedTokens` reads the shards memory-mapped as one token stream: a host gathers only
the windows its rows need.
"""

import concurrent.futures
import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
from typing import Optional, Sequence

import numpy as np

from ssl_jax.data import documents, prepare, sources
from ssl_jax.data.text import DataError

INDEX = 'index.json'
ENCODE_BATCH_CHARS = 1 << 20       # text handed to the tokenizer at once
SEPARATOR = '\n\n'                  # after every document, as text files are joined


def token_dtype(vocab_size: int):
  return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def default_workers() -> int:
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:
    return max(1, os.cpu_count() or 1)


def cache_dir_for(paths: Sequence[str], fingerprint: str, cache_dir: str, fmt: str = '', text_field: str = 'text',
                  unit_bytes: int = 64 << 20, sentences: bool = False, select_key: str = '') -> str:
  key = [fingerprint, fmt, text_field, unit_bytes] + ([select_key] if select_key else [])   # (old keys unchanged)
  h = hashlib.sha1(json.dumps(key).encode())
  for p in paths:
    st = sources.stat(p)
    h.update(f'{st["path"]}|{st["size"]}|{st["mtime"]}\n'.encode())
  return os.path.join(cache_dir, f'{"sentences" if sentences else "tokens"}-{h.hexdigest()[:16]}')


def _pid_alive(pid: str) -> bool:
  """Whether a process of this id runs on this machine (a tmp file's writer may still be at work)."""
  if not pid.isdigit() or int(pid) == os.getpid():
    return False
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def build(paths: Sequence[str], tokenizer, tokenizer_dir: str, fingerprint: str, cache_dir: str, *, fmt: str = '',
          text_field: str = 'text', workers: int = 0, unit_bytes: int = 64 << 20, sentences: bool = False,
          select: Optional[dict] = None) -> str:
  """The token cache of `paths` (built, or finished, here); returns its folder.

  `tokenizer` is the run's, saved in `tokenizer_dir` (workers load it from there; its
  `fingerprint` checks they did). With `sentences`, BERT's documents of sentences (above).
  With `select` (prepare.selection), only the documents the cleaning filters kept, a file a
  unit (a file's documents are numbered from its start). Bad input is a DataError; the
  partial cache is removed."""
  out = cache_dir_for(paths, fingerprint, cache_dir, fmt, text_field, unit_bytes, sentences,
                      select['key'] if select else '')
  if os.path.exists(os.path.join(out, INDEX)):
    return out
  if select is not None:
    units = [sources.Unit(p, 'prepared') for p in paths]
  else:
    units = sources.units(paths, fmt, unit_bytes, split_text=not sentences)
  os.makedirs(out, exist_ok=True)
  for name in os.listdir(out):      # what a killed build left half-written (not another live process's:
    if '.tmp' in name and not _pid_alive(name.rsplit('.tmp', 1)[1]):   # every host of a job builds it)
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(out, name))
  todo = [i for i in range(len(units)) if not os.path.exists(_meta_path(out, i))]
  dtype = np.dtype(token_dtype(tokenizer.vocab_size)).name
  build_unit = _build_sentence_unit if sentences else _build_unit
  jobs = [(units[i], i, out, tokenizer_dir, fingerprint, text_field, dtype) + ((select,) if select else ())
          for i in todo]
  workers = min(workers or default_workers(), max(1, len(jobs)))
  try:
    if workers <= 1:
      for job in jobs:
        build_unit(*job, tokenizer=tokenizer)
    else:
      context = multiprocessing.get_context('spawn')   # not fork: the parent runs JAX's threads
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(build_unit, *job) for job in jobs]
        try:
          for f in concurrent.futures.as_completed(futures):
            f.result()
        except BaseException:
          for f in futures:
            f.cancel()
          raise
  except DataError:
    shutil.rmtree(out, ignore_errors=True)   # bad input: leave nothing behind
    raise
  metas = []
  for i in range(len(units)):
    with open(_meta_path(out, i)) as f:
      metas.append(json.load(f))
  index = {'tokenizer': fingerprint, 'dtype': dtype, 'format': fmt, 'text_field': text_field,
           'unit_bytes': unit_bytes, 'sources': [sources.stat(p) for p in paths],
           'tokens': sum(m['tokens'] for m in metas), 'documents': sum(m['documents'] for m in metas),
           'shards': metas}
  if sentences:
    index.update(kind='sentences', sentences=sum(m['sentences'] for m in metas), pairs=sum(m['pairs'] for m in metas))
  if sentences and index['documents'] == 0:
    shutil.rmtree(out, ignore_errors=True)
    raise DataError(f'empty corpus: no sentences in {", ".join(paths[:3])}')
  if index['tokens'] == 0:
    shutil.rmtree(out, ignore_errors=True)
    raise DataError(f'empty corpus: {", ".join(paths[:3])}{" ..." if len(paths) > 3 else ""} hold no text')
  _write_json(os.path.join(out, INDEX), index)
  return out


_WORKER_TOKENIZER = {}


def _worker_tokenizer(tokenizer_dir: str, fingerprint: str):
  from ssl_jax.data import tokenizer as tokenizers  # pylint: disable=import-outside-toplevel
  if tokenizer_dir not in _WORKER_TOKENIZER:
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')   # one process a core already
    tok = tokenizers.load(tokenizer_dir)
    if tok is None or tokenizers.fingerprint(tok) != fingerprint:
      raise RuntimeError(f'{tokenizer_dir}: the saved tokenizer is not the run\'s (fingerprint {fingerprint})')
    _WORKER_TOKENIZER[tokenizer_dir] = tok
  return _WORKER_TOKENIZER[tokenizer_dir]


def _build_unit(unit, i: int, out: str, tokenizer_dir: str, fingerprint: str, text_field: str, dtype: str,
                select: Optional[dict] = None, tokenizer=None) -> dict:
  """Tokenises one unit into shard i: its .bin and .docs, then (last, atomically) its .json."""
  tok = tokenizer or _worker_tokenizer(tokenizer_dir, fingerprint)
  encode_batch = getattr(tok, 'encode_batch', None) or (lambda texts: [tok.encode(t) for t in texts])
  bin_path, tmp_suffix = _shard_path(out, i, 'bin'), f'.tmp{os.getpid()}'
  ends, total, pending, pending_chars = [], 0, [], 0
  doc_ends_each = unit.format != 'text'    # a text file is one document: it ends with the file
  if select is not None:                   # prepared: the kept documents of the file
    texts = prepare.kept_texts(unit.path, select['firsts'][unit.path], select['keep'], select['documents'],
                               select['quality'])
  else:
    texts = sources.documents(unit, text_field)
  with open(bin_path + tmp_suffix, 'wb') as f:
    def flush():
      nonlocal total, pending, pending_chars
      for ids in encode_batch(pending):
        f.write(np.asarray(ids).astype(dtype).tobytes())
        total += len(ids)
        if doc_ends_each:
          ends.append(total)
      pending, pending_chars = [], 0

    for text in texts:
      if doc_ends_each:
        text += SEPARATOR
      pending.append(text)
      pending_chars += len(text)
      if pending_chars >= ENCODE_BATCH_CHARS:
        flush()
    flush()
  if not doc_ends_each and unit.last:
    ends.append(total)
  np.asarray(ends, np.int64).tofile(_shard_path(out, i, 'docs') + tmp_suffix)
  os.replace(bin_path + tmp_suffix, bin_path)
  os.replace(_shard_path(out, i, 'docs') + tmp_suffix, _shard_path(out, i, 'docs'))
  meta = {'shard': os.path.basename(bin_path), 'source': unit.path, 'start': unit.start, 'end': unit.end,
          'tokens': total, 'documents': len(ends)}
  _write_json(_meta_path(out, i), meta)
  return meta


def _build_sentence_unit(unit, i: int, out: str, tokenizer_dir: str, fingerprint: str, text_field: str, dtype: str,
                         tokenizer=None) -> dict:
  """Tokenises one unit's documents, a sentence at a time, into shard i: .bin, .sents, .docs,
  .pairs, then (last, atomically) its .json."""
  tok = tokenizer or _worker_tokenizer(tokenizer_dir, fingerprint)
  encode_batch = getattr(tok, 'encode_batch', None) or (lambda texts: [tok.encode(t) for t in texts])
  tmp = f'.tmp{os.getpid()}'
  files = {ext: open(_shard_path(out, i, ext) + tmp, 'wb')  # pylint: disable=consider-using-with
           for ext in ('bin', 'sents', 'docs', 'pairs')}
  counts = {'tokens': 0, 'sentences': 0, 'documents': 0, 'pairs': 0}
  pending, pending_chars = [], 0

  def flush():
    nonlocal pending, pending_chars
    flat = [s for doc in pending for s in doc]
    encoded = encode_batch(flat) if flat else []
    lengths = np.fromiter((len(ids) for ids in encoded), np.int64, len(encoded))
    if len(encoded):
      files['bin'].write(np.concatenate([np.asarray(ids) for ids in encoded]).astype(dtype).tobytes())
    (counts['tokens'] + np.cumsum(lengths)).tofile(files['sents'])
    sizes = np.array([len(doc) for doc in pending], np.int64)
    (counts['sentences'] + np.cumsum(sizes)).tofile(files['docs'])
    (counts['documents'] + np.flatnonzero(sizes >= 2)).astype(np.int64).tofile(files['pairs'])
    counts['tokens'] += int(lengths.sum())
    counts['sentences'] += len(flat)
    counts['documents'] += len(pending)
    counts['pairs'] += int((sizes >= 2).sum())
    pending, pending_chars = [], 0

  try:
    for doc in documents.unit_documents(unit, text_field):
      pending.append(doc)
      pending_chars += sum(map(len, doc))
      if pending_chars >= ENCODE_BATCH_CHARS:
        flush()
    flush()
  finally:
    for f in files.values():
      f.close()
  for ext in files:
    os.replace(_shard_path(out, i, ext) + tmp, _shard_path(out, i, ext))
  meta = {'shard': f'shard-{i:05d}', 'source': unit.path, 'start': unit.start, 'end': unit.end, **counts}
  _write_json(_meta_path(out, i), meta)
  return meta


def _shard_path(out: str, i: int, ext: str) -> str:
  return os.path.join(out, f'shard-{i:05d}.{ext}')


def _meta_path(out: str, i: int) -> str:
  return _shard_path(out, i, 'json')


def _write_json(path: str, obj) -> None:
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


class ShardedTokens:
  """A cache's shards as one memory-mapped token stream: len(), slices (views) and integer
  index arrays (a gather that touches only the shards and pages those indices fall in)."""

  def __init__(self, directory: str, start: int = 0, stop: Optional[int] = None, _index: Optional[dict] = None):
    self.directory = directory
    if _index is None:
      with open(os.path.join(directory, INDEX)) as f:
        _index = json.load(f)
    self.index = _index
    self.dtype = np.dtype(_index['dtype'])
    counts = np.array([m['tokens'] for m in _index['shards']], np.int64)
    self._ends = np.cumsum(counts)
    self._starts = self._ends - counts
    total = int(self._ends[-1]) if len(counts) else 0
    self.start, self.stop = start, total if stop is None else stop
    self._maps: dict = {}

  def __len__(self) -> int:
    return self.stop - self.start

  def _map(self, s: int) -> np.ndarray:
    if s not in self._maps:
      path = os.path.join(self.directory, self.index['shards'][s]['shard'])
      self._maps[s] = np.memmap(path, self.dtype, 'r') if self.index['shards'][s]['tokens'] else np.zeros(0, self.dtype)
    return self._maps[s]

  def __getitem__(self, key):
    if isinstance(key, slice):
      start, stop, step = key.indices(len(self))
      if step != 1:
        raise ValueError('ShardedTokens: slices take no step')
      return ShardedTokens(self.directory, self.start + start, self.start + max(start, stop), self.index)
    index = np.asarray(key, np.int64)
    if index.size and (index.min() < 0 or index.max() >= len(self)):
      raise IndexError(f'token index out of range(0, {len(self)})')
    flat = index.ravel() + self.start
    shard = np.searchsorted(self._ends, flat, side='right')
    out = np.empty(flat.shape, self.dtype)
    for s in np.unique(shard):
      here = shard == s
      out[here] = self._map(int(s))[flat[here] - self._starts[s]]
    return out.reshape(index.shape)

  def windows(self, offsets: np.ndarray, length: int) -> np.ndarray:
    """(rows, length) tokens: row i is [offsets[i], offsets[i] + length), each a slice copy of
    its shard (a window across a shard boundary is gathered)."""
    offsets = np.asarray(offsets, np.int64)
    out = np.empty((len(offsets), length), self.dtype)
    if len(offsets) and (offsets.min() < 0 or offsets.max() + length > len(self)):
      raise IndexError(f'token window out of range(0, {len(self)})')
    for r, start in enumerate(offsets + self.start):
      s = int(np.searchsorted(self._ends, start, side='right'))
      a = start - self._starts[s]
      if a + length <= self._ends[s] - self._starts[s]:
        out[r] = self._map(s)[a:a + length]
      else:
        out[r] = self[np.arange(start - self.start, start - self.start + length)]
    return out

  def to_array(self) -> np.ndarray:
    return self[np.arange(len(self))]


class ShardedDocuments:
  """BERT's documents (a `sentences` cache) memory-mapped: documents [lo, hi) of the cache.

  `len()` documents; `document(d)` -> a `Document` (its sentences' token counts and tokens);
  `num_pairs()` and `pair_document(k)`: the k-th document of 2+ sentences. What stays in
  memory is a few numbers a shard; each call reads the offsets and tokens it needs."""

  def __init__(self, directory: str, lo: int = 0, hi: Optional[int] = None, _index: Optional[dict] = None):
    self.directory = directory
    if _index is None:
      with open(os.path.join(directory, INDEX)) as f:
        _index = json.load(f)
    if _index.get('kind') != 'sentences':
      raise ValueError(f'{directory}: not a cache of documents of sentences')
    self.index = _index
    self.dtype = np.dtype(_index['dtype'])
    metas = _index['shards']
    self._doc_ends = np.cumsum([m['documents'] for m in metas]).astype(np.int64)
    self._pair_ends = np.cumsum([m['pairs'] for m in metas]).astype(np.int64)
    self.lo, self.hi = lo, int(_index['documents']) if hi is None else hi
    self._maps: dict = {}
    self._pair_lo, self._pair_hi = self._pair_rank(self.lo), self._pair_rank(self.hi)

  def __len__(self) -> int:
    return self.hi - self.lo

  def __getitem__(self, key: slice) -> 'ShardedDocuments':
    start, stop, step = key.indices(len(self))
    if step != 1:
      raise ValueError('ShardedDocuments: slices take no step')
    return ShardedDocuments(self.directory, self.lo + start, self.lo + max(start, stop), self.index)

  def _map(self, s: int, ext: str) -> np.ndarray:
    if (s, ext) not in self._maps:
      path = os.path.join(self.directory, f'{self.index["shards"][s]["shard"]}.{ext}')
      dtype = self.dtype if ext == 'bin' else np.int64
      self._maps[s, ext] = np.memmap(path, dtype, 'r') if os.path.getsize(path) else np.zeros(0, dtype)
    return self._maps[s, ext]

  def _locate(self, d: int):
    """(shard, document within it) of the cache's document d."""
    s = int(np.searchsorted(self._doc_ends, d, side='right'))
    return s, d - (int(self._doc_ends[s - 1]) if s else 0)

  def _pair_rank(self, d: int) -> int:
    """How many of the cache's documents before d have 2+ sentences."""
    if d >= int(self.index['documents']):
      return int(self._pair_ends[-1]) if len(self._pair_ends) else 0
    s, j = self._locate(d)
    return (int(self._pair_ends[s - 1]) if s else 0) + int(np.searchsorted(self._map(s, 'pairs'), j))

  def num_pairs(self) -> int:
    return self._pair_hi - self._pair_lo

  def pair_document(self, k: int) -> int:
    """The k-th document of 2+ sentences (an index into this view)."""
    k += self._pair_lo
    s = int(np.searchsorted(self._pair_ends, k, side='right'))
    j = int(self._map(s, 'pairs')[k - (int(self._pair_ends[s - 1]) if s else 0)])
    return (int(self._doc_ends[s - 1]) if s else 0) + j - self.lo

  def document(self, d: int) -> 'Document':
    if not 0 <= d < len(self):
      raise IndexError(f'document {d} out of range(0, {len(self)})')
    s, j = self._locate(self.lo + d)
    doc_ends, sentence_ends = self._map(s, 'docs'), self._map(s, 'sents')
    first, last = (int(doc_ends[j - 1]) if j else 0), int(doc_ends[j])
    ends = np.asarray(sentence_ends[first:last])
    start = int(sentence_ends[first - 1]) if first else 0
    return Document(self._map(s, 'bin'), np.concatenate([[start], ends]))


class Document:
  """One document's sentences: `lengths` (token counts) and `tokens(i, j)`, the tokens of
  sentences [i, j) as one array. `offsets` are the sentences' bounds in `tokens_of`."""

  def __init__(self, tokens_of: np.ndarray, offsets: np.ndarray):
    self._tokens, self._offsets = tokens_of, offsets
    self.lengths = np.diff(offsets).tolist()

  def __len__(self) -> int:
    return len(self.lengths)

  def tokens(self, i: int, j: int) -> np.ndarray:
    return np.asarray(self._tokens[self._offsets[i]:self._offsets[j]])

  @classmethod
  def of(cls, sentences: Sequence[np.ndarray]) -> 'Document':
    """An in-memory document from its sentences' token arrays."""
    lengths = [len(s) for s in sentences]
    flat = np.concatenate([np.asarray(s, np.int64) for s in sentences]) if sentences else np.zeros(0, np.int64)
    return cls(flat, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
