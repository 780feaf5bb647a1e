"""BERT's WordPiece tokenizer over a vocab.txt: basic split, then greedy longest-match-first subwords.

Matches transformers' BertTokenizer on ordinary text (lower-casing and accent stripping as
the vocabulary's casing implies, punctuation and CJK ideographs split off).
"""

import json
import os
import re
import unicodedata
from typing import List, Optional, Sequence

import numpy as np

from ssl_jax.data.text import DataError


def read_vocab(path: str) -> List[str]:
  """vocab.txt: one token a line; a token's id is its line number."""
  with open(path, encoding='utf-8') as f:
    return [line.rstrip('\n') for line in f]


# WordPiece (BERT's tokenizer): basic split, then greedy longest-match-first subwords.

SPECIAL_TOKENS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')
# CJK ideographs get spaces around them, one token each (Google's BERT does this).
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_whitespace(ch: str) -> bool:
  return ch in ' \t\n\r' or unicodedata.category(ch) == 'Zs'


def _is_control(ch: str) -> bool:
  return ch not in '\t\n\r' and unicodedata.category(ch).startswith('C')


def _is_punctuation(ch: str) -> bool:
  # All non-alphanumeric ASCII counts ($, ^, `, ...), though Unicode files some under symbols.
  cp = ord(ch)
  return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 \
      or unicodedata.category(ch).startswith('P')


class WordPieceTokenizer:
  """BERT's uncased (or cased) WordPiece tokenizer over a vocab.txt.

  Same interface as ssl_jax.data.tokenizer's: `encode(text)` gives the ids of the text's
  pieces without [CLS]/[SEP] (the data pipeline frames the pairs itself), `decode`,
  `piece_id`, `vocab_size`; special ids as `pad_id`, `unk_id`, `cls_id`, `sep_id`, `mask_id`.
  Special tokens written in the text ("[MASK]") are kept whole, as in transformers.
  """
  kind = 'wordpiece'

  def __init__(self, vocab: Sequence[str], lowercase: bool = True, strip_accents: Optional[bool] = None,
               max_word_chars: int = 100):
    self.vocab = list(vocab)
    self.ids = {}
    for i, token in enumerate(self.vocab):
      self.ids[token] = i   # a repeated line takes the later id, as transformers reads it
    self.vocab_size = len(self.vocab)
    self.lowercase = lowercase
    self.strip_accents = lowercase if strip_accents is None else strip_accents
    self.max_word_chars = max_word_chars
    missing = [t for t in ('[UNK]',) if t not in self.ids]
    if missing:
      raise DataError(f'the WordPiece vocabulary has no {missing[0]}')
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
        self.ids.get(t, self.ids['[UNK]']) for t in SPECIAL_TOKENS)
    specials = [t for t in SPECIAL_TOKENS if t in self.ids]
    self._special_split = re.compile('(' + '|'.join(re.escape(t) for t in specials) + ')')

  @classmethod
  def load(cls, path: str) -> 'WordPieceTokenizer':
    """From a vocab.txt, or a directory holding one (and tokenizer_config.json's do_lower_case)."""
    lowercase, strip_accents = True, None
    if os.path.isdir(path):
      settings_path = os.path.join(path, 'tokenizer_config.json')
      if os.path.exists(settings_path):
        with open(settings_path) as f:
          settings = json.load(f)
        lowercase = settings.get('do_lower_case', True)
        strip_accents = settings.get('strip_accents')
      path = os.path.join(path, 'vocab.txt')
    return cls(read_vocab(path), lowercase, strip_accents)

  def tokenize(self, text: str) -> List[str]:
    """The text's pieces, e.g. 'Unaffable!' -> ['una', '##ffa', '##ble', '!']."""
    pieces = []
    for part in self._special_split.split(text):
      if part in self.ids and part in SPECIAL_TOKENS:
        pieces.append(part)
        continue
      for word in self._basic_split(part):
        pieces.extend(self._wordpiece(word))
    return pieces

  def encode(self, text: str) -> np.ndarray:
    return np.asarray([self.ids[p] for p in self.tokenize(text)], dtype=np.int32)

  def decode(self, ids) -> str:
    text = ' '.join(self.vocab[i] for i in np.asarray(ids).tolist() if 0 <= i < self.vocab_size)
    return text.replace(' ##', '')

  def piece_id(self, piece: str) -> int:
    return self.ids.get(piece, self.unk_id)

  def word_starts(self) -> np.ndarray:
    """Per id: does the piece begin a word (not a '##' continuation); for whole-word masking."""
    return np.array([not t.startswith('##') for t in self.vocab], bool)

  def state(self) -> dict:
    return {'kind': self.kind, 'vocab': 'vocab.txt', 'lowercase': self.lowercase, 'strip_accents': self.strip_accents}

  def _basic_split(self, text: str) -> List[str]:
    """Cleans, lowercases, strips accents and splits at whitespace and each punctuation mark."""
    text = ''.join(' ' if _is_whitespace(ch) else ch for ch in text
                   if not (ch in '\x00\ufffd' or _is_control(ch)))
    text = ''.join(f' {ch} ' if any(lo <= ord(ch) <= hi for lo, hi in _CJK) else ch for ch in text)
    text = unicodedata.normalize('NFC', text)
    words = []
    for word in text.split():
      if self.lowercase:
        word = word.lower()
      if self.strip_accents:
        word = ''.join(ch for ch in unicodedata.normalize('NFD', word) if unicodedata.category(ch) != 'Mn')
      current = ''
      for ch in word:
        if _is_punctuation(ch):
          words += [current, ch] if current else [ch]
          current = ''
        else:
          current += ch
      if current:
        words.append(current)
    return words

  def _wordpiece(self, word: str) -> List[str]:
    """Greedy longest match first; a word with any unmatchable rest is one [UNK]."""
    if len(word) > self.max_word_chars:
      return ['[UNK]']
    pieces, start = [], 0
    while start < len(word):
      end = len(word)
      while end > start:
        piece = word[start:end] if start == 0 else '##' + word[start:end]
        if piece in self.ids:
          break
        end -= 1
      if end == start:
        return ['[UNK]']
      pieces.append(piece)
      start = end
    return pieces
