"""Text sources, a tokenised-once token cache, and the decoder's batch sampler.

The batch at step s is a pure function of (seed, s): the offsets of its rows are drawn
from a generator seeded with exactly those two numbers, so a resumed run (on any number
of hosts) reads the very same batches. Each host materialises only its own rows.
"""

import glob
import hashlib
import os
import sysconfig
from typing import List, Sequence

import numpy as np


class DataError(ValueError):
  """Bad input data: the message names the thing and where it is."""


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


def resolve_paths(spec: str, key: str = 'data.path') -> List[str]:
  """Files named by a comma-separated list of paths and globs, in a stable order."""
  if not spec:
    return embedded_corpus_paths()
  paths = []
  for part in [p.strip() for p in spec.split(',') if p.strip()]:
    matches = sorted(glob.glob(os.path.expanduser(part), recursive=True))
    matches = [m for m in matches if os.path.isfile(m)]
    if not matches:
      raise DataError(f'{key}: no file matches {part!r}')
    paths.extend(matches)
  return paths


def read_text(path: str) -> str:
  """A text file as str; binary or non-UTF-8 content is a DataError that names the file."""
  with open(path, 'rb') as f:
    raw = f.read()
  if b'\x00' in raw[:65536]:
    raise DataError(f'{path}: looks like a binary file, not text')
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise DataError(f'{path}: not UTF-8 text ({e.reason} at byte {e.start})') from None


def read_texts(paths: Sequence[str]) -> List[str]:
  texts = [read_text(p) for p in paths]
  if not any(t.strip() for t in texts):
    raise DataError(f'empty corpus: {", ".join(paths[:3])}{" ..." if len(paths) > 3 else ""} hold no text')
  return texts


def _cache_key(paths: Sequence[str], tokenizer_id: str) -> str:
  h = hashlib.sha1(tokenizer_id.encode())
  for p in paths:
    st = os.stat(p)
    h.update(f'{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n'.encode())
  return h.hexdigest()[:16]


def token_file(paths: Sequence[str], tokenizer, tokenizer_id: str, cache_dir: str) -> np.ndarray:
  """All documents of `paths` tokenised once into a cached file, memory-mapped.

  Files are joined by a blank line. The cache is keyed by the files (path, size, mtime)
  and the tokenizer, written atomically, and shared by every later run that needs it.
  """
  os.makedirs(cache_dir, exist_ok=True)
  path = os.path.join(cache_dir, f'tokens-{_cache_key(paths, tokenizer_id)}.npy')
  if not os.path.exists(path):
    parts = [tokenizer.encode(t + '\n\n') for t in read_texts(paths)]
    tokens = np.concatenate(parts)
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max else np.int32
    tmp = f'{path}.tmp{os.getpid()}.npy'
    np.save(tmp, tokens.astype(dtype))
    os.replace(tmp, path)
  return np.load(path, mmap_mode='r')


class LMBatches:
  """Random windows of a token stream: row r of step s is tokens[o : o + seq_len + 1].

  `batch(step)` is a pure function of (seed, step); eval batches use another stream
  (`eval_batch(i)`), fixed for the whole run so eval losses are comparable.
  """

  def __init__(self, tokens: np.ndarray, seq_len: int, global_batch: int, seed: int,
               process_index: int = 0, process_count: int = 1, name: str = 'data'):
    if len(tokens) < seq_len + 2:
      raise DataError(f'{name}: {len(tokens)} tokens is shorter than one sequence of '
                      f'{seq_len + 1} (data.seq_len + 1)')
    if global_batch % process_count:
      raise DataError(f'train.batch_size={global_batch} is not divisible by the {process_count} hosts')
    self.tokens = tokens
    self.seq_len = seq_len
    self.global_batch = global_batch
    self.seed = seed
    self.local_batch = global_batch // process_count
    self._rows = slice(process_index * self.local_batch, (process_index + 1) * self.local_batch)

  def _windows(self, entropy) -> dict:
    rng = np.random.default_rng(entropy)
    offsets = rng.integers(0, len(self.tokens) - self.seq_len - 1, size=self.global_batch)
    offsets = offsets[self._rows]                                   # this host's rows only
    idx = offsets[:, None] + np.arange(self.seq_len + 1)[None, :]    # (b, T + 1)
    window = np.asarray(self.tokens[idx], dtype=np.int32)
    return {'inputs': window[:, :-1], 'targets': window[:, 1:]}

  def batch(self, step: int) -> dict:
    return self._windows([self.seed, step, 0])

  def eval_batch(self, i: int) -> dict:
    return self._windows([self.seed, i, 1])
