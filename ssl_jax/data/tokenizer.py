"""Tokenizers: character level, and sentencepiece trained on the run's own corpus (or loaded).

A run's tokenizer is saved in its workdir (`tokenizer.json`, plus `tokenizer.model` for
sentencepiece) and reloaded from there on resume, so a resumed run never re-derives it.
"""

import hashlib
import io
import json
import os
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm
from ssl_jax.config import ConfigError
from ssl_jax.data.text import DataError
from ssl_jax.data.wordpiece import WordPieceTokenizer, read_vocab

TOKENIZER_FILE = 'tokenizer.json'
SPM_FILE = 'tokenizer.model'


class CharTokenizer:
  """One token per character of a fixed alphabet (nanoGPT's shakespeare_char)."""
  kind = 'char'

  def __init__(self, chars: Sequence[str]):
    self.chars = sorted(set(chars))
    self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)  # sorted
    self.vocab_size = len(self.chars)

  @classmethod
  def from_text(cls, texts: Iterable[str]) -> 'CharTokenizer':
    chars = set()
    for t in texts:
      chars.update(t)
    return cls(chars)

  def encode(self, text: str) -> np.ndarray:
    codes = np.frombuffer(text.encode('utf-32-le'), dtype=np.uint32)
    ids = np.searchsorted(self._codes, codes)
    ids = np.minimum(ids, self.vocab_size - 1)
    bad = self._codes[ids] != codes
    if bad.any():
      c = chr(codes[np.argmax(bad)])
      raise DataError(f'character {c!r} is not in the tokenizer\'s {self.vocab_size}-character alphabet')
    return ids.astype(np.int32)

  def decode(self, ids) -> str:
    return ''.join(self.chars[i] for i in np.asarray(ids).tolist() if 0 <= i < self.vocab_size)

  def state(self) -> dict:
    return {'kind': 'char', 'chars': ''.join(self.chars)}


class SentencePieceTokenizer:
  """A sentencepiece model (unigram or BPE); special pieces are control symbols."""
  kind = 'sentencepiece'

  def __init__(self, model_proto: bytes):
    self.model_proto = model_proto
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self.sp.get_piece_size()

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int, model_type: str = 'unigram',
            special: Sequence[str] = (), max_sentences: int = 2_000_000) -> 'SentencePieceTokenizer':
    """Trains on lines of `texts`; `special` pieces get the first ids, in order ([UNK], if
    among them, is the unknown piece and takes id 0)."""
    out = io.BytesIO()
    lines = (line for t in texts for line in t.split('\n') if line.strip())
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines, model_writer=out, vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0, byte_fallback=True, input_sentence_size=max_sentences,
        normalization_rule_name='identity',  # keep text as it is: newlines and all round-trip
        hard_vocab_limit=False,              # a small corpus gets fewer pieces, not an error
        shuffle_input_sentence=True, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
        unk_piece='[UNK]' if '[UNK]' in special else '<unk>',
        control_symbols=[s for s in special if s != '[UNK]'], split_digits=True, remove_extra_whitespaces=False,
        train_extremely_large_corpus=False, minloglevel=2)
    return cls(out.getvalue())

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.sp.encode(text), dtype=np.int32)

  def decode(self, ids) -> str:
    return self.sp.decode([int(i) for i in np.asarray(ids).tolist()])

  def piece_id(self, piece: str) -> int:
    return self.sp.piece_to_id(piece)

  def state(self) -> dict:
    return {'kind': 'sentencepiece', 'model': SPM_FILE}


def fingerprint(tok) -> str:
  """A short hash that tells two tokenizers apart (stored with checkpoints)."""
  if tok.kind == 'sentencepiece':
    payload = tok.model_proto
  elif tok.kind == 'wordpiece':
    payload = json.dumps([tok.vocab, tok.lowercase, tok.strip_accents]).encode()
  else:
    payload = tok.state()['chars'].encode()
  return hashlib.sha1(payload).hexdigest()[:16]


def save(tok, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  if tok.kind == 'sentencepiece':
    _atomic_write(os.path.join(workdir, SPM_FILE), tok.model_proto)
  if tok.kind == 'wordpiece':
    _atomic_write(os.path.join(workdir, tok.state()['vocab']), ''.join(f'{t}\n' for t in tok.vocab).encode())
  _atomic_write(os.path.join(workdir, TOKENIZER_FILE), json.dumps(tok.state()).encode())


def load(workdir: str):
  """The tokenizer saved in `workdir`, or None if there is none."""
  path = os.path.join(workdir, TOKENIZER_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    state = json.load(f)
  if 'kind' not in state:     # a Hugging Face tokenizer.json, not ours
    return None
  if state['kind'] == 'char':
    return CharTokenizer(state['chars'])
  if state['kind'] == 'wordpiece':
    return WordPieceTokenizer(read_vocab(os.path.join(workdir, state['vocab'])), state['lowercase'],
                              state['strip_accents'])
  with open(os.path.join(workdir, state['model']), 'rb') as f:
    return SentencePieceTokenizer(f.read())


def build(spec: str, texts_fn, vocab_size: int, special: Sequence[str] = ()):
  """A new tokenizer as `data.tokenizer` asks: 'char', 'sentencepiece' or a .model path.

  `texts_fn()` returns an iterable of the training texts (called only if needed).
  """
  if spec == 'char':
    return CharTokenizer.from_text(texts_fn())
  if spec in ('sentencepiece', 'spm', 'unigram', 'bpe'):
    if vocab_size <= 0:
      raise ConfigError('data.tokenizer=sentencepiece needs model.vocab_size > 0 (e.g. 8000)')
    model_type = 'bpe' if spec == 'bpe' else 'unigram'
    return SentencePieceTokenizer.train(texts_fn(), vocab_size, model_type, special)
  if os.path.isfile(spec):
    with open(spec, 'rb') as f:
      return SentencePieceTokenizer(f.read())
  raise ConfigError(f'data.tokenizer={spec!r}: expected char, sentencepiece, bpe or a sentencepiece .model file')


def check_matches(tok, spec: str, where: str) -> None:
  """A ConfigError unless `tok` (a workdir's) is what `data.tokenizer=spec` asks for."""
  if spec == 'char':
    same = tok.kind == 'char'
  elif spec in ('sentencepiece', 'spm', 'unigram', 'bpe'):
    same = tok.kind == 'sentencepiece'
  elif os.path.isfile(spec):
    with open(spec, 'rb') as f:
      same = tok.kind == 'sentencepiece' and tok.model_proto == f.read()
  else:
    same = True   # build() names what is wrong with the spec itself
  if not same:
    raise ConfigError(f'{where} holds the {tok.kind} tokenizer this run began with, but data.tokenizer={spec!r}; '
                      'a run resumes with its own tokenizer: use a new --workdir for another one')


def _atomic_write(path: str, data: bytes) -> None:
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)
