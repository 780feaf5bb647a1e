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
function of the sources alone, never of the number of workers, hosts or their timing: a
build that was killed starts again from the shards that are complete (their .json exists)
and ends with files identical to an uninterrupted build's.

Built once for the whole job: unit i is tokenised by host i mod N; the hosts then wait for
each other and process 0 writes index.json. Every file is written under a temporary name
unique to its build (a uuid: containers have equal pids) and renamed into place, so builds
that race on one folder (hosts, or two jobs) only ever replace a shard by an identical one;
a build never deletes another's temporaries, only those untouched for STALE_S (a killed
build's). On an object-store cache (a gs:// workdir) each host tokenises its units into its
local copy (`data.cache_dir`, default ~/.cache/ssl_jax/tokens), uploads them (.json last),
waits, and downloads the shards it lacks: the readers memory-map local files. A cache
found in the bucket is only downloaded. Each host prints one line saying what it did.

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
import tempfile
import time
import uuid
from typing import Callable, List, Optional, Sequence

import numpy as np

from ssl_jax import parallel, storage
from ssl_jax.data import documents, prepare, shard_readers, sources
# ShardedDocuments stays importable from here: ssl_jax/tasks/mlm_nsp.py reads it as shards.ShardedDocuments.
from ssl_jax.data.shard_readers import INDEX, ShardedDocuments  # noqa: F401  pylint: disable=unused-import
from ssl_jax.data.shard_readers import local_cache_dir
from ssl_jax.data.text import DataError

ENCODE_BATCH_CHARS = 1 << 20       # text handed to the tokenizer at once
SEPARATOR = '\n\n'                  # after every document, as text files are joined
STALE_S = 24 * 3600                 # a temporary untouched this long is a killed build's: removed
TOKEN_FILES = ('bin', 'docs')       # a shard's files (its .json, written last, aside)
SENTENCE_FILES = ('bin', 'sents', 'docs', 'pairs')


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
  return storage.join(cache_dir, f'{"sentences" if sentences else "tokens"}-{h.hexdigest()[:16]}')


Gather = Callable[[str, str], List[str]]


def build(paths: Sequence[str], tokenizer, tokenizer_dir: str, fingerprint: str, cache_dir: str, *, fmt: str = '',
          text_field: str = 'text', workers: int = 0, unit_bytes: int = 64 << 20, sentences: bool = False,
          select: Optional[dict] = None, local_dir: str = '', host: Optional[int] = None,
          hosts: Optional[int] = None, gather: Optional[Gather] = None) -> str:
  """The token cache of `paths` (built, or finished, here and on the job's other hosts);
  returns the local folder the readers open.

  `tokenizer` is the run's, saved in `tokenizer_dir` (workers load it from there; its
  `fingerprint` checks they did). With `sentences`, BERT's documents of sentences (above).
  With `select` (prepare.selection), only the documents the cleaning filters kept, a file a
  unit (a file's documents are numbered from its start). `cache_dir` is a folder every host
  sees or a URL (then the local copy goes under `local_dir`, see local_cache_dir). `host`
  of `hosts` and `gather` (every host's value of a string, a barrier: `jax_gather`) default
  to the JAX job's. Bad input is a DataError on every host; the partial cache is removed."""
  target = cache_dir_for(paths, fingerprint, cache_dir, fmt, text_field, unit_bytes, sentences,
                         select['key'] if select else '')
  remote = storage.is_url(target)
  out = os.path.join(local_cache_dir(local_dir), storage.basename(target)) if remote else target
  if hosts is None:
    host, hosts = parallel.this_host()
  host = host or 0
  gather = gather or (jax_gather if hosts > 1 else lambda name, value: [value])
  what = 'sentence cache' if sentences else 'token cache'
  tag = f'{what} {storage.basename(target)}'
  exts = SENTENCE_FILES if sentences else TOKEN_FILES
  tmp = f'.tmp-{uuid.uuid4().hex[:12]}'            # this build's temporaries (unique across hosts and containers)
  os.makedirs(out, exist_ok=True)
  _remove_stale(out)
  found = storage.exists(storage.join(target, INDEX))
  dtype = np.dtype(token_dtype(tokenizer.vocab_size)).name
  built, count, error = 0, 0, ''
  if not found:
    try:
      units = ([sources.Unit(p, 'prepared') for p in paths] if select is not None
               else sources.units(paths, fmt, unit_bytes, split_text=not sentences))
      count = len(units)
      built = _build_share(units, host, hosts, out, target if remote else '', exts, tmp, tokenizer, tokenizer_dir,
                           fingerprint, text_field, dtype, select, sentences, workers)
    except (DataError, storage.StorageError) as e:     # told to every host: all stop with it
      error = f'{type(e).__name__}:{e}'
    except BaseException:
      _remove_own(out, tmp)
      raise
  errors = [e for e in gather(f'{tag}: shards built', error) if e]
  if errors:
    _remove_own(out, tmp)
    kind, message = errors[0].split(':', 1)
    if kind == 'StorageError':
      raise storage.StorageError(message)       # the shards built so far are kept: a rerun resumes
    _remove_partial(out, target, remote, host)
    raise DataError(message)
  local_index = os.path.join(out, INDEX)
  if remote and found and not os.path.exists(local_index):     # the store's cache: copied here
    count = len(json.loads(storage.read_text(storage.join(target, INDEX)))['shards'])
    shard_readers.download_missing(target, out, count, exts)
    storage.download(storage.join(target, INDEX), local_index)
  elif not found:
    if remote and not os.path.exists(local_index):
      shard_readers.download_missing(target, out, count, exts)   # the other hosts' shards
    if remote or not os.path.exists(local_index):
      index = _index(out, count, paths, fingerprint, dtype, fmt, text_field, unit_bytes, sentences)
      if sentences and index['documents'] == 0:
        error = f'empty corpus: no sentences in {", ".join(paths[:3])}'
      elif index['tokens'] == 0:
        error = f'empty corpus: {", ".join(paths[:3])}{" ..." if len(paths) > 3 else ""} hold no text'
      if error:                                  # every host finds it, from the same shards
        _remove_partial(out, target, remote, host)
        raise DataError(error)
      if remote or host == 0:
        _write_json(local_index, index)          # the shared folder's, or this host's copy's
      if remote and host == 0:
        storage.upload(local_index, storage.join(target, INDEX))
  gather(f'{tag}: indexed', '')
  if found:
    print(f'{what}: found in {target}' + (f', local copy {out}' if remote else ''), flush=True)
  else:
    print(f'{what}: tokenised {built} of {count} units here (host {host} of {hosts}), {target}', flush=True)
  return out


def jax_gather(name: str, value: str) -> List[str]:
  """Every process's `value`, in process order, once all have got here: a barrier first (hours,
  as tokenising may take), then parallel.gather_text, so one host's bad input is every host's
  one-line DataError, not a wait for it."""
  parallel.barrier(name)
  return ['' if v == '-' else v for v in parallel.gather_text(f'ssl_jax cache {name}', value or '-', timeout_s=60)]


def _build_share(units, host, hosts, out, remote_out, exts, tmp, tokenizer, tokenizer_dir, fingerprint, text_field,
                 dtype, select, sentences, workers) -> int:
  """Tokenises this host's units (i mod hosts) that are not built yet into `out`, uploading
  each (its .json last) to `remote_out` if given; returns how many it tokenised."""
  mine = [i for i in range(len(units)) if i % hosts == host]
  if remote_out:
    in_store = set(storage.listdir(remote_out))
    mine = [i for i in mine if os.path.basename(_meta_path(out, i)) not in in_store]
  todo = [i for i in mine if not os.path.exists(_meta_path(out, i))]
  upload = (lambda i: _upload(out, remote_out, i, exts)) if remote_out else (lambda i: None)
  for i in mine:
    if i not in todo:
      upload(i)                                  # tokenised here before, not uploaded yet
  if not todo:
    return 0
  local_tok = ''
  if storage.is_url(tokenizer_dir) and workers != 1:    # spawned workers load it from a local folder
    local_tok = tokenizer_dir = tempfile.mkdtemp(prefix='ssl_jax-tokenizer-')
    from ssl_jax.data import tokenizer as tokenizers  # pylint: disable=import-outside-toplevel
    tokenizers.save(tokenizer, tokenizer_dir)
  build_unit = _build_sentence_unit if sentences else _build_unit
  jobs = {i: (units[i], i, out, tokenizer_dir, fingerprint, text_field, dtype, tmp) + ((select,) if select else ())
          for i in todo}
  workers = min(workers or default_workers(), max(1, len(jobs)))
  try:
    if workers <= 1:
      for i, job in jobs.items():
        build_unit(*job, tokenizer=tokenizer)
        upload(i)
    else:
      context = multiprocessing.get_context('spawn')   # not fork: the parent runs JAX's threads
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {pool.submit(build_unit, *job): i for i, job in jobs.items()}
        try:
          for f in concurrent.futures.as_completed(futures):
            f.result()
            upload(futures[f])
        except BaseException:
          for f in futures:
            f.cancel()
          raise
  finally:
    if local_tok:
      shutil.rmtree(local_tok, ignore_errors=True)
  return len(todo)


def _upload(out: str, remote_out: str, i: int, exts) -> None:
  for name in shard_readers.unit_files(i, exts):
    storage.upload(os.path.join(out, name), storage.join(remote_out, name))


def _index(out, count, paths, fingerprint, dtype, fmt, text_field, unit_bytes, sentences) -> dict:
  metas = []
  for i in range(count):
    with open(_meta_path(out, i)) as f:
      metas.append(json.load(f))
  index = {'tokenizer': fingerprint, 'dtype': dtype, 'format': fmt, 'text_field': text_field,
           'unit_bytes': unit_bytes, 'sources': [sources.stat(p) for p in paths],
           'tokens': sum(m['tokens'] for m in metas), 'documents': sum(m['documents'] for m in metas),
           'shards': metas}
  if sentences:
    index.update(kind='sentences', sentences=sum(m['sentences'] for m in metas), pairs=sum(m['pairs'] for m in metas))
  return index


def _remove_stale(out: str) -> None:
  """Removes what a killed build left half-written, once nobody can still be writing it
  (untouched for STALE_S); another build's live temporaries are left alone."""
  now = time.time()
  for name in os.listdir(out):
    if '.tmp' in name:
      with contextlib.suppress(FileNotFoundError):
        if now - os.path.getmtime(os.path.join(out, name)) > STALE_S:
          os.remove(os.path.join(out, name))


def _remove_own(out: str, tmp: str) -> None:
  """This build's temporaries (the folder may be gone already: host 0 removes a failed cache)."""
  for name in (os.listdir(out) if os.path.isdir(out) else []):
    if name.endswith(tmp):
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(out, name))


def _remove_partial(out: str, target: str, remote: bool, host: int) -> None:
  """Bad input: leave nothing behind (process 0 removes the shared cache, each host its local copy)."""
  if remote or host == 0:
    shutil.rmtree(out, ignore_errors=True)
  if remote and host == 0:
    storage.remove(target)


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


def _build_unit(unit, i: int, out: str, tokenizer_dir: str, fingerprint: str, text_field: str, dtype: str, tmp: str,
                select: Optional[dict] = None, tokenizer=None) -> dict:
  """Tokenises one unit into shard i: its .bin and .docs, then (last, atomically) its .json;
  written under the build's temporary suffix `tmp` first."""
  tok = tokenizer or _worker_tokenizer(tokenizer_dir, fingerprint)
  encode_batch = getattr(tok, 'encode_batch', None) or (lambda texts: [tok.encode(t) for t in texts])
  bin_path, tmp_suffix = _shard_path(out, i, 'bin'), tmp
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
                         tmp: str, tokenizer=None) -> dict:
  """Tokenises one unit's documents, a sentence at a time, into shard i: .bin, .sents, .docs,
  .pairs, then (last, atomically) its .json."""
  tok = tokenizer or _worker_tokenizer(tokenizer_dir, fingerprint)
  encode_batch = getattr(tok, 'encode_batch', None) or (lambda texts: [tok.encode(t) for t in texts])
  files = {ext: open(_shard_path(out, i, ext) + tmp, 'wb')  # pylint: disable=consider-using-with
           for ext in SENTENCE_FILES}
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
  storage.write_text(path, json.dumps(obj, indent=1))   # atomic, under a name unique to this writer
