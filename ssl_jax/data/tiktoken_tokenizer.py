"""A tiktoken encoding read from its .tiktoken file (ssl_jax/data/tokenizer.py picks it for a
`data.tokenizer` path ending in .tiktoken, and saves and reloads it with a run)."""

import base64
from typing import Sequence

import numpy as np

from ssl_jax import storage
from ssl_jax.errors import ConfigError
from ssl_jax.data.text import DataError

TIKTOKEN_FILE = 'tokenizer.tiktoken'


class TiktokenTokenizer:
  """A tiktoken encoding from its .tiktoken file (one `base64(token) rank` a line), a split
  regex and special tokens; special tokens written in the text are recognised."""
  kind = 'tiktoken'

  def __init__(self, bpe_file: bytes, pattern: str = 'gpt2', special_tokens: str = '', where: str = '.tiktoken'):
    import tiktoken  # pylint: disable=import-outside-toplevel
    ranks = {}
    for n, line in enumerate(bpe_file.splitlines(), 1):
      if not line.strip():
        continue
      try:
        token, rank = line.split()
        ranks[base64.b64decode(token, validate=True)] = int(rank)
      except ValueError:
        raise DataError(f'{where}: line {n} is not "base64-token rank"') from None
    if not ranks:
      raise DataError(f'{where}: no tokens')
    self.bpe_file, self.pattern_spec, self.special_spec = bpe_file, pattern, special_tokens
    self.special = parse_special_tokens(special_tokens, max(ranks.values()) + 1)
    try:
      self.enc = tiktoken.Encoding(name='ssl_jax', pat_str=tiktoken_pattern(pattern), mergeable_ranks=ranks,
                                   special_tokens=self.special)
    except ValueError as e:
      raise ConfigError(f'data.tokenizer={where}: {e}') from None
    self.vocab_size = self.enc.n_vocab

  @classmethod
  def from_file(cls, path: str, pattern: str = 'gpt2', special_tokens: str = '') -> 'TiktokenTokenizer':
    return cls(storage.read_bytes(path), pattern, special_tokens, path)

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.enc.encode(text, allowed_special='all'), dtype=np.int32)

  def encode_batch(self, texts: Sequence[str]):
    return [np.asarray(ids, dtype=np.int32) for ids in self.enc.encode_batch(list(texts), allowed_special='all')]

  def decode(self, ids) -> str:
    return self.enc.decode([int(i) for i in np.asarray(ids).tolist()], errors='replace')

  def piece_id(self, piece: str) -> int:
    if piece in self.special:
      return self.special[piece]
    try:
      return self.enc.encode_single_token(piece.encode('utf-8'))
    except KeyError:
      return -1

  def state(self) -> dict:
    return {'kind': self.kind, 'file': TIKTOKEN_FILE, 'pattern': self.pattern_spec, 'special_tokens': self.special_spec}


def tiktoken_pattern(spec: str) -> str:
  """data.tiktoken_pattern: 'gpt2' (GPT-2's, r50k/p50k's split regex) or the regex itself."""
  if spec in ('', 'gpt2'):
    from tiktoken_ext.openai_public import r50k_pat_str  # pylint: disable=import-outside-toplevel
    return r50k_pat_str
  return spec


def parse_special_tokens(spec: str, first_free: int) -> dict:
  """data.tiktoken_special_tokens: 'NAME:ID,NAME:ID' ('' = {'<|endoftext|>': first_free})."""
  if not spec.strip():
    return {'<|endoftext|>': first_free}
  special = {}
  for part in spec.split(','):
    name, colon, number = part.strip().rpartition(':')
    if not colon or not name or not number.strip().isdigit():
      raise ConfigError(f'data.tiktoken_special_tokens={spec!r}: expected NAME:ID pairs joined by commas, '
                        f'e.g. <|endoftext|>:50256')
    special[name] = int(number)
  return special
