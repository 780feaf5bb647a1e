"""A training workdir's bookkeeping: the lock of the run training there, and its saved config.

`config.json` is the config of the newest run; when a run starts in a workdir whose saved
config differs, the old one and the keys that changed go to `config_history.jsonl` first,
so a resume with another learning rate leaves a record instead of overwriting silently.
"""

import json
import os
import socket
import threading
import time
import uuid

import ml_collections

from ssl_jax import config as config_lib, storage

CONFIG = 'config.json'
HISTORY = 'config_history.jsonl'
LOCK = 'run.lock'
LEASE_S = 90          # a lock not renewed for this long is a dead run's (on another machine)
HEARTBEAT_S = 20      # how often the run holding the lock renews it


class TrainingError(RuntimeError):
  """A run that cannot go on (too many non-finite steps in a row, a busy workdir)."""


class Lock:
  """WORKDIR/run.lock: the run training there, as a lease every host and machine can read.

  It holds the holder's host, PID, a token of its own and when it was last renewed; a thread
  renews it every HEARTBEAT_S. A second run refuses while the holder lives: on the same
  machine while its PID is alive, from another machine while the lease is fresh. A lock left
  by a killed run is taken over (at once on its own machine, after LEASE_S elsewhere). The
  workdir may be a folder or a gs:// URL: the lock is one whole object, written and read back.
  """

  def __init__(self, workdir: str):
    self.path = storage.join(workdir, LOCK)
    self.workdir = workdir
    self.held = False
    self.token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread = None

  def _record(self) -> dict:
    return {'host': socket.gethostname(), 'pid': os.getpid(), 'token': self.token, 'renewed': time.time()}

  def _read(self) -> dict:
    try:
      return json.loads(storage.read_text(self.path))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
      return {}

  def acquire(self) -> None:
    owner = self._read()
    if owner and owner.get('token') != self.token:
      self._refuse_if_live(owner)
    storage.write_text(self.path, json.dumps(self._record()))
    time.sleep(0.05 if not storage.is_url(self.path) else 0.5)
    owner = self._read()     # two starting at once: the last write wins, the other backs off
    if owner.get('token') != self.token:
      self._refuse_if_live(owner, racing=True)
    self.held = True
    _HELD.add(self.token)
    self._thread = threading.Thread(target=self._renew, name='ssl_jax run.lock', daemon=True)
    self._thread.start()

  def _refuse_if_live(self, owner: dict, racing: bool = False) -> None:
    host, pid = owner.get('host'), owner.get('pid', -1)
    if host == socket.gethostname():
      live = owner.get('token') in _HELD if pid == os.getpid() else _alive(pid)
    else:
      live = time.time() - float(owner.get('renewed', 0)) < LEASE_S
    if live or racing:
      where = f'pid {pid}' + ('' if host == socket.gethostname() else f' on {host}')
      later = '' if host == socket.gethostname() else f' (if it was killed, its lease ends within {LEASE_S} s)'
      raise TrainingError(f'another run ({where}) is training in {self.workdir}; wait for it, or stop it, '
                          f'or choose another --workdir{later}')

  def _renew(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        if self._read().get('token') == self.token:
          storage.write_text(self.path, json.dumps(self._record()))
      except OSError:
        pass          # a missed renewal: the next one may get through; the lease is several beats long

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=10)
    if self.held and self._read().get('token') == self.token:
      storage.remove(self.path)
    self.held = False
    _HELD.discard(self.token)


_HELD = set()    # the tokens of the locks this process holds


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return pid > 0


NONCE = 'hosts.nonce'


def check_shared(workdir: str) -> None:
  """Every host of the job must see the same workdir: process 0 writes a nonce there and
  every host reads it back. A workdir on each host's own disk (what a TPU VM has) is a
  one-line error on every host, before anything is written that the others would miss."""
  import jax  # pylint: disable=import-outside-toplevel
  from ssl_jax import parallel  # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1:
    return
  path = storage.join(workdir, NONCE)
  nonce = uuid.uuid4().hex if jax.process_index() == 0 else ''
  if nonce:
    storage.write_text(path, nonce)
  nonce = parallel.gather_text('ssl_jax workdir nonce', nonce)[0]
  try:
    seen = storage.read_text(path)
  except FileNotFoundError:
    seen = ''
  seen_by = parallel.gather_text('ssl_jax workdir nonce seen', '1' if seen == nonce else '0')
  parallel.barrier('ssl_jax workdir nonce read')   # host 0, the coordinator, must not exit before all have read
  if jax.process_index() == 0:
    storage.remove(path)
  if '0' in seen_by:
    blind = [str(i) for i, ok in enumerate(seen_by) if ok != '1']
    raise TrainingError(f'workdir {workdir} is not shared: host{"s" * (len(blind) > 1)} {", ".join(blind)} of '
                        f'{jax.process_count()} cannot see what host 0 wrote there; give every host the same '
                        f'workdir: a shared folder (NFS, Filestore) or a gs:// URL')


def config_changes(old: dict, new: dict) -> dict:
  """{dotted key: (old value, new value)} for the leaves that differ (added keys included)."""
  flat_old = {config_lib.renamed(k, notice=False): v for k, v in config_lib.flatten(old).items()}
  flat_new = config_lib.flatten(new)
  return {k: (flat_old.get(k), v) for k, v in flat_new.items() if k in flat_old and flat_old[k] != v}


def save_config(workdir: str, config, step: int) -> dict:
  """Writes WORKDIR/config.json; returns the keys that changed since the saved one, whose
  previous version is appended to config_history.jsonl (with the step this run starts at)."""
  path = storage.join(workdir, CONFIG)
  new = json.loads(config.to_json())
  changes = {}
  if storage.exists(path):
    old = json.loads(storage.read_text(path))
    changes = config_changes(old, new)
    if changes:
      # The history is rewritten whole (an object store has no append).
      history_path = storage.join(workdir, HISTORY)
      history = storage.read_text(history_path) if storage.exists(history_path) else ''
      record = {'replaced_at_step': step, 'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
                'changed': {k: list(v) for k, v in changes.items()}, 'config': old}
      storage.write_text(history_path, history + json.dumps(record) + '\n')
  storage.write_text(path, config.to_json(indent=2))
  return changes


def saved_config(workdir: str):
  """The config a workdir (a folder or a URL) saved, with keys added since at their defaults."""
  path = storage.join(workdir, CONFIG)
  if not storage.exists(path):
    raise config_lib.ConfigError(f'{path} does not exist: is {workdir} a training workdir?')
  try:
    saved = json.loads(storage.read_text(path))
  except json.JSONDecodeError as e:
    raise config_lib.ConfigError(f'{path} is not valid JSON ({e})') from None
  config = config_lib.base_config()   # keys added since the run was saved keep their defaults
  for key, value in config_lib.flatten(saved).items():
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      if part not in node:
        node[part] = ml_collections.ConfigDict()
      node = node[part]
    if leaf == 'remat' and isinstance(value, bool):   # saved before remat named a policy
      value = 'full' if value else 'none'
    node[leaf] = value
  config_lib.move_renamed(config, path)   # keys that moved since it was saved
  config.lock()
  return config
