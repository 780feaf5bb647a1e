"""A training workdir's bookkeeping: the lock of the run training there, and its saved config.

`config.json` is the config of the newest run; when a run starts in a workdir whose saved
config differs, the old one and the keys that changed go to `config_history.jsonl` first,
so a resume with another learning rate leaves a record instead of overwriting silently.
"""

import json
import os
import time

from ssl_jax import config as config_lib

CONFIG = 'config.json'
HISTORY = 'config_history.jsonl'


class TrainingError(RuntimeError):
  """A run that cannot go on (too many non-finite steps in a row, a busy workdir)."""


class Lock:
  """WORKDIR/run.lock holds the PID and host of the run training there. A second run refuses
  while that process lives; a lock left by a killed run (its PID gone) is taken over."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'run.lock')
    self.held = False

  def acquire(self) -> None:
    host = os.uname().nodename
    if os.path.exists(self.path):
      try:
        with open(self.path) as f:
          owner = json.load(f)
      except (OSError, ValueError):
        owner = {}
      if owner.get('host') == host and owner.get('pid') != os.getpid() and _alive(owner.get('pid', -1)):
        raise TrainingError(f'another run (pid {owner["pid"]}) is training in {os.path.dirname(self.path)}; '
                            f'wait for it, or stop it, or choose another --workdir')
    tmp = f'{self.path}.{os.getpid()}'
    with open(tmp, 'w') as f:
      json.dump({'pid': os.getpid(), 'host': host}, f)
    os.replace(tmp, self.path)
    self.held = True

  def release(self) -> None:
    if self.held and os.path.exists(self.path):
      os.remove(self.path)
    self.held = False


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return pid > 0


def config_changes(old: dict, new: dict) -> dict:
  """{dotted key: (old value, new value)} for the leaves that differ (added keys included)."""
  flat_old = {config_lib.renamed(k, notice=False): v for k, v in config_lib.flatten(old).items()}
  flat_new = config_lib.flatten(new)
  return {k: (flat_old.get(k), v) for k, v in flat_new.items() if k in flat_old and flat_old[k] != v}


def save_config(workdir: str, config, step: int) -> dict:
  """Writes WORKDIR/config.json; returns the keys that changed since the saved one, whose
  previous version is appended to config_history.jsonl (with the step this run starts at)."""
  path = os.path.join(workdir, CONFIG)
  new = json.loads(config.to_json())
  changes = {}
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    changes = config_changes(old, new)
    if changes:
      with open(os.path.join(workdir, HISTORY), 'a') as f:
        f.write(json.dumps({'replaced_at_step': step, 'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
                            'changed': {k: list(v) for k, v in changes.items()}, 'config': old}) + '\n')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config.to_json(indent=2))
  os.replace(tmp, path)
  return changes
