"""A run's text corpus: which files train, which are held out, and the run's tokenizer."""

import os

import jax

from ssl_jax import parallel
from ssl_jax.data import text, tokenizer as tokenizers


class TextCorpus:
  """Training and held-out token streams of `data.path` / `data.eval_path`, tokenised once.

  Without `data.eval_path` the last `data.eval_fraction` of the training stream is held out
  (nanoGPT's split of tinyshakespeare: first 90% train, last 10% val).
  """

  def __init__(self, config, workdir: str, special=()):
    data = config.data
    self.train_paths = text.resolve_paths(data.path, 'data.path')
    if data.prepare.enabled:      # cleaned and de-duplicated first (cached), on process 0
      self.train_paths = [prepare_on_one_host(self.train_paths, workdir, data.prepare)]
    self.eval_paths = text.resolve_paths(data.eval_path, 'data.eval_path') if data.eval_path else []
    self.tokenizer = run_tokenizer(
        config, workdir, lambda: text.read_texts(self.train_paths + self.eval_paths), special)
    cache = os.path.join(workdir, 'cache')
    tok_id = tokenizers.fingerprint(self.tokenizer)
    stream = text.token_file(self.train_paths, self.tokenizer, tok_id, cache)
    if self.eval_paths:
      self.train_tokens = stream
      self.eval_tokens = text.token_file(self.eval_paths, self.tokenizer, tok_id, cache)
    else:
      split = int(len(stream) * (1 - data.eval_fraction))
      self.train_tokens, self.eval_tokens = stream[:split], stream[split:]


def prepare_on_one_host(paths, workdir: str, settings) -> str:
  """The prepared corpus of `paths` (ssl_jax/data/prepare.py), made by process 0 while the
  other hosts wait, so every host reads the same token stream."""
  from ssl_jax.data import prepare  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, 'prepared', 'corpus.txt')
  if jax.process_index() == 0:
    path, report = prepare.prepared_corpus(paths, workdir, settings)
    print(prepare.table(report), flush=True)
  if jax.process_count() > 1:
    parallel.barrier('ssl_jax corpus prepared')
  return path


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
      tokenizers.check_matches(tok, config.data.tokenizer, os.path.join(workdir, tokenizers.TOKENIZER_FILE),
                                config.data)
    return tok
  if jax.process_index() == 0:
    tok = tokenizers.load(config.init_from) if config.init_from else None
    if tok is None:
      tok = tokenizers.build(config.data.tokenizer, texts_fn, config.model.vocab_size, special, config.data)
    tokenizers.save(tok, workdir)
  if jax.process_count() > 1:
    parallel.barrier('ssl_jax tokenizer saved')
    tok = tokenizers.load(workdir)
  return tok
