"""What the training loop records and watches, and what a run says of itself.

  StepRecords   each logged step's figures (fetched a step late), throughput, learning rate
  SkippedSteps  updates skipped for a non-finite loss or gradient, and when to give up
  Preemption    SIGTERM as a flag the loop checks
"""

import signal
import time

import jax

from ssl_jax import config as config_lib


class StepRecords:
  """The records of metrics.jsonl, the progress display and TensorBoard.

  A logged step's metrics are held until the next step is queued and only then fetched, so
  the host never waits for the device between steps. Throughput counts the units trained
  between two records over the time between them, less any time spent evaluating.
  """

  def __init__(self, logger, unit: str, units_per_step: int, lr_at, start: int, skipped: 'SkippedSteps'):
    self.logger, self.unit, self.units_per_step, self.lr_at = logger, unit, units_per_step, lr_at
    self.skipped = skipped                                 # its total so far goes in every record
    self.held = None                                       # (step, device metrics) not yet written
    self.last = {}                                         # the newest record written
    self.clock_time, self.clock_step = time.perf_counter(), start   # the last throughput reading

  def hold(self, step: int, step_metrics) -> None:
    self.held = (step, step_metrics)

  def exclude(self, seconds: float) -> None:
    """Time that was not training (evaluation) leaves the throughput."""
    self.clock_time += seconds

  def write(self, step: int = None, extra: dict = None) -> None:
    """Writes the held step's record (or, given `extra` and nothing held, one for `step`)."""
    if self.held is None and not extra:
      return
    step, step_metrics = self.held if self.held else (step, {})
    record = {('train_loss' if k == 'loss' else f'train_{k}'): v for k, v in jax.device_get(step_metrics).items()}
    now = time.perf_counter()
    if step > self.clock_step:
      record[f'{self.unit}_per_sec'] = (step - self.clock_step) * self.units_per_step / (now - self.clock_time)
      self.clock_time, self.clock_step = now, step
    record['lr'] = float(self.lr_at(step - 1))
    if self.skipped.total:
      record['nonfinite_skipped'] = self.skipped.total
    record.update(extra or {})
    self.logger.write(step, record)
    self.logger.progress(step, record)
    self.last = {'step': step, **record}
    self.held = None


class SkippedSteps:
  """Counts the steps whose update was skipped. A step's flag is read one step later (done by
  then, or nearly: the next step is queued), so counting never stalls the device."""

  def __init__(self, max_in_a_row: int):
    self.max_in_a_row = max_in_a_row
    self.total = 0
    self.in_a_row = 0
    self.flag = None      # the newest step's `skipped`, not read yet

  def count(self) -> bool:
    """Reads the held flag; True when `max_in_a_row` steps in a row have been skipped."""
    if self.flag is not None:
      skipped = bool(float(self.flag))
      self.total += skipped
      self.in_a_row = self.in_a_row + 1 if skipped else 0
      self.flag = None
    return bool(self.max_in_a_row) and self.in_a_row >= self.max_in_a_row


class Preemption:
  """A preemption notice (SIGTERM) as a step at which to save a checkpoint and exit cleanly.

  One process: a SIGTERM handler sets a flag the loop reads. Several hosts: the notice may
  reach one host only, so JAX's preemption sync point (its handler, in the coordination
  service, propagates the notice) names one step at which every host saves and stops. A
  Python handler is not installed then: it would replace JAX's own.
  """

  def __init__(self):
    self.requested = False
    self.previous = None
    self.synced = jax.process_count() > 1 and _sync_manager() is not None
    if self.synced:
      return
    try:
      self.previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      pass

  def _handle(self, *_):
    self.requested = True

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step` (asked after every step, on every host)."""
    if self.synced and not self.requested:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      self.requested = multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def hosts(self) -> str:
    return f' on all {jax.process_count()} hosts' if self.synced else ''

  def restore(self):
    """Gives SIGTERM back to whoever had it (a caller's handler, or the default: exit)."""
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)
      self.previous = None


def _sync_manager():
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  return distributed.global_state.preemption_sync_manager


def describe_target(run) -> str:
  """Backend, devices, mesh and kernels, as a run's first line says them."""
  mesh = ' '.join(f'{axis}={size}' for axis, size in run.mesh.shape.items())
  hosts = f' on {jax.process_count()} hosts' if jax.process_count() > 1 else ''
  count = run.mesh.devices.size
  return (f'backend {run.choice.platform}, {count} {run.mesh.devices.flat[0].device_kind} device{"s" * (count > 1)}'
          f'{hosts} (mesh {mesh}); {run.choice.describe()}')


def describe_start(run, start: int) -> str:
  """What the run starts from: a checkpoint of its own, a pretrained body, or nothing."""
  if start:
    return f'resumed from step {start} of {run.workdir}'
  if run.tuning is not None and run.tuning.source is not None and run.config.init == 'random':
    return f'random init (seed {run.config.seed}) in the shape and tokenizer of init_from={run.config.init_from}'
  if run.tuning is not None and run.tuning.source is not None:
    return f'body loaded from init_from={run.config.init_from} ({run.tuning.source.family}); head fresh'
  if run.config.init_from:
    return f'parameters loaded from init_from={run.config.init_from}; optimizer fresh'
  return f'fresh start (random init, seed {run.config.seed})'


def hparams_of(config) -> dict:
  """The settings shown in TensorBoard's hyperparameter table."""
  keys = ('model.family', 'model.num_layers', 'model.d_model', 'model.num_heads', 'model.dropout', 'data.seq_len',
          'train.batch_size', 'train.lr', 'train.steps', 'train.weight_decay', 'seed')
  flat = config_lib.flatten(config)
  return {k: flat[k] for k in keys}
