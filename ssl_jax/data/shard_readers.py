"""Readers of the token cache (built by ssl_jax/data/shards.py, whose docstring lays out its
files), memory-mapped: what stays in memory is a few numbers a shard.

`ShardedTokens` reads a `tokens-<key>/` cache as one token stream: a host gathers only the
windows its rows need. `ShardedDocuments` reads a `sentences-<key>/` cache as BERT's
documents: an example touches the offsets of its two documents and the tokens of its
sentences, nothing else. `Document` is one document's sentences, mapped or in memory.
Memory maps need local files: a cache in an object store is read from a local copy
(`local_cache_dir`, `download_missing`).
"""

import concurrent.futures
import json
import os
from typing import Optional, Sequence

import numpy as np

from ssl_jax import storage

INDEX = 'index.json'               # a cache's index: written last, by shards.build


def local_cache_dir(configured: str = '') -> str:
  """Where this host keeps its copies of what an object-store workdir holds and the readers
  memory-map (data.cache_dir; '' = under the user's cache folder): memory maps need local files."""
  if configured:
    return os.path.abspath(os.path.expanduser(configured))
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'ssl_jax', 'tokens')


def content_fingerprint(*directories: str) -> str:
  """The caches' content fingerprints (`_fingerprint`), joined by '+'."""
  return '+'.join(_fingerprint(d) for d in directories)


def _fingerprint(directory: str, sample_bytes: int = 1 << 16) -> str:
  """A short hash of a cache's content: every shard's token count and up to `sample_bytes` of
  its tokens at its start, middle and end (so not O(corpus) per start). The cache's own key
  follows its files' sizes and times, which a copy or a touch changes without changing a
  token; this follows the tokens (an edit that keeps every shard's length and misses the
  samples goes unseen)."""
  import hashlib  # pylint: disable=import-outside-toplevel
  with open(os.path.join(directory, INDEX)) as f:
    index = json.load(f)
  h = hashlib.sha1(json.dumps([index.get('tokenizer'), index.get('kind', 'tokens')]).encode())
  files = {}   # shard stem -> its data files
  for name in sorted(os.listdir(directory)):
    if name.startswith('shard-') and not name.endswith('.json'):
      files.setdefault(name.split('.')[0], []).append(name)
  for meta in index['shards']:
    for name in files.get(meta['shard'].split('.')[0], []):
      path = os.path.join(directory, name)
      size = os.path.getsize(path)
      h.update(f'{name}|{meta.get("tokens")}|{size}|'.encode())
      with open(path, 'rb') as f:
        for at in sorted({0, max(0, size // 2 - sample_bytes // 2), max(0, size - sample_bytes)}):
          f.seek(at)
          h.update(f.read(sample_bytes))
  return h.hexdigest()[:16]


def unit_files(i: int, exts) -> list:
  """Shard i's files, its .json last: copied in this order, the .json says the rest is whole."""
  return [f'shard-{i:05d}.{ext}' for ext in exts] + [f'shard-{i:05d}.json']


def download_missing(url: str, out: str, count: int, exts) -> None:
  """Copies the shards of the cache at `url` that the local copy `out` lacks, a few at a time."""
  def fetch(i):
    for name in unit_files(i, exts):
      storage.download(storage.join(url, name), os.path.join(out, name))
  missing = [i for i in range(count) if not os.path.exists(os.path.join(out, f'shard-{i:05d}.json'))]
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    list(pool.map(fetch, missing))


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
    self._document_ends: Optional[np.ndarray] = None

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

  def document_ends(self) -> np.ndarray:
    """(documents,) int64: where each document that ends in this stream ends (the index of the
    next one's first token), from the shards' .docs; the stream's end is one if a document
    ends there. Read once and kept (8 bytes a document)."""
    if self._document_ends is None:
      ends = [np.fromfile(os.path.join(self.directory, m['shard'].rsplit('.', 1)[0] + '.docs'), np.int64)
              + self._starts[s] for s, m in enumerate(self.index['shards'])]
      ends = np.concatenate(ends) - self.start if ends else np.zeros(0, np.int64)
      self._document_ends = ends[(ends > 0) & (ends <= len(self))]
    return self._document_ends


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
