"""A run's text corpus: which files train, which are held out, and the run's tokenizer."""

import contextlib
import json

from ssl_jax import parallel, storage
from ssl_jax.errors import ConfigError
from ssl_jax.data import shard_readers, shards, sources, tokenizer as tokenizers
from ssl_jax.data.text import DataError


class TextCorpus:
  """Training and held-out token streams of `data.path` / `data.eval_path`, tokenised once
  into the workdir's sharded token cache (ssl_jax/data/shards.py) and read memory-mapped
  (ssl_jax/data/shard_readers.py).

  Without `data.eval_path` the last `data.eval_fraction` of the training stream is held out
  (nanoGPT's split of tinyshakespeare: first 90% train, last 10% val). Bad input (a corrupt
  file, a JSONL line without the field, ...) is a DataError; the trainer's setup then removes
  the tokenizer and cache this run had begun to write (`kept_only_if_good`).
  """

  def __init__(self, config, workdir: str, special=()):
    data = config.data
    self.train_paths = sources.resolve(data.path, 'data.path')
    # Cleaned and de-duplicated: which documents to keep is decided first (cached), on process 0;
    # the token pipeline then reads only those.
    self.select = (prepare_on_one_host(self.train_paths, workdir, data.prepare, data.cache_dir)
                   if data.prepare.enabled else None)
    self.eval_paths = sources.resolve(data.eval_path, 'data.eval_path') if data.eval_path else []
    self.tokenizer = run_tokenizer(
        config, workdir, lambda: training_texts(config, self.train_paths + self.eval_paths, self.select), special)
    stream = self.token_stream(config, workdir, self.train_paths, self.select)
    caches = [stream.directory]
    if self.eval_paths:
      self.train_tokens = stream
      self.eval_tokens = self.token_stream(config, workdir, self.eval_paths)
      caches.append(self.eval_tokens.directory)
    else:
      split = int(len(stream) * (1 - data.eval_fraction))
      self.train_tokens, self.eval_tokens = stream[:split], stream[split:]
    # What the checkpoints record of the data: a resume on edited files is refused (trainer).
    self.fingerprint = shard_readers.content_fingerprint(*caches)

  def token_stream(self, config, workdir: str, paths, select=None) -> shard_readers.ShardedTokens:
    d = config.data
    cache = storage.join(workdir, 'cache')
    tok_id = tokenizers.fingerprint(self.tokenizer)
    if d.shard_mb <= 0:
      raise ConfigError(f'data.shard_mb={d.shard_mb}: expected a positive size in MB (e.g. 64)')
    directory = shards.build(paths, self.tokenizer, workdir, tok_id, cache, fmt=d.format, text_field=d.text_field,
                             workers=d.tokenize_workers, unit_bytes=max(1, int(d.shard_mb * (1 << 20))), select=select,
                             local_dir=d.cache_dir)
    return shard_readers.ShardedTokens(directory)


def training_texts(config, paths, select=None):
  """What a new tokenizer learns from: every text for `char` (its alphabet must be whole), a
  sample of data.tokenizer_sample_mb streamed from every file for sentencepiece. With
  `select` (prepared), the kept documents, as one file: the prepared corpus's text."""
  d = config.data
  if select is not None:
    texts = _prepared_texts(paths, select, d.tokenizer != 'char', int(d.tokenizer_sample_mb * (1 << 20)))
  elif d.tokenizer == 'char':
    texts = sources.iter_documents(paths, d.format, d.text_field)
  else:
    texts = sources.sample(paths, int(d.tokenizer_sample_mb * (1 << 20)), d.format, d.text_field)
  seen = False
  yield shards.SEPARATOR   # what the token stream puts between documents
  for t in texts:
    seen = seen or bool(t.strip())
    yield t
  if not seen:
    raise DataError(f'empty corpus: {", ".join(paths[:3])}{" ..." if len(paths) > 3 else ""} hold no text')


def _prepared_texts(paths, select, bounded: bool, budget: int):
  """The kept documents of the prepared `paths`, each followed by a blank line, as the text of
  one file (the prepared corpus), then the other files (held out); with `bounded`, the sample
  sources.sample would take of those files."""
  from ssl_jax.data import prepare  # pylint: disable=import-outside-toplevel
  others = [p for p in paths if p not in select['firsts']]
  kept = (text + shards.SEPARATOR for p in paths if p in select['firsts']
          for text in prepare.kept_texts(p, select['firsts'][p], select['keep'], select['documents'],
                                         select['quality']))
  if not bounded:
    yield from kept
    yield from sources.iter_documents(others)
    return
  budget //= 1 + len(others)     # shared as sources.sample shares it between files
  taken = 0
  for text in kept:
    yield text[:budget - taken]
    taken += len(text)
    if taken >= budget:
      break
  yield from sources.sample(others, budget * len(others)) if others else ()


# What a run writes into its workdir before its data is known to be good.
_DATA_FILES = ('cache', tokenizers.TOKENIZER_FILE, tokenizers.SPM_FILE, tokenizers.HF_FILE, tokenizers.TIKTOKEN_FILE,
               'vocab.txt')


@contextlib.contextmanager
def kept_only_if_good(workdir: str):
  """What a run writes into its workdir (tokenizer, token cache) while its data and model are
  made is removed again when they turn out bad (a DataError or ConfigError): the workdir is
  left as it was, and a run with the right data starts clean instead of finding the wrong
  tokenizer there."""
  before = set(storage.listdir(workdir)) if storage.isdir(workdir) else set()
  try:
    yield
  except (DataError, ConfigError):
    if parallel.is_first_host():
      for name in _DATA_FILES:
        path = storage.join(workdir, name)
        if name not in before and storage.exists(path):
          storage.remove(path)
    raise


def prepare_on_one_host(paths, workdir: str, settings, local_dir: str = '') -> dict:
  """Which documents of `paths` the filters keep (ssl_jax/data/prepare.py: shards.build's
  `select`), decided by process 0 while the other hosts wait, so every host reads the same
  token stream. The token pipeline memory-maps keep.bin: on an object-store workdir each host
  reads a local copy (under data.cache_dir, as the token cache's)."""
  from ssl_jax.data import prepare  # pylint: disable=import-outside-toplevel
  if parallel.is_first_host():
    _, report = prepare.prepared_corpus(paths, workdir, settings, write_corpus=False, local_dir=local_dir)
    print(prepare.table(report), flush=True)
  parallel.barrier('ssl_jax corpus prepared')
  report = json.loads(storage.read_text(storage.join(workdir, 'prepare_report.json')))
  keep = prepare.local_copy(storage.join(workdir, 'prepared', prepare.KEEP_FILE), report['key'], local_dir)
  return prepare.selection(paths, keep, report, settings)


def run_tokenizer(config, workdir: str, texts_fn, special=()):
  """The workdir's tokenizer if it has one (a resume), else that of `init_from`'s workdir, else
  a new one; saved in the workdir.

  Process 0 builds and saves it; the other hosts wait, then load that very file.
  """
  tok = tokenizers.load(workdir)
  # Every host looks before process 0 may write one: all take the same branch below.
  parallel.barrier('ssl_jax tokenizer looked up')
  if tok is not None:
    if not config.init_from:
      tokenizers.check_matches(tok, config.data.tokenizer, storage.join(workdir, tokenizers.TOKENIZER_FILE),
                                config.data)
    return tok
  if parallel.is_first_host():
    tok = tokenizers.load(config.init_from) if config.init_from else None
    if tok is None:
      tok = tokenizers.build(config.data.tokenizer, texts_fn, config.model.vocab_size, special, config.data)
    tokenizers.save(tok, workdir)
  parallel.barrier('ssl_jax tokenizer saved')
  if not parallel.is_first_host():
    tok = tokenizers.load(workdir)
  return tok
