"""The token cache: a corpus tokenised once, on every core, into sharded token files.

  cache/tokens-<key>/shard-00000.bin     the tokens of one source unit (sources.Unit), raw
                                         uint16 where the vocabulary fits, else uint32
                     shard-00000.json    written once its .bin is complete: tokens, documents
                     shard-00000.docs    int64 end offset (in the shard) of each document that
                                         ends there (a text file is one document)
                     index.json          written last: the tokenizer's fingerprint, the sources'
                                         sizes and modification times, the shards' token and
                                         document counts
The key hashes the sources (path, size, mtime), the tokenizer's fingerprint, data.format,
data.text_field and the unit size, so a changed input or tokenizer builds a new cache.

BERT's documents are a second kind of cache, `cache/sentences-<key>/`, each sentence
tokenised on its own (ssl_jax/data/documents.py reads the documents; a text file is one
unit, as its documents may span any byte range):
                     shard-00000.bin     the sentences' tokens, one after another
                     shard-00000.sents   int64 end offset (in the shard's tokens) of each sentence
                     shard-00000.docs    int64 end (in the shard's sentences) of each document
                     shard-00000.pairs   int64 the shard's documents of 2+ sentences (IsNext pairs)
`shard_readers.ShardedDocuments` reads them memory-mapped.

Each unit is read and tokenised by one worker process in bounded memory (text in pieces,
tokens written as they come), so memory does not grow with the corpus. Shards are a
function of the sources alone, never of the number of workers or their timing: a build that
was killed starts again from the shards that are complete (their .json exists) and ends
with files identical to an uninterrupted build's.

This module builds the cache; ssl_jax/data/shard_readers.py reads it (`ShardedTokens`, the
shards memory-mapped as one token stream: a host gathers only the windows its rows need).
"""

import concurrent.futures
import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
from typing import Optional, Sequence

import numpy as np

from ssl_jax.data import documents, prepare, sources
# ShardedDocuments stays importable from here: ssl_jax/tasks/mlm_nsp.py reads it as shards.ShardedDocuments.
from ssl_jax.data.shard_readers import INDEX, ShardedDocuments  # noqa: F401  pylint: disable=unused-import
from ssl_jax.data.text import DataError

ENCODE_BATCH_CHARS = 1 << 20       # text handed to the tokenizer at once
SEPARATOR = '\n\n'                  # after every document, as text files are joined


def token_dtype(vocab_size: int):
  return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def default_workers() -> int:
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:
    return max(1, os.cpu_count() or 1)


def cache_dir_for(paths: Sequence[str], fingerprint: str, cache_dir: str, fmt: str = '', text_field: str = 'text',
                  unit_bytes: int = 64 << 20, sentences: bool = False, select_key: str = '') -> str:
  key = [fingerprint, fmt, text_field, unit_bytes] + ([select_key] if select_key else [])   # (old keys unchanged)
  h = hashlib.sha1(json.dumps(key).encode())
  for p in paths:
    st = sources.stat(p)
    h.update(f'{st["path"]}|{st["size"]}|{st["mtime"]}\n'.encode())
  return os.path.join(cache_dir, f'{"sentences" if sentences else "tokens"}-{h.hexdigest()[:16]}')


def _pid_alive(pid: str) -> bool:
  """Whether a process of this id runs on this machine (a tmp file's writer may still be at work)."""
  if not pid.isdigit() or int(pid) == os.getpid():
    return False
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def build(paths: Sequence[str], tokenizer, tokenizer_dir: str, fingerprint: str, cache_dir: str, *, fmt: str = '',
          text_field: str = 'text', workers: int = 0, unit_bytes: int = 64 << 20, sentences: bool = False,
          select: Optional[dict] = None) -> str:
  """The token cache of `paths` (built, or finished, here); returns its folder.

  `tokenizer` is the run's, saved in `tokenizer_dir` (workers load it from there; its
  `fingerprint` checks they did). With `sentences`, BERT's documents of sentences (above).
  With `select` (prepare.selection), only the documents the cleaning filters kept, a file a
  unit (a file's documents are numbered from its start). Bad input is a DataError; the
  partial cache is removed."""
  out = cache_dir_for(paths, fingerprint, cache_dir, fmt, text_field, unit_bytes, sentences,
                      select['key'] if select else '')
  if os.path.exists(os.path.join(out, INDEX)):
    return out
  if select is not None:
    units = [sources.Unit(p, 'prepared') for p in paths]
  else:
    units = sources.units(paths, fmt, unit_bytes, split_text=not sentences)
  os.makedirs(out, exist_ok=True)
  for name in os.listdir(out):      # what a killed build left half-written (not another live process's:
    if '.tmp' in name and not _pid_alive(name.rsplit('.tmp', 1)[1]):   # every host of a job builds it)
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(out, name))
  todo = [i for i in range(len(units)) if not os.path.exists(_meta_path(out, i))]
  dtype = np.dtype(token_dtype(tokenizer.vocab_size)).name
  build_unit = _build_sentence_unit if sentences else _build_unit
  jobs = [(units[i], i, out, tokenizer_dir, fingerprint, text_field, dtype) + ((select,) if select else ())
          for i in todo]
  workers = min(workers or default_workers(), max(1, len(jobs)))
  try:
    if workers <= 1:
      for job in jobs:
        build_unit(*job, tokenizer=tokenizer)
    else:
      context = multiprocessing.get_context('spawn')   # not fork: the parent runs JAX's threads
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(build_unit, *job) for job in jobs]
        try:
          for f in concurrent.futures.as_completed(futures):
            f.result()
        except BaseException:
          for f in futures:
            f.cancel()
          raise
  except DataError:
    shutil.rmtree(out, ignore_errors=True)   # bad input: leave nothing behind
    raise
  metas = []
  for i in range(len(units)):
    with open(_meta_path(out, i)) as f:
      metas.append(json.load(f))
  index = {'tokenizer': fingerprint, 'dtype': dtype, 'format': fmt, 'text_field': text_field,
           'unit_bytes': unit_bytes, 'sources': [sources.stat(p) for p in paths],
           'tokens': sum(m['tokens'] for m in metas), 'documents': sum(m['documents'] for m in metas),
           'shards': metas}
  if sentences:
    index.update(kind='sentences', sentences=sum(m['sentences'] for m in metas), pairs=sum(m['pairs'] for m in metas))
  if sentences and index['documents'] == 0:
    shutil.rmtree(out, ignore_errors=True)
    raise DataError(f'empty corpus: no sentences in {", ".join(paths[:3])}')
  if index['tokens'] == 0:
    shutil.rmtree(out, ignore_errors=True)
    raise DataError(f'empty corpus: {", ".join(paths[:3])}{" ..." if len(paths) > 3 else ""} hold no text')
  _write_json(os.path.join(out, INDEX), index)
  return out


_WORKER_TOKENIZER = {}


def _worker_tokenizer(tokenizer_dir: str, fingerprint: str):
  from ssl_jax.data import tokenizer as tokenizers  # pylint: disable=import-outside-toplevel
  if tokenizer_dir not in _WORKER_TOKENIZER:
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')   # one process a core already
    tok = tokenizers.load(tokenizer_dir)
    if tok is None or tokenizers.fingerprint(tok) != fingerprint:
      raise RuntimeError(f'{tokenizer_dir}: the saved tokenizer is not the run\'s (fingerprint {fingerprint})')
    _WORKER_TOKENIZER[tokenizer_dir] = tok
  return _WORKER_TOKENIZER[tokenizer_dir]


def _build_unit(unit, i: int, out: str, tokenizer_dir: str, fingerprint: str, text_field: str, dtype: str,
                select: Optional[dict] = None, tokenizer=None) -> dict:
  """Tokenises one unit into shard i: its .bin and .docs, then (last, atomically) its .json."""
  tok = tokenizer or _worker_tokenizer(tokenizer_dir, fingerprint)
  encode_batch = getattr(tok, 'encode_batch', None) or (lambda texts: [tok.encode(t) for t in texts])
  bin_path, tmp_suffix = _shard_path(out, i, 'bin'), f'.tmp{os.getpid()}'
  ends, total, pending, pending_chars = [], 0, [], 0
  doc_ends_each = unit.format != 'text'    # a text file is one document: it ends with the file
  if select is not None:                   # prepared: the kept documents of the file
    texts = prepare.kept_texts(unit.path, select['firsts'][unit.path], select['keep'], select['documents'],
                               select['quality'])
  else:
    texts = sources.documents(unit, text_field)
  with open(bin_path + tmp_suffix, 'wb') as f:
    def flush():
      nonlocal total, pending, pending_chars
      for ids in encode_batch(pending):
        f.write(np.asarray(ids).astype(dtype).tobytes())
        total += len(ids)
        if doc_ends_each:
          ends.append(total)
      pending, pending_chars = [], 0

    for text in texts:
      if doc_ends_each:
        text += SEPARATOR
      pending.append(text)
      pending_chars += len(text)
      if pending_chars >= ENCODE_BATCH_CHARS:
        flush()
    flush()
  if not doc_ends_each and unit.last:
    ends.append(total)
  np.asarray(ends, np.int64).tofile(_shard_path(out, i, 'docs') + tmp_suffix)
  os.replace(bin_path + tmp_suffix, bin_path)
  os.replace(_shard_path(out, i, 'docs') + tmp_suffix, _shard_path(out, i, 'docs'))
  meta = {'shard': os.path.basename(bin_path), 'source': unit.path, 'start': unit.start, 'end': unit.end,
          'tokens': total, 'documents': len(ends)}
  _write_json(_meta_path(out, i), meta)
  return meta


def _build_sentence_unit(unit, i: int, out: str, tokenizer_dir: str, fingerprint: str, text_field: str, dtype: str,
                         tokenizer=None) -> dict:
  """Tokenises one unit's documents, a sentence at a time, into shard i: .bin, .sents, .docs,
  .pairs, then (last, atomically) its .json."""
  tok = tokenizer or _worker_tokenizer(tokenizer_dir, fingerprint)
  encode_batch = getattr(tok, 'encode_batch', None) or (lambda texts: [tok.encode(t) for t in texts])
  tmp = f'.tmp{os.getpid()}'
  files = {ext: open(_shard_path(out, i, ext) + tmp, 'wb')  # pylint: disable=consider-using-with
           for ext in ('bin', 'sents', 'docs', 'pairs')}
  counts = {'tokens': 0, 'sentences': 0, 'documents': 0, 'pairs': 0}
  pending, pending_chars = [], 0

  def flush():
    nonlocal pending, pending_chars
    flat = [s for doc in pending for s in doc]
    encoded = encode_batch(flat) if flat else []
    lengths = np.fromiter((len(ids) for ids in encoded), np.int64, len(encoded))
    if len(encoded):
      files['bin'].write(np.concatenate([np.asarray(ids) for ids in encoded]).astype(dtype).tobytes())
    (counts['tokens'] + np.cumsum(lengths)).tofile(files['sents'])
    sizes = np.array([len(doc) for doc in pending], np.int64)
    (counts['sentences'] + np.cumsum(sizes)).tofile(files['docs'])
    (counts['documents'] + np.flatnonzero(sizes >= 2)).astype(np.int64).tofile(files['pairs'])
    counts['tokens'] += int(lengths.sum())
    counts['sentences'] += len(flat)
    counts['documents'] += len(pending)
    counts['pairs'] += int((sizes >= 2).sum())
    pending, pending_chars = [], 0

  try:
    for doc in documents.unit_documents(unit, text_field):
      pending.append(doc)
      pending_chars += sum(map(len, doc))
      if pending_chars >= ENCODE_BATCH_CHARS:
        flush()
    flush()
  finally:
    for f in files.values():
      f.close()
  for ext in files:
    os.replace(_shard_path(out, i, ext) + tmp, _shard_path(out, i, ext))
  meta = {'shard': f'shard-{i:05d}', 'source': unit.path, 'start': unit.start, 'end': unit.end, **counts}
  _write_json(_meta_path(out, i), meta)
  return meta


def _shard_path(out: str, i: int, ext: str) -> str:
  return os.path.join(out, f'shard-{i:05d}.{ext}')


def _meta_path(out: str, i: int) -> str:
  return _shard_path(out, i, 'json')


def _write_json(path: str, obj) -> None:
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)
