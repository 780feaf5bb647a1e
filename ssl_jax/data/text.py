"""Text files, and the decoder's batch sampler (the token cache is shards.py and shard_readers.py;
other formats sources.py).

The batch at step s is a pure function of (seed, s): training windows are read in epochs,
each a shuffled order of the stream's non-overlapping windows (a keyed permutation of
their indices, computed per index, so nothing grows with the corpus); held-out batches
take the held-out stream's windows in one fixed shuffled order. So a resumed run
(on any number of hosts) reads the very same batches. Each host materialises only its
own rows.
"""

import glob
import os
import sysconfig
from typing import List, Sequence

import numpy as np

from ssl_jax import parallel, storage


from ssl_jax.errors import DataError  # noqa: E402  (raised here; its home is ssl_jax.errors)


def embedded_corpus_paths() -> List[str]:
  """The default corpus: the Python standard library's own top-level modules.

  Every Python installation carries them, so `run.py train` works offline with no
  download; about 4.7 MB of real, structured text.
  """
  stdlib = sysconfig.get_paths()['stdlib']
  paths = sorted(glob.glob(os.path.join(stdlib, '*.py')))
  if not paths:
    raise DataError(f'embedded corpus: no Python source files found in {stdlib}')
  return paths


def read_text(path: str) -> str:
  """A text file (a local path or a URL) as str; binary or non-UTF-8 content is a DataError
  that names the file."""
  raw = storage.read_bytes(path)
  if b'\x00' in raw[:65536]:
    raise DataError(f'{path}: looks like a binary file, not text')
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise DataError(f'{path}: not UTF-8 text ({e.reason} at byte {e.start})') from None


def _mix64(z: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser: a bijective scramble of 64-bit words (wrapping arithmetic)."""
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


def permute(index: np.ndarray, n: int, key: Sequence[int], rounds: int = 4) -> np.ndarray:
  """A keyed permutation of range(n), evaluated at `index` (each in [0, n)).

  A balanced Feistel network over the smallest even number of bits that holds n is a
  bijection of [0, 2^bits); values that land at or past n are sent through it again
  (cycle walking), which keeps it a bijection of [0, n). Nothing of size n is built.
  """
  index = np.asarray(index, np.uint64)
  if np.any(index >= n):
    raise ValueError(f'permute: index out of range(0, {n})')
  half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
  low = np.uint64((1 << half) - 1)
  keys = np.random.SeedSequence(list(key)).generate_state(rounds, np.uint64)
  with np.errstate(over='ignore'):
    def feistel(x):
      left, right = x >> np.uint64(half), x & low
      for k in keys:
        left, right = right, left ^ (_mix64(right ^ k) & low)
      return (left << np.uint64(half)) | right

    out = feistel(index)
    walking = out >= n
    while walking.any():
      out[walking] = feistel(out[walking])
      walking = out >= n
  return out.astype(np.int64)


def window_segments(document_ends: np.ndarray, offsets: np.ndarray, length: int) -> np.ndarray:
  """(rows, length) int32: for the window of `length` tokens at each offset, the number of
  documents that start inside it at or before each token (a document starts where one of the
  sorted `document_ends` is), so 0 for the document the window begins in."""
  index = np.asarray(offsets, np.int64)[:, None] + np.arange(length)[None, :]      # (rows, length)
  ended = np.searchsorted(document_ends, index, side='right')                       # ends <= each token
  return (ended - ended[:, :1]).astype(np.int32)


class LMBatches:
  """Windows of a token stream: row r of step s is tokens[o : o + seq_len + 1].

  Training reads the stream in epochs: epoch e starts its windows at a random phase
  (< seq_len) and takes the m = (len - seq_len - 1) // seq_len windows at that phase, one
  after another, in a shuffled order keyed by (seed, e); global row g of the run is window
  permute(g mod m) of epoch g div m. So every part of the corpus is seen once an epoch
  (random offsets drawn with replacement leave e^-k of it unseen after k epochs' worth).
  `batch(step)` is a pure function of (seed, step); eval batches (`eval_batch(i)`) are the
  held-out stream's non-overlapping windows in an order fixed for the whole run, so eval
  losses are comparable and `num_batches` of them cover the split.

  With `pack` (data.pack), windows are cut as without, and each row also carries
  `segment_ids` (B, T), which document of the window each input token belongs to (0 for the
  one the window starts in, then one more at each document start), and `target_mask`
  (B, T), 0 where the target is the next document's first token (not predicted across the
  boundary, as MaxText and Levanter do). Documents are where the token cache says they end
  (`document_ends`, ShardedTokens'; a text file is one document, a JSONL/Parquet/Arrow row one).
  """

  def __init__(self, tokens: np.ndarray, seq_len: int, global_batch, seed: int, name: str = 'data',
               pack: bool = False, document_ends=None):
    """global_batch: the global batch size, or this host's parallel.HostShare of it.
    document_ends: with `pack`, each document's end in `tokens` (default: tokens.document_ends())."""
    if len(tokens) < seq_len + 2:
      raise DataError(f'{name}: {len(tokens)} tokens is shorter than one sequence of '
                      f'{seq_len + 1} (data.seq_len + 1)')
    self.share = parallel.host_share(global_batch)
    self.tokens = tokens
    self.seq_len = seq_len
    self.global_batch = self.share.size
    self.local_batch = self.share.local
    self.seed = seed
    self.document_ends = None
    if pack:
      ends = tokens.document_ends() if document_ends is None else document_ends
      self.document_ends = np.sort(np.asarray(ends, np.int64))

  def _read(self, offsets: np.ndarray) -> dict:
    if hasattr(self.tokens, 'windows'):      # the token cache's shards: a slice copy a row
      window = np.asarray(self.tokens.windows(offsets, self.seq_len + 1), dtype=np.int32)
    else:
      idx = offsets[:, None] + np.arange(self.seq_len + 1)[None, :]    # (b, T + 1)
      window = np.asarray(self.tokens[idx], dtype=np.int32)
    out = {'inputs': window[:, :-1], 'targets': window[:, 1:]}
    if self.document_ends is not None:
      segments = window_segments(self.document_ends, offsets, self.seq_len + 1)    # (b, T + 1)
      out['segment_ids'] = segments[:, :-1]
      out['target_mask'] = (segments[:, 1:] == segments[:, :-1]).astype(np.float32)
    return out

  def train_offsets(self, step: int) -> np.ndarray:
    """The first token of each of this host's rows at `step`."""
    T, span = self.seq_len, len(self.tokens) - self.seq_len - 1      # offsets lie in [0, span]
    m = max(1, span // T)                                            # windows an epoch
    epochs, slots = np.divmod(self.share.rows(step), m)
    offsets = np.empty(len(slots), np.int64)
    for e in np.unique(epochs):
      here = epochs == e
      phase = np.random.default_rng([self.seed, int(e), 2]).integers(0, min(T, span - (m - 1) * T + 1))
      offsets[here] = phase + T * permute(slots[here], m, (self.seed, int(e), 3))
    return offsets

  def batch(self, step: int) -> dict:
    return self._read(self.train_offsets(step))

  @property
  def num_batches(self) -> int:
    """Held-out batches that read every whole window of the split once (train.eval_batches=0)."""
    return max(1, self._eval_windows() // self.global_batch)

  def _eval_windows(self) -> int:
    return max(1, (len(self.tokens) - 1) // self.seq_len)

  def eval_batch(self, i: int) -> dict:
    """Batch i of the split's non-overlapping windows (from its first token) in one fixed
    shuffled order: any number of batches is a sample without replacement, and
    `num_batches` of them read the whole split (but the last < batch windows)."""
    m = self._eval_windows()
    return self._read(self.seq_len * permute(self.share.rows(i) % m, m, (self.seed, 1)))
