"""Near-duplicate detection for corpus cleaning (prepare.py): MinHash signatures of word
shingles and a locality-sensitive hashing index over them."""

import zlib
from collections import defaultdict
from typing import List

import numpy as np


class MinHashLSH:
  """MinHash signatures (multiply-shift hashing of CRC32 shingle hashes) and an LSH index
  of `bands` x `rows`, chosen so that (1/bands)^(1/rows), where the chance of becoming a
  candidate is about half, lies well below the threshold (at 3/4 of it): every candidate is
  checked by its estimated Jaccard, so extra candidates cost a comparison, while a midpoint
  at the threshold itself misses pairs just above it."""

  def __init__(self, threshold: float, num_perm: int = 128, shingle: int = 5, seed: int = 0):
    self.threshold, self.shingle = threshold, shingle
    options = [(b, num_perm // b) for b in range(1, num_perm + 1) if num_perm % b == 0]
    self.bands, self.rows = min(options, key=lambda br: abs((1 / br[0]) ** (1 / br[1]) - 0.75 * threshold))
    rng = np.random.default_rng(seed)
    self.a = rng.integers(1, 2**63, num_perm, dtype=np.uint64) | np.uint64(1)     # odd multipliers
    self.b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
    self.tables = [defaultdict(list) for _ in range(self.bands)]
    self.signatures: List[np.ndarray] = []

  def signature(self, text: str) -> np.ndarray:
    words = text.lower().split()
    n = max(len(words) - self.shingle + 1, 1)
    shingles = {' '.join(words[i:i + self.shingle]) for i in range(n)}
    x = np.fromiter((zlib.crc32(s.encode()) for s in shingles), np.uint64, len(shingles))
    with np.errstate(over='ignore'):
      hashed = (self.a[:, None] * x[None, :] + self.b[:, None]) >> np.uint64(32)   # (perm, shingles)
    return hashed.min(axis=1)

  def near_duplicate(self, signature: np.ndarray) -> bool:
    """Is there an indexed signature this close? (Checked by estimated Jaccard, not just a band.)"""
    seen = set()
    for band, table in enumerate(self.tables):
      key = signature[band * self.rows:(band + 1) * self.rows].tobytes()
      for other in table.get(key, ()):
        if other not in seen:
          seen.add(other)
          if np.mean(self.signatures[other] == signature) >= self.threshold:
            return True
    return False

  def add(self, signature: np.ndarray) -> None:
    index = len(self.signatures)
    self.signatures.append(signature)
    for band, table in enumerate(self.tables):
      table[signature[band * self.rows:(band + 1) * self.rows].tobytes()].append(index)
