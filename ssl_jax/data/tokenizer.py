"""Tokenizers: character level, sentencepiece trained on the run's own corpus (or loaded),
Hugging Face `tokenizers` (a tokenizer.json: byte-level BPE as GPT-2's, WordPiece,
Llama-style), tiktoken encodings read from a local .tiktoken file, and BERT's WordPiece.

`data.tokenizer` is one of
  char                   one token per character of the corpus
  sentencepiece | bpe    a sentencepiece unigram (or BPE) model of model.vocab_size pieces, trained
                         on a bounded sample streamed from the corpus (data.tokenizer_sample_mb)
  PATH.model             a sentencepiece model
  PATH/tokenizer.json    a Hugging Face tokenizer (any file the `tokenizers` library reads)
  PATH.tiktoken          a tiktoken encoding (base64 token and rank a line); its split regex is
                         data.tiktoken_pattern (gpt2, or the regex itself) and its special
                         tokens data.tiktoken_special_tokens ('NAME:ID,...'; '' = <|endoftext|>
                         right after the last rank, as GPT-2's 50256)
Nothing is downloaded.

A run's tokenizer is saved in its workdir (`tokenizer.json`, our small record of its kind,
plus `tokenizer.model`, `hf_tokenizer.json`, `tokenizer.tiktoken` or `vocab.txt`) and
reloaded from there on resume, so a resumed run never re-derives it. `load(directory)` is
the one way to read a directory's tokenizer: ours, or one a Hugging Face checkpoint
directory ships (vocab.txt, tokenizer.json, or vocab.json + merges.txt). Every file is read and
written through ssl_jax.storage, so a workdir (and a tokenizer file) may be a gs:// URL.
"""

import hashlib
import io
import json
import os
import tempfile
from typing import Iterable, List, Sequence

import numpy as np
import sentencepiece as spm
from ssl_jax import storage
from ssl_jax.errors import ConfigError
from ssl_jax.data.text import DataError
from ssl_jax.data.tiktoken_tokenizer import TIKTOKEN_FILE, TiktokenTokenizer, tiktoken_pattern
from ssl_jax.data.wordpiece import WordPieceTokenizer

TOKENIZER_FILE = 'tokenizer.json'
SPM_FILE = 'tokenizer.model'
HF_FILE = 'hf_tokenizer.json'         # a Hugging Face tokenizer.json, kept beside our record
SPM_KINDS = ('sentencepiece', 'spm', 'unigram', 'bpe')
# data.tokenizer of a `convert --from_hf` workdir: the kind of the tokenizer saved in it.
SAVED_KINDS = ('huggingface', 'tiktoken', 'wordpiece')


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
    failed = []

    def lines():   # a bad source stops the stream; its error is raised, not sentencepiece's wrapping of it
      try:
        for t in texts:
          yield from (line for line in t.split('\n') if line.strip())
      except DataError as e:
        failed.append(e)
        raise

    try:
      _train_spm(out, lines(), vocab_size, model_type, special, max_sentences)
    except RuntimeError:
      if not failed:
        raise
    if failed:
      raise failed[0]
    return cls(out.getvalue())

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.sp.encode(text), dtype=np.int32)

  def encode_batch(self, texts: Sequence[str]):
    return [np.asarray(ids, dtype=np.int32) for ids in self.sp.encode(list(texts))]

  def decode(self, ids) -> str:
    return self.sp.decode([int(i) for i in np.asarray(ids).tolist()])

  def piece_id(self, piece: str) -> int:
    return self.sp.piece_to_id(piece)

  def state(self) -> dict:
    return {'kind': 'sentencepiece', 'model': SPM_FILE}


class HFTokenizer:
  """A Hugging Face `tokenizers` tokenizer (its tokenizer.json). Special tokens written in the
  text are recognised; none are added around it (the data pipeline frames sequences itself)."""
  kind = 'huggingface'

  def __init__(self, json_text: str, where: str = 'tokenizer.json'):
    import tokenizers  # pylint: disable=import-outside-toplevel
    try:
      self.tok = tokenizers.Tokenizer.from_str(json_text)
    except Exception as e:  # pylint: disable=broad-except   (the library raises plain Exceptions)
      raise DataError(f'{where} does not read as a Hugging Face tokenizer ({str(e).splitlines()[0][:200]})') from None
    self.json_text = json_text
    self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)

  @classmethod
  def from_file(cls, path: str) -> 'HFTokenizer':
    return cls(_read_text(path), path)

  @classmethod
  def from_vocab_merges(cls, vocab_path: str, merges_path: str) -> 'HFTokenizer':
    """GPT-2's own files (vocab.json + merges.txt) as a byte-level BPE; the vocabulary's
    <|endoftext|> (and any `<|...|>` entry) stays one special token."""
    import tokenizers  # pylint: disable=import-outside-toplevel
    from tokenizers import decoders, models, pre_tokenizers  # pylint: disable=import-outside-toplevel
    vocab_text = _read_text(vocab_path)
    with tempfile.TemporaryDirectory() as local:   # the library reads local files only
      vocab_file, merges_file = os.path.join(local, 'vocab.json'), os.path.join(local, 'merges.txt')
      storage.write_text(vocab_file, vocab_text)
      storage.download(merges_path, merges_file)
      try:
        tok = tokenizers.Tokenizer(models.BPE.from_file(vocab_file, merges_file))
      except Exception as e:  # pylint: disable=broad-except
        raise DataError(f'{vocab_path} + {merges_path} do not read as a BPE ({str(e).splitlines()[0][:200]})') from None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [t for t in json.loads(vocab_text) if t.startswith('<|') and t.endswith('|>')]
    if specials:
      tok.add_special_tokens(specials)
    return cls(tok.to_str(), vocab_path)

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

  def encode_batch(self, texts: Sequence[str]):
    return [np.asarray(e.ids, dtype=np.int32) for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids) -> str:
    return self.tok.decode([int(i) for i in np.asarray(ids).tolist()], skip_special_tokens=False)

  def piece_id(self, piece: str) -> int:
    found = self.tok.token_to_id(piece)
    return -1 if found is None else found

  def state(self) -> dict:
    return {'kind': self.kind, 'file': HF_FILE}


def _train_spm(out, lines, vocab_size: int, model_type: str, special: Sequence[str], max_sentences: int) -> None:
  spm.SentencePieceTrainer.train(
        sentence_iterator=lines, model_writer=out, vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0, byte_fallback=True, input_sentence_size=max_sentences,
        normalization_rule_name='identity',  # keep text as it is: newlines and all round-trip
        hard_vocab_limit=False,              # a small corpus gets fewer pieces, not an error
        shuffle_input_sentence=True, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
        unk_piece='[UNK]' if '[UNK]' in special else '<unk>',
        control_symbols=[s for s in special if s != '[UNK]'], split_digits=True, remove_extra_whitespaces=False,
        train_extremely_large_corpus=False, minloglevel=2)


def fingerprint(tok) -> str:
  """A short hash that tells two tokenizers apart (stored with checkpoints)."""
  if tok.kind == 'sentencepiece':
    payload = tok.model_proto
  elif tok.kind == 'huggingface':
    payload = tok.json_text.encode()
  elif tok.kind == 'tiktoken':
    payload = tok.bpe_file + json.dumps([tiktoken_pattern(tok.pattern_spec), sorted(tok.special.items())]).encode()
  elif tok.kind == 'wordpiece':
    payload = json.dumps([tok.vocab, tok.lowercase, tok.strip_accents]).encode()
  else:
    payload = tok.state()['chars'].encode()
  return hashlib.sha1(payload).hexdigest()[:16]


def save(tok, workdir: str) -> None:
  """Each file written whole; our record (tokenizer.json) last, so it names only saved files."""
  storage.makedirs(workdir)
  if tok.kind == 'sentencepiece':
    storage.write_bytes(storage.join(workdir, SPM_FILE), tok.model_proto)
  if tok.kind == 'wordpiece':
    storage.write_bytes(storage.join(workdir, tok.state()['vocab']), ''.join(f'{t}\n' for t in tok.vocab).encode())
  if tok.kind == 'huggingface':
    storage.write_text(storage.join(workdir, HF_FILE), tok.json_text)
  if tok.kind == 'tiktoken':
    storage.write_bytes(storage.join(workdir, TIKTOKEN_FILE), tok.bpe_file)
  storage.write_text(storage.join(workdir, TOKENIZER_FILE), json.dumps(tok.state()))


def load(directory: str):
  """The tokenizer of `directory`, or None if it has none: the one a run saved there, else
  the one a Hugging Face checkpoint directory ships: vocab.txt (WordPiece, casing from
  tokenizer_config.json), tokenizer.json, or vocab.json + merges.txt (byte-level BPE)."""
  path = storage.join(directory, TOKENIZER_FILE)
  state, text = None, None
  if storage.exists(path):
    text = _read_text(path)
    try:
      state = json.loads(text)
    except json.JSONDecodeError as e:
      raise DataError(f'{path} is not valid JSON ({e})') from None
  if state is not None and 'kind' in state:
    return _from_state(state, directory)
  if storage.exists(storage.join(directory, 'vocab.txt')):   # BERT's own tokenizer, exactly
    return _wordpiece(directory)
  if state is not None:                                        # a Hugging Face tokenizer.json
    return HFTokenizer(text, path)
  vocab, merges = storage.join(directory, 'vocab.json'), storage.join(directory, 'merges.txt')
  if storage.exists(vocab) and storage.exists(merges):
    return HFTokenizer.from_vocab_merges(vocab, merges)
  return None


def read_vocab(path: str) -> List[str]:
  """vocab.txt (a local path or a URL): one token a line; a token's id is its line number."""
  return [line.rstrip('\n') for line in io.StringIO(_read_text(path))]


def _read_text(path: str) -> str:
  """A text file (a local path or a URL) as open() in text mode reads it, CRLF and CR line ends
  made LF: a tokenizer's text (and so its fingerprint) is the same read from anywhere."""
  return io.StringIO(storage.read_text(path), newline=None).read()


def _wordpiece(directory: str) -> WordPieceTokenizer:
  """A Hugging Face directory's vocab.txt, cased as its tokenizer_config.json says (what
  WordPieceTokenizer.load reads from a local folder, read here through storage)."""
  lowercase, strip_accents = True, None
  settings_path = storage.join(directory, 'tokenizer_config.json')
  if storage.exists(settings_path):
    settings = json.loads(storage.read_text(settings_path))
    lowercase, strip_accents = settings.get('do_lower_case', True), settings.get('strip_accents')
  return WordPieceTokenizer(read_vocab(storage.join(directory, 'vocab.txt')), lowercase, strip_accents)


def _from_state(state: dict, workdir: str):
  kind = state['kind']
  if kind == 'char':
    return CharTokenizer(state['chars'])
  if kind == 'wordpiece':
    return WordPieceTokenizer(read_vocab(storage.join(workdir, state['vocab'])), state['lowercase'],
                              state['strip_accents'])
  if kind == 'huggingface':
    return HFTokenizer.from_file(storage.join(workdir, state['file']))
  if kind == 'tiktoken':
    return TiktokenTokenizer.from_file(storage.join(workdir, state['file']), state['pattern'], state['special_tokens'])
  return SentencePieceTokenizer(storage.read_bytes(storage.join(workdir, state['model'])))


def from_path(spec: str, data=None):
  """The tokenizer in the file (or directory) `spec` names: a sentencepiece .model, a Hugging
  Face tokenizer.json, a .tiktoken file (`data` gives its pattern and special tokens), or a
  directory holding one of these (a local path or a URL); None if `spec` names no such file."""
  if storage.isdir(spec):
    return load(spec)
  if not storage.exists(spec):
    return None
  if spec.endswith('.tiktoken'):
    return TiktokenTokenizer.from_file(spec, getattr(data, 'tiktoken_pattern', 'gpt2'),
                                       getattr(data, 'tiktoken_special_tokens', ''))
  if spec.endswith('.json'):
    return HFTokenizer.from_file(spec)
  proto = storage.read_bytes(spec)
  try:
    return SentencePieceTokenizer(proto)
  except Exception:  # pylint: disable=broad-except   (sentencepiece raises RuntimeError or OSError)
    raise ConfigError(f'data.tokenizer={spec!r}: not a sentencepiece model, tokenizer.json or .tiktoken file') from None


def build(spec: str, texts_fn, vocab_size: int, special: Sequence[str] = (), data=None):
  """A new tokenizer as `data.tokenizer` asks (see the module docstring); `data` is the
  run's config.data (tiktoken's pattern and special tokens).

  `texts_fn()` returns an iterable of the training texts (called only if needed).
  """
  if spec == 'char':
    return CharTokenizer.from_text(texts_fn())
  if spec in SPM_KINDS:
    if vocab_size <= 0:
      raise ConfigError('data.tokenizer=sentencepiece needs model.vocab_size > 0 (e.g. 8000)')
    model_type = 'bpe' if spec == 'bpe' else 'unigram'
    return SentencePieceTokenizer.train(texts_fn(), vocab_size, model_type, special)
  if spec in SAVED_KINDS:
    raise ConfigError(f'data.tokenizer={spec!r} names the {spec} tokenizer saved in a workdir (an imported '
                      'checkpoint\'s), and there is none here: give the path of its file instead')
  tok = from_path(spec, data)
  if tok is None:
    raise ConfigError(f'data.tokenizer={spec!r}: expected char, sentencepiece, bpe, or a path to a sentencepiece '
                      '.model, a Hugging Face tokenizer.json or a .tiktoken file')
  return tok


def check_matches(tok, spec: str, where: str, data=None) -> None:
  """A ConfigError unless `tok` (a workdir's) is what `data.tokenizer=spec` asks for."""
  if spec == 'char':
    same = tok.kind == 'char'
  elif spec in SPM_KINDS:
    same = tok.kind == 'sentencepiece'
  elif spec in SAVED_KINDS:
    same = tok.kind == spec
  elif storage.exists(spec):
    wanted = from_path(spec, data)
    same = wanted is not None and fingerprint(wanted) == fingerprint(tok)
  else:
    same = True   # build() names what is wrong with the spec itself
  if not same:
    raise ConfigError(f'{where} holds the {tok.kind} tokenizer this run began with, but data.tokenizer={spec!r}; '
                      'a run resumes with its own tokenizer: use a new --workdir for another one')

