"""Where a run's files live: a local (or shared) folder, or an object-store URL such as
gs://bucket/run. Every file a run reads or writes in its workdir goes through here.

Local paths use the os module as they always did; URLs go through fsspec (gcsfs for gs://).
An object store has no folders, no appends and no renames, so:
  - `write_bytes`/`write_text` write a whole file: atomically (a temporary name, then a
    rename) on a disk, as one object upload on a store, which is atomic by itself;
  - `makedirs` is a no-op for a URL (a prefix exists once an object under it does);
  - nothing here appends: a record file is rewritten whole (metrics.MetricLogger).
A store that cannot be reached, a missing bucket or a refused permission is a StorageError
whose one line names the URL: an endpoint that takes no connection at once (gcsfs would retry
it for half a minute), a missing bucket as itself (not as a missing file).
"""

import contextlib
import io
import os
import posixpath
import shutil
import socket
import urllib.parse
import uuid
from typing import List


class StorageError(OSError):
  """A workdir or file that cannot be read or written; the message says which and why."""


def is_url(path: str) -> bool:
  return '://' in str(path)


def join(base: str, *parts: str) -> str:
  if is_url(base):
    return posixpath.join(base, *parts)
  return os.path.join(base, *parts)


def absolute(path: str) -> str:
  """A local path made absolute; a URL as it is (os.path.abspath would turn gs://b into ./gs:/b)."""
  return path if is_url(path) else os.path.abspath(path)


def basename(path: str) -> str:
  return posixpath.basename(path.rstrip('/')) if is_url(path) else os.path.basename(os.path.abspath(path))


def dirname(path: str) -> str:
  return posixpath.dirname(path.rstrip('/')) if is_url(path) else os.path.dirname(path)


def fs_of(url: str):
  """(fsspec filesystem, path within it) of a URL."""
  try:
    import fsspec  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise StorageError(f'{url}: a URL workdir needs fsspec and its filesystem (pip install gcsfs)') from None
  try:
    # No listings cache: other hosts write the same bucket, so a listing cached here goes stale.
    fs, p = fsspec.core.url_to_fs(url, use_listings_cache=False)
  except (ImportError, ValueError) as e:
    protocol = url.split('://', 1)[0]
    raise StorageError(f'{url}: no filesystem for {protocol}:// ({_reason(e)}); for gs:// pip install gcsfs') from None
  _check_reachable(fs, url)
  return fs, p


_REACHED = set()   # endpoints that took a connection in this process
_BUCKETS = set()   # (endpoint, bucket) seen to exist in this process
_PROXY_VARIABLES = ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'ALL_PROXY', 'all_proxy')


def _check_reachable(fs, url: str) -> None:
  """A StorageError at once if the store's endpoint takes no connection: gcsfs retries a
  refused or failed connection for about half a minute, logging a traceback each time. Checked
  once per endpoint and process; not behind a proxy (the proxy makes the connection)."""
  location = getattr(fs, '_location', None)   # gcsfs: http[s]://host[:port] (STORAGE_EMULATOR_HOST or Google's)
  if not isinstance(location, str) or location in _REACHED or any(os.environ.get(v) for v in _PROXY_VARIABLES):
    return
  parts = urllib.parse.urlsplit(location)
  try:
    port = parts.port or (443 if parts.scheme == 'https' else 80)
    socket.create_connection((parts.hostname, port), timeout=10).close()
  except (OSError, ValueError) as e:
    raise StorageError(f'{url}: the store at {location} cannot be reached ({_reason(e)})') from None
  _REACHED.add(location)


def _missing_bucket(url: str) -> str:
  """The bucket of `url` if the store says it does not exist, else '' (also where it cannot
  say: a permission to use objects but not to see the bucket is not a missing bucket)."""
  fs, p = fs_of(url)
  if not hasattr(fs, 'split_path'):   # gcsfs and s3fs have buckets; memory:// and others none
    return ''
  bucket = fs.split_path(p)[0]
  key = (getattr(fs, '_location', ''), bucket)
  if key in _BUCKETS:
    return ''
  try:
    fs.info(bucket)
  except FileNotFoundError:
    return f'{url.split("://", 1)[0]}://{bucket}'
  except Exception:  # pylint: disable=broad-except
    return ''
  _BUCKETS.add(key)
  return ''


def _check_bucket(url: str, doing: str) -> None:
  """Where a URL names nothing: a StorageError if its bucket is missing, not a quiet 'nothing here'."""
  bucket = _missing_bucket(url)
  if bucket:
    raise StorageError(f'{doing} {url} failed: bucket {bucket} does not exist')


@contextlib.contextmanager
def _errors(url: str, doing: str):
  """Turns a store's exceptions (network, auth, missing bucket) into one StorageError line."""
  try:
    yield
  except FileNotFoundError:
    _check_bucket(url, doing)
    raise
  except StorageError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise StorageError(f'{doing} {url} failed: {_reason(e)}') from None


def _reason(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0] if text else ""}'[:300]


def exists(path: str) -> bool:
  if not is_url(path):
    return os.path.exists(path)
  fs, p = fs_of(path)
  with _errors(path, 'looking up'):
    found = fs.exists(p)
  if not found:
    _check_bucket(path, 'looking up')
  return found


def isdir(path: str) -> bool:
  if not is_url(path):
    return os.path.isdir(path)
  fs, p = fs_of(path)
  with _errors(path, 'looking up'):
    found = fs.isdir(p)
  if not found:
    _check_bucket(path, 'looking up')
  return found


def listdir(path: str) -> List[str]:
  """The names directly under `path` ([] where there is nothing)."""
  if not is_url(path):
    return os.listdir(path) if os.path.isdir(path) else []
  fs, p = fs_of(path)
  with _errors(path, 'listing'):
    try:
      fs.invalidate_cache(p)
      found = fs.ls(p, detail=False)
    except FileNotFoundError:
      found = []
  if not found:
    _check_bucket(path, 'listing')
  names = [posixpath.basename(f.rstrip('/')) for f in found]
  return sorted(n for n in names if n and posixpath.join(p.rstrip('/'), n) != p.rstrip('/'))


def makedirs(path: str) -> None:
  if not is_url(path):
    os.makedirs(path, exist_ok=True)


def read_bytes(path: str) -> bytes:
  if not is_url(path):
    with open(path, 'rb') as f:
      return f.read()
  fs, p = fs_of(path)
  with _errors(path, 'reading'):
    return fs.cat_file(p)


def read_text(path: str) -> str:
  return read_bytes(path).decode('utf-8')


def write_bytes(path: str, data: bytes) -> None:
  """Writes the whole file at once: readers see the old file or the new one, never a part."""
  if not is_url(path):
    tmp = f'{path}.tmp-{uuid.uuid4().hex[:12]}'   # unique per writer, also across hosts and containers
    try:
      with open(tmp, 'wb') as f:
        f.write(data)
      os.replace(tmp, path)
    finally:
      with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
    return
  fs, p = fs_of(path)
  with _errors(path, 'writing'):
    fs.pipe_file(p, data)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode('utf-8'))


def remove(path: str) -> None:
  """Deletes a file or a whole folder; nothing there is not an error."""
  if not is_url(path):
    if os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    return
  fs, p = fs_of(path)
  with _errors(path, 'deleting'):
    with contextlib.suppress(FileNotFoundError):
      fs.rm(p, recursive=True)


def move(src: str, dst: str) -> None:
  """Renames a file or folder (on a store: copies, then deletes the source)."""
  if not is_url(src):
    os.rename(src, dst)
    return
  fs, p = fs_of(src)
  with _errors(src, 'moving'):
    fs.mv(p, fs_of(dst)[1], recursive=True)


def upload(local_path: str, url: str) -> None:
  """Copies a local file to `url` (a path of either kind)."""
  if not is_url(url):
    shutil.copyfile(local_path, url)
    return
  fs, p = fs_of(url)
  with _errors(url, 'uploading to'):
    fs.put_file(local_path, p)


def download(url: str, local_path: str) -> None:
  """Copies `url` (a path of either kind) to a local file, atomically."""
  tmp = f'{local_path}.tmp-{uuid.uuid4().hex[:12]}'
  try:
    if not is_url(url):
      shutil.copyfile(url, tmp)
    else:
      fs, p = fs_of(url)
      with _errors(url, 'downloading'):
        fs.get_file(p, tmp)
    os.replace(tmp, local_path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)


def open_file(path: str, mode: str = 'rb'):
  """A file object for reading (a URL's is fetched by fsspec as it is read)."""
  if 'r' not in mode:
    raise ValueError('open_file reads; write whole files with write_bytes or write_text')
  if not is_url(path):
    return open(path, mode, **({} if 'b' in mode else {'encoding': 'utf-8'}))  # pylint: disable=consider-using-with
  fs, p = fs_of(path)
  with _errors(path, 'reading'):
    return fs.open(p, mode)


def buffer() -> io.BytesIO:
  """Where a picture is drawn before write_bytes stores it (matplotlib writes to a file object)."""
  return io.BytesIO()
