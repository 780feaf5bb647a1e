"""benchmarks/gpu_check.sh in its CPU dry run: the same legs and summary as on a GPU, tiny shapes.

The nanoGPT leg runs the checkout that NANOGPT names if it is set; otherwise, where torch is
installed, a stand-in model.py with nanoGPT's interface (GPTConfig, GPT(x, y) -> (logits, loss),
configure_optimizers), so the leg's plumbing is tested without a checkout; without torch the
summary must say the leg was skipped.
"""

import importlib.util
import math
import os
import subprocess
import sys

import pytest

from conftest import ROOT, last_json_line

SCRIPT = os.path.join(ROOT, 'benchmarks', 'gpu_check.sh')

# Only what benchmarks/vs_nanogpt.py's worker calls on nanoGPT's model.py.
STAND_IN_MODEL = '''
from dataclasses import dataclass
import torch
import torch.nn as nn
import torch.nn.functional as F

@dataclass
class GPTConfig:
    block_size: int = 64
    vocab_size: int = 256
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    dropout: float = 0.0
    bias: bool = False

class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
                                    for _ in range(config.n_layer))

    def forward(self, idx, targets):
        x = self.wte(idx)
        for block in self.blocks:
            x = x + torch.tanh(block(x))
        logits = x @ self.wte.weight.t()
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        return torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay)
'''


def run_script(*args, nanogpt=None, timeout=300):
  env = {**os.environ, 'PYTHON': sys.executable, 'PYTHONUNBUFFERED': '1'}
  env.pop('NANOGPT', None)
  env.pop('OUT', None)
  if nanogpt is not None:
    env['NANOGPT'] = nanogpt
  proc = subprocess.run(['bash', SCRIPT, '--cpu', *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)
  return proc, last_json_line(proc.stdout)


def positive(value):
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_dry_run_times_every_leg_and_prints_the_summary(tmp_path):
  nanogpt = os.environ.get('NANOGPT')
  if not nanogpt and importlib.util.find_spec('torch') is not None:
    nanogpt = str(tmp_path / 'nanogpt')
    os.makedirs(nanogpt)
    with open(os.path.join(nanogpt, 'model.py'), 'w') as f:
      f.write(STAND_IN_MODEL)
  proc, summary = run_script('--steps', '2', '--out', str(tmp_path / 'out'), nanogpt=nanogpt or '')
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert summary['dry_run'] is True and summary['errors'] == {}
  assert summary['shape'] == dict(layers=2, heads=2, width=64, seq_len=64, batch=4, vocab=256)
  # The FLOP count is the one run.py bench makes (a mismatch prints a warning).
  assert positive(summary['flops_per_step']) and 'FLOPs/step, this script' not in proc.stdout
  assert positive(summary['peak_flops'])
  for leg in ('ours_cudnn', 'ours_xla'):
    for key in ('tokens_per_sec', 'mfu', 'step_ms', 'compile_s'):
      assert positive(summary[f'{leg}_{key}']), (leg, key, summary[f'{leg}_{key}'])
    assert summary[f'{leg}_mfu'] < 1
    assert summary[f'{leg}_choice'] == 'kernels cpu, attention xla, float32'
  if nanogpt:
    assert summary['nanogpt_skipped'] is None
    assert positive(summary['nanogpt_tokens_per_sec']) and positive(summary['nanogpt_mfu'])
    assert summary['nanogpt_compile'] is False          # torch.compile is off on CPU unless asked
    for name in ('cudnn', 'xla'):
      ratio = summary[f'ours_{name}_tokens_per_sec'] / summary['nanogpt_tokens_per_sec']
      assert summary[f'ratio_{name}_vs_nanogpt'] == pytest.approx(ratio)
    # nanoGPT's MFU is the same FLOPs per step over the same peak.
    steps_per_sec = summary['nanogpt_tokens_per_sec'] / (4 * 64)
    assert summary['nanogpt_mfu'] == pytest.approx(summary['flops_per_step'] * steps_per_sec / summary['peak_flops'])
  else:
    assert 'no nanoGPT checkout' in summary['nanogpt_skipped']
    assert summary['nanogpt_tokens_per_sec'] is None and summary['ratio_xla_vs_nanogpt'] is None
  assert sorted(os.listdir(tmp_path / 'out')) == sorted(
      ['ours_cudnn.log', 'ours_xla.log', 'summary.json'] + (['nanogpt.log'] if nanogpt else []))


def test_a_missing_checkout_skips_the_nanogpt_leg_with_its_reason(tmp_path):
  proc, summary = run_script('--legs', 'nanogpt', nanogpt=str(tmp_path))   # a folder without model.py
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert summary['nanogpt_skipped'] == f'no nanoGPT checkout: {str(tmp_path)!r} has no model.py'
  assert summary['nanogpt_tokens_per_sec'] is None and summary['ours_cudnn_tokens_per_sec'] is None
  assert summary['ratio_cudnn_vs_nanogpt'] is None and summary['errors'] == {}


def test_an_unknown_leg_is_refused():
  proc = subprocess.run(['bash', SCRIPT, '--cpu', '--legs', 'flash'], cwd=ROOT, capture_output=True, text=True,
                        env={**os.environ, 'PYTHON': sys.executable}, timeout=60)
  assert proc.returncode != 0 and "unknown leg 'flash'" in proc.stderr
