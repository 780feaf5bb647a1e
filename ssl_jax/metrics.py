"""What a run shows and leaves behind: progress, metrics.jsonl, TensorBoard events, loss.png.

Progress is a bar on a terminal and plain lines elsewhere (a cluster's log file gets one
line per logged step, not a redraw per step). Only process 0 writes. On resume, records
past the restored step are dropped from metrics.jsonl so the file is one clean curve.
In a gs:// workdir metrics.jsonl is rewritten whole (an object cannot be appended to): at
every checkpoint, at most every FLUSH_S seconds, and at the end.

Names: `train_*` are figures of training batches, `eval_*` of held-out ones; every record
has `step` and `time` (seconds since the run began).
"""

import json
import math
import sys
import time
from typing import Dict, Optional

import jax
import numpy as np

from ssl_jax import storage
from ssl_jax.data.text import DataError
from ssl_jax.errors import ConfigError

METRICS_FILE = 'metrics.jsonl'
FLUSH_S = 60.0


def _plain(v):
  v = np.asarray(v)
  return v.item() if v.size == 1 else v.tolist()


class MetricLogger:

  def __init__(self, workdir: str, total_steps: int, start_step: int = 0, unit: str = 'tokens',
               progress: bool = True, started: Optional[float] = None, wandb_project: str = '', config=None):
    self.enabled = jax.process_index() == 0
    self.workdir = workdir
    self.path = storage.join(workdir, METRICS_FILE)
    self._records = None    # a URL workdir's whole file, rewritten on flush
    self._flushed = time.perf_counter()
    self.unit = unit
    self.total_steps = total_steps
    self.started = time.perf_counter() if started is None else started
    self._tb = None
    self._bar = None
    self._lines = False     # plain progress lines (stderr is not a terminal)
    self._wandb = None
    self._held_out = {}
    if not self.enabled:
      return
    storage.makedirs(workdir)
    kept = _truncate_after(self.path, start_step)
    if storage.is_url(workdir):
      self._records = kept
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._tb = SummaryWriter(workdir, flush_secs=30)
    if config is not None:
      self._tb.add_text('config', '    ' + config.to_json(indent=2).replace('\n', '\n    '), start_step)
    if wandb_project:
      self._wandb = _wandb_run(wandb_project, workdir, config)
    if progress and sys.stderr.isatty():
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      self._bar = tqdm(total=total_steps, initial=start_step, unit='step', dynamic_ncols=True,
                       file=sys.stderr, mininterval=0.5, smoothing=0.1)
    else:
      self._lines = progress

  def elapsed(self) -> float:
    return time.perf_counter() - self.started

  def write(self, step: int, metrics: Dict[str, float]) -> None:
    """Appends one record (step plus metrics) and mirrors it to TensorBoard."""
    if not self.enabled:
      return
    record = {'step': int(step), 'time': round(self.elapsed(), 3), **{k: _plain(v) for k, v in metrics.items()}}
    if self._records is None:
      with open(self.path, 'a') as f:
        f.write(json.dumps(record) + '\n')
    else:
      self._records.append(json.dumps(record) + '\n')
      if time.perf_counter() - self._flushed > FLUSH_S:
        self.flush()
    scalars = {k: v for k, v in record.items()
               if k not in ('step', 'time') and isinstance(v, (int, float)) and math.isfinite(v)}
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)
    if self._wandb is not None:
      self._wandb.log(scalars, step=int(step))

  def flush(self) -> None:
    """Writes what is held (a URL workdir's metrics.jsonl) and TensorBoard's buffer."""
    if not self.enabled:
      return
    if self._records is not None:
      storage.write_text(self.path, ''.join(self._records))
      self._flushed = time.perf_counter()
    self._tb.flush()

  def text(self, tag: str, text: str, step: int) -> None:
    """A text record for TensorBoard (and Weights & Biases), e.g. the end-of-run sample."""
    if not self.enabled:
      return
    self._tb.add_text(tag, '    ' + text.replace('\n', '\n    '), step)   # indented: shown verbatim
    if self._wandb is not None:
      self._wandb.log({tag: text}, step=int(step))

  def hparams(self, hparams: Dict[str, object], final: Dict[str, float]) -> None:
    """TensorBoard's hyperparameter table: the run's settings against its final figures."""
    if not self.enabled:
      return
    flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
    numbers = {f'hparam/{k}': float(v) for k, v in final.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    if numbers:
      self._tb.add_hparams(flat, numbers, name='hparams')

  def progress(self, step: int, metrics: Dict[str, float]) -> None:
    if self._bar is None and not self._lines:
      return
    for k, v in metrics.items():   # held-out figures stay on the bar until the next eval
      if k in ('eval_loss', 'eval_mlm_accuracy', 'eval_nsp_accuracy', 'eval_accuracy'):
        self._held_out[k.replace('_accuracy', '_acc')] = f'{v:.4f}'
    shown = {}
    if 'train_loss' in metrics:
      shown['loss'] = f'{metrics["train_loss"]:.4f}'
    shown.update(self._held_out)
    rate = metrics.get(f'{self.unit}_per_sec')
    if rate:
      shown[f'{self.unit}/s'] = f'{rate:,.0f}'
    if self._lines:
      shown['lr'] = f'{metrics["lr"]:.2e}' if 'lr' in metrics else None
      fields = '  '.join(f'{k} {v}' for k, v in shown.items() if v is not None)
      print(f'step {step}/{self.total_steps}  {fields}  ({self.elapsed():.1f}s)', file=sys.stderr, flush=True)
      return
    self._bar.n = step
    self._bar.set_postfix(shown, refresh=False)
    self._bar.refresh()

  def print(self, text: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text, file=sys.stderr)
    else:
      print(text, file=sys.stderr)

  def end_progress(self) -> None:
    """Ends the bar's line, so what is printed next starts on its own."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    self._lines = False

  def close(self) -> None:
    if not self.enabled:
      return
    self.end_progress()
    self.flush()
    self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()
    plot(self.workdir)


def _wandb_run(project: str, workdir: str, config):
  """A Weights & Biases run (`log.wandb=PROJECT`); offline when WANDB_MODE=offline says so."""
  try:
    import wandb  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError(f'log.wandb={project} needs the wandb package: pip install wandb') from None
  return wandb.init(project=project, dir=None if storage.is_url(workdir) else workdir, name=storage.basename(workdir),
                    config=config.to_dict() if config is not None else None)


def append(workdir: str, record: dict) -> None:
  """One more record in metrics.jsonl (e.g. an `eval` command's result)."""
  storage.makedirs(workdir)
  line = json.dumps({k: _plain(v) if not isinstance(v, str) else v for k, v in record.items()}) + '\n'
  path = storage.join(workdir, METRICS_FILE)
  kept = _truncate_after(path, math.inf)    # a record cut short would swallow this one's start
  if storage.is_url(path):     # rewritten whole: an object has no append
    storage.write_text(path, ''.join(kept) + line)
    return
  with open(path, 'a') as f:
    f.write(line)


def read(workdir: str):
  return [record for _, record in _records(storage.join(workdir, METRICS_FILE))]


def _records(path: str, text: Optional[str] = None) -> list:
  """(line, record) of metrics.jsonl. A last line that does not parse is a record cut short (a
  full disk, a killed writer): left out, with a notice; any other is a DataError naming the line."""
  if text is None and not storage.exists(path):
    return []
  lines = [line for line in (storage.read_text(path) if text is None else text).splitlines() if line.strip()]
  out = []
  for n, line in enumerate(lines, 1):
    try:
      record = json.loads(line)
      if not isinstance(record, dict):
        raise ValueError(f'a JSON {type(record).__name__}, not an object')
    except ValueError as e:
      if n < len(lines):
        raise DataError(f'{path}:{n}: not a metrics record ({str(e)[:100]}); remove the line to go on') from None
      if jax.process_index() == 0:
        print(f'{path}:{n}: a record cut short, left out ({line[:40]!r})', file=sys.stderr, flush=True)
      break
    out.append((line + '\n', record))
  return out


def _truncate_after(path: str, step: int) -> list:
  """Drops the records past `step` (a resume redoes those steps), and a record cut short;
  returns the lines kept."""
  if not storage.exists(path):
    return []
  text = storage.read_text(path)
  kept = [line for line, record in _records(path, text) if record.get('step', 0) <= step]
  if ''.join(kept) != text:
    storage.write_text(path, ''.join(kept))
  return kept


def plot(workdir: str, out: Optional[str] = None) -> Optional[str]:
  """loss.png: train loss (and eval loss where logged) against step."""
  records = read(workdir)
  train = [(r['step'], r['train_loss']) for r in records if 'train_loss' in r]
  evals = [(r['step'], r['eval_loss']) for r in records if 'eval_loss' in r]
  if not train and not evals:
    return None
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
  if train:
    ax.plot(*zip(*train), label='train', linewidth=1, alpha=0.8)
  if evals:
    ax.plot(*zip(*evals), 'o-', label='eval', linewidth=1.5, markersize=3)
  ax.set_xlabel('step')
  ax.set_ylabel('loss')
  ax.set_title(storage.basename(workdir))
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  out = out or storage.join(workdir, 'loss.png')
  picture = storage.buffer()
  fig.savefig(picture, format='png')
  plt.close(fig)
  storage.write_bytes(out, picture.getvalue())
  return out
