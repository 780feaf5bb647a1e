"""Checkpoints through Orbax: asynchronous, keep-N, atomic, restored onto any mesh.

A checkpoint holds the train state (params, optimizer state, step) and a small JSON of
what else a resume needs: the model shape and the tokenizer's fingerprint. The input
pipeline needs nothing more: its batch at step s is a pure function of (seed, s).
"""

import logging
import os
from typing import Optional

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used here; the message says which and why."""


class Checkpointer:

  def __init__(self, workdir: str, keep: int = 2, async_save: bool = True, create: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    if not create and not os.path.isdir(self.directory):
      raise CheckpointError(f'{self.directory} does not exist')
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=create, enable_async_checkpointing=async_save))

  def steps(self):
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, meta: dict) -> None:
    """Starts saving (in the background); an existing checkpoint of this step is kept."""
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def read_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def restore(self, abstract_state, expect_meta: Optional[dict] = None, step: Optional[int] = None):
    """(state, meta, step) of the newest checkpoint that restores, or None if there is none.

    `abstract_state` is a tree of jax.ShapeDtypeStruct with shardings: the state lands
    sharded as it says, whatever the mesh it was saved from. A checkpoint that does not
    read is skipped with a warning naming it; one of another model shape or tokenizer
    (per `expect_meta`) is a CheckpointError, since no older one would fit either.
    """
    candidates = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    failed = []
    for s in candidates:
      try:
        meta = self.read_meta(s)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('checkpoint %s/%d does not read (%s); trying an older one', self.directory, s,
                        _short(e))
        failed.append(s)
        continue
      _check_meta(meta, expect_meta or {}, f'{self.directory}/{s}')
      try:
        restored = self.manager.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('checkpoint %s/%d does not restore (%s); trying an older one', self.directory, s,
                        _short(e))
        failed.append(s)
        continue
      if failed:
        logging.warning('checkpoints %s of %s are corrupt; fell back to step %d', ', '.join(map(str, failed)),
                        self.directory, s)
      return restored['state'], meta, s
    if failed:
      logging.warning('no checkpoint of %s restores (%s are corrupt); starting afresh', self.directory,
                      ', '.join(map(str, failed)))
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _check_meta(meta: dict, expect: dict, where: str) -> None:
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
