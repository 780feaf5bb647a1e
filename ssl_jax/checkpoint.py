"""Checkpoints through Orbax: asynchronous, keep-N, atomic, restored onto any mesh.

A checkpoint holds the train state (params, optimizer state, step) and a small JSON of
what else a resume needs: the model shape and the tokenizer's fingerprint. The input
pipeline needs nothing more: its batch at step s is a pure function of (seed, s).

Keep-N is ours, not Orbax's: an old checkpoint is deleted only once a newer one has been
written in full, so a save that fails (a full disk, a crash) never costs a valid one. A
checkpoint found corrupt on resume is moved to WORKDIR/checkpoints_corrupt/, out of the count.
"""

import logging
import shutil
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from ssl_jax import parallel, storage


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used here; the message says which and why."""


_MARGIN = 16 * 2**20   # bytes a save needs beyond its arrays (metadata, and room to spare)


def _free_bytes(directory: str) -> Optional[int]:
  if storage.is_url(directory):
    return None      # a bucket has no free space to read; a failed write still ends in a CheckpointError
  try:
    return shutil.disk_usage(directory).free
  except OSError:
    return None


# Words in an OS error that mean the disk (or the quota, or the file size limit) is full.
_NO_SPACE = ('No space left', 'ENOSPC', 'File too large', 'Disk quota exceeded', "os_error_code='28'")


class Checkpointer:

  def __init__(self, workdir: str, keep: int = 2, async_save: bool = True, create: bool = True,
               cleanup: bool = False):
    """`cleanup`: remove half-written saves of a killed run (only a run holding the workdir's lock)."""
    self.directory = storage.join(storage.absolute(workdir), 'checkpoints')   # Orbax takes gs:// as it is
    self.corrupt_directory = storage.join(storage.absolute(workdir), 'checkpoints_corrupt')
    if not create and not storage.isdir(self.directory):
      raise CheckpointError(f'{self.directory} does not exist')
    self.keep = keep
    self.pending = None        # the step whose save runs in the background
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None, create=create, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=cleanup and create))

  def steps(self):
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, meta: dict) -> None:
    """Starts saving (in the background) once the previous save has finished; an existing
    checkpoint of this step is kept. A failed save is a CheckpointError naming it."""
    self.wait()
    if step in self.manager.all_steps():
      return
    need = sum(x.nbytes for x in jax.tree_util.tree_leaves(state)) // jax.process_count() + _MARGIN
    free = _free_bytes(self.directory)
    if free is not None and free < need:
      raise self._failed(step, f'the disk is full (it needs about {need / 2**20:,.0f} MiB, '
                               f'{free / 2**20:,.0f} MiB are free)', full=True)
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    except Exception as e:  # pylint: disable=broad-except
      raise self._failed(step, e) from None
    self.pending = step

  def _failed(self, step: int, e, full: bool = False) -> CheckpointError:
    """The error of a save that failed (`e`: the exception, or the reason in words)."""
    if isinstance(e, Exception):
      full = any(marker in str(e) for marker in _NO_SPACE) or (isinstance(e, OSError) and e.errno in (28, 27, 122))
      reason = 'the disk is full' if full else _short(e)
    else:
      reason = e
    self.manager.reload()
    valid = [s for s in self.manager.all_steps() if s != step]
    listed = ', '.join(map(str, sorted(valid)))
    kept = ((f'checkpoints {listed} are intact' if len(valid) > 1 else f'checkpoint {listed} is intact')
            + f' and a new run resumes from step {max(valid)}' if valid else 'no earlier checkpoint exists')
    return CheckpointError(f'saving checkpoint {step} in {self.directory} failed: {reason}; {kept}'
                           + ('; free some space and run again' if full else ''))

  def _prune(self) -> None:
    """Deletes the oldest checkpoints beyond `keep` (called only after a save has completed)."""
    steps = sorted(self.manager.all_steps())
    for s in steps[:-self.keep] if self.keep and self.keep > 0 else []:
      self.manager.delete(s)

  def read_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def restore(self, abstract_state, expect_meta: Optional[dict] = None, step: Optional[int] = None,
              set_aside: bool = False, partial: bool = False):
    """(state, meta, step) of the newest checkpoint that restores, or None if there is none.

    `abstract_state` is a tree of jax.ShapeDtypeStruct with shardings: the state lands
    sharded as it says, whatever the mesh it was saved from. A checkpoint that does not
    read is skipped with a warning naming it; one of another model shape or tokenizer
    (per `expect_meta`) is a CheckpointError, since no older one would fit either. With
    `set_aside` (training), corrupt ones move to checkpoints_corrupt/ so new saves replace them.
    With `partial`, `abstract_state` names part of the saved state (e.g. {'params': ...}) and
    only that part is read.
    """
    candidates = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    # Every host must restore the same step: each one's result is gathered after each try,
    # and all fall back together when any host could not read its part (its shard of the
    # arrays may be the one a crash truncated).
    candidates = [int(s) for s in parallel.gather_text('ssl_jax checkpoint steps', ','.join(map(str, candidates)))[0]
                  .split(',') if s] if jax.process_count() > 1 else candidates
    failed = []
    for s in candidates:
      meta, restored, problem = None, None, None
      if jax.process_count() > 1:   # before Orbax's restore, which ends in a barrier of all hosts
        problem = self._parts_unreadable(s)
        if not parallel.every_host(f'ssl_jax checkpoint {s} parts read', problem is None) and problem is None:
          problem = 'has a part that does not read on another host'
      if problem is None:
        try:
          meta = self.read_meta(s)
        except Exception as e:  # pylint: disable=broad-except
          problem = f'does not read ({_short(e)})'
      if meta is not None:
        check_meta(meta, expect_meta or {}, f'{self.directory}/{s}')
        try:
          restored = self.manager.restore(s, args=ocp.args.Composite(state=_restore_args(abstract_state, partial)))
        except Exception as e:  # pylint: disable=broad-except
          problem = f'does not restore ({_short(e)})'
      if problem and jax.process_count() > 1:
        logging.warning('host %d: checkpoint %s/%d %s', jax.process_index(), self.directory, s, problem)
      if not parallel.every_host(f'ssl_jax checkpoint {s} restored', problem is None):
        logging.warning('checkpoint %s/%d %s; trying an older one', self.directory, s,
                        problem or 'does not restore on another host')
        failed.append(s)
        continue
      if failed:
        logging.warning('checkpoints %s of %s are corrupt; fell back to step %d%s', ', '.join(map(str, failed)),
                        self.directory, s, self._set_aside(failed) if set_aside else '')
      if set_aside and s == max(self.manager.all_steps()):
        self._prune()   # older ones that a killed run had no time to delete: the newest restores
      return restored['state'], meta, s
    if failed:
      logging.warning('no checkpoint of %s restores (%s are corrupt); starting afresh%s', self.directory,
                      ', '.join(map(str, failed)), self._set_aside(failed) if set_aside else '')
    return None

  def _parts_unreadable(self, step: int) -> Optional[str]:
    """Why a part of checkpoint `step` that this host checks does not read in full, or None.

    Orbax's restore ends in a barrier of every host: one whose part fails to read (a file
    truncated by a crash) would leave the others waiting in it. So, before it, host h reads
    the OCDBT parts i with i mod N == h (its own, when the number of hosts is unchanged),
    and the hosts agree on the result first."""
    import tensorstore as ts  # pylint: disable=import-outside-toplevel
    state = storage.join(self.directory, str(step), 'state')
    parts = sorted(n for n in storage.listdir(state) if n.startswith('ocdbt.process_'))
    for name in parts:
      if int(name.rsplit('_', 1)[1]) % jax.process_count() != jax.process_index():
        continue
      try:
        store = ts.KvStore.open({'driver': 'ocdbt', 'base': _kvstore(storage.join(state, name))}).result()
        for key in store.list().result():
          store.read(key).result()
      except Exception as e:  # pylint: disable=broad-except
        return f'part {name} does not read ({_short(e)})'
    return None

  def _set_aside(self, steps) -> str:
    """Moves corrupt checkpoints out of the manager's sight (kept for inspection)."""
    if jax.process_index() == 0:
      storage.makedirs(self.corrupt_directory)
      taken = set(storage.listdir(self.corrupt_directory))
      for s in steps:
        name, n = str(s), 1
        while name in taken:
          name, n = f'{s}.{n}', n + 1
        taken.add(name)
        storage.move(storage.join(self.directory, str(s)), storage.join(self.corrupt_directory, name))
    parallel.barrier('ssl_jax corrupt checkpoints set aside')
    self.manager.reload()
    return f' (moved to {self.corrupt_directory})'

  def wait(self) -> None:
    """Waits for the background save; raises a CheckpointError if it failed; then keeps the newest `keep`."""
    step, self.pending = self.pending, None
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._failed(step, e) from None
    if step is not None:
      self.manager.reload()
      if step not in self.manager.all_steps():
        raise self._failed(step, RuntimeError('the checkpoint was not finalized'))
      self._prune()

  def close(self) -> None:
    self.wait()
    self.manager.close()


def _kvstore(path: str):
  """A TensorStore key-value store spec of a folder or gs:// URL."""
  if path.startswith('gs://'):
    bucket, _, key = path[len('gs://'):].partition('/')
    return {'driver': 'gcs', 'bucket': bucket, 'path': key.rstrip('/') + '/'}
  return 'file://' + storage.absolute(path)


def _restore_args(abstract_state, partial: bool):
  if not partial:
    return ocp.args.StandardRestore(abstract_state)
  return ocp.args.PyTreeRestore(item=abstract_state, partial_restore=True,
                                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))


def check_meta(meta: dict, expect: dict, where: str) -> None:
  for key, want in expect.items():
    have = meta.get(key)
    if have is not None and have != want:
      raise CheckpointError(f'checkpoint {where} has {key}={have}, but this run has {key}={want}')


def _short(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0] if text else ""}'[:200]


def abstract(tree, shardings):
  """ShapeDtypeStructs of `tree` (itself abstract or concrete) carrying `shardings`."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def read_params(workdir: str) -> dict:
  """The parameters of a training workdir's newest checkpoint (numpy, on this host), read
  without the trainer: no model, mesh or config needed."""
  ckpt = Checkpointer(workdir, create=False)
  try:
    steps = ckpt.steps()
    if not steps:
      raise CheckpointError(f'{ckpt.directory} holds no checkpoint')
    restored = ckpt.manager.restore(steps[-1], args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  finally:
    ckpt.close()
  return jax.tree_util.tree_map(np.asarray, restored['state']['params'])
