"""What a run shows and leaves behind: a progress bar, metrics.jsonl, TensorBoard events, loss.png.

Only process 0 writes. On resume, records past the restored step are dropped from
metrics.jsonl so the file is one clean curve.
"""

import json
import math
import os
import sys
from typing import Dict, Optional

import jax
import numpy as np

METRICS_FILE = 'metrics.jsonl'


def _plain(v):
  v = np.asarray(v)
  return v.item() if v.size == 1 else v.tolist()


class MetricLogger:

  def __init__(self, workdir: str, total_steps: int, start_step: int = 0, unit: str = 'tokens',
               progress: bool = True):
    self.enabled = jax.process_index() == 0
    self.workdir = workdir
    self.path = os.path.join(workdir, METRICS_FILE)
    self.unit = unit
    self._tb = None
    self._bar = None
    self._held_out = {}
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    _truncate_after(self.path, start_step)
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._tb = SummaryWriter(workdir, flush_secs=30)
    if progress:
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      self._bar = tqdm(total=total_steps, initial=start_step, unit='step', dynamic_ncols=True,
                       file=sys.stderr, mininterval=0.5, smoothing=0.1)

  def write(self, step: int, metrics: Dict[str, float]) -> None:
    """Appends one record (step plus metrics) and mirrors it to TensorBoard."""
    if not self.enabled:
      return
    record = {'step': int(step), **{k: _plain(v) for k, v in metrics.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for k, v in record.items():
      if k != 'step' and isinstance(v, (int, float)) and math.isfinite(v):
        self._tb.add_scalar(k, v, step)

  def progress(self, step: int, metrics: Dict[str, float]) -> None:
    if self._bar is None:
      return
    self._bar.n = step
    for k, v in metrics.items():   # held-out figures stay on the bar until the next eval
      if k in ('eval_loss', 'mlm_accuracy', 'nsp_accuracy', 'accuracy'):
        self._held_out[k.replace('_accuracy', '_acc')] = f'{v:.4f}'
    shown = {}
    if 'train_loss' in metrics:
      shown['loss'] = f'{metrics["train_loss"]:.4f}'
    shown.update(self._held_out)
    rate = metrics.get(f'{self.unit}_per_sec')
    if rate:
      shown[f'{self.unit}/s'] = f'{rate:,.0f}'
    self._bar.set_postfix(shown, refresh=False)
    self._bar.refresh()

  def print(self, text: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text, file=sys.stderr)
    else:
      print(text, file=sys.stderr)

  def close(self) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.close()
    self._tb.close()
    plot(self.workdir)


def append(workdir: str, record: dict) -> None:
  """One more record in metrics.jsonl (e.g. an `eval` command's result)."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, METRICS_FILE), 'a') as f:
    f.write(json.dumps({k: _plain(v) if not isinstance(v, str) else v for k, v in record.items()}) + '\n')


def read(workdir: str):
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _truncate_after(path: str, step: int) -> None:
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  kept = [line for line in lines if json.loads(line).get('step', 0) <= step]
  if len(kept) != len(lines):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(kept)
    os.replace(tmp, path)


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
  ax.set_title(os.path.basename(os.path.abspath(workdir)))
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  out = out or os.path.join(workdir, 'loss.png')
  fig.savefig(out)
  plt.close(fig)
  return out
