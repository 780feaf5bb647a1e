"""Experiment files load; config overrides are checked by name and type."""

import glob
import importlib.util
import os

import pytest

from conftest import ROOT, run_cli
from ssl_jax.models import sizes

EXPERIMENTS = sorted(glob.glob(os.path.join(ROOT, 'experiments', '*.py')))
# Variants each experiment documents; None is the plain `--config experiments/FILE.py`.
VARIANTS = {'gpt_shakespeare_char': [None, 'baby'], 'gpt': ['gpt2:124M', 'gpt3:175B', 'gpt:nano'],
            'bert': ['tiny', 'base', 'base,phase2'], 'vit_mae': [None, 'S/4']}


def load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_there_are_experiments():
  assert len(EXPERIMENTS) >= 2


@pytest.mark.parametrize('path', EXPERIMENTS, ids=os.path.basename)
def test_every_experiment_loads_and_documents_its_command(path):
  module = load(path)
  assert 'python run.py' in (module.__doc__ or ''), f'{path}: the docstring should show its command'
  name = os.path.basename(path)[:-3]
  for arg in VARIANTS.get(name, [None]):
    c = module.get_config(arg)
    sizes.resolve(c)   # the shape its model.size names
    assert c.model.d_model % c.model.num_heads == 0
    assert c.train.steps > 0 and c.data.seq_len > 0
    for key in ('seed', 'init_from', 'model.num_layers', 'model.num_heads', 'model.d_model', 'model.d_ff',
                'model.vocab_size', 'model.dropout', 'data.path', 'data.eval_path', 'data.seq_len',
                'data.tokenizer', 'data.max_predictions', 'data.short_seq_prob', 'train.batch_size',
                'train.steps', 'train.lr', 'train.warmup_steps', 'train.min_lr', 'train.weight_decay',
                'train.eval_every', 'train.eval_batches', 'train.checkpoint_every', 'mesh.data',
                'mesh.fsdp', 'mesh.tensor'):
      node = c
      for part in key.split('.'):
        assert part in node, f'{name}:{arg} lacks the config key {key}'
        node = node[part]


def test_unknown_config_key_is_an_error_naming_it(tmp_path):
  proc = run_cli('train', '--config.train.stepz=3', '--workdir', str(tmp_path), check=False)
  assert proc.returncode != 0
  assert 'stepz' in proc.stderr
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_wrong_type_is_an_error_naming_the_key(tmp_path):
  proc = run_cli('train', '--config.train.steps=many', '--workdir', str(tmp_path), check=False)
  assert proc.returncode != 0
  assert 'train.steps' in proc.stderr or 'many' in proc.stderr
