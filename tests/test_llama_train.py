"""The llama family through the trainer: data, fsdp and tensor meshes on 8 CPU devices give one
device's losses (grouped kv heads split where they divide, whole where they do not), a resume
continues the very same losses, and run.py trains it from the command line."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY, read_metrics, run_cli, tiny_config
from test_train import assert_resume_is_exact

# 4 query heads sharing 2 kv heads (head size 8): tensor 2 splits both; tensor 8 splits neither.
GQA = {'model.num_heads': 4, 'model.num_kv_heads': 2, 'model.tie_embeddings': False}

STEPS = """
import json, sys
sys.path.insert(0, 'tests')
import jax
from conftest import tiny_config
from steps import run
corpus, shapes, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
runs = []
for shape in shapes.split('/'):
  d, f, t = (int(x) for x in shape.split(','))
  config = tiny_config(corpus, 'llama.py', **settings, **{'mesh.data': d, 'mesh.fsdp': f, 'mesh.tensor': t})
  state, losses, choice = run(config, 4)
  q = state.params['layers']['h_0']['self_attn']['q_proj']['kernel']
  k = state.params['layers']['h_0']['self_attn']['k_proj']['kernel']
  runs.append({'mesh': [d, f, t], 'losses': losses, 'choice': choice,
               'q_shard': list(q.sharding.shard_shape(q.shape)), 'k_shard': list(k.sharding.shard_shape(k.shape))})
print(json.dumps({'devices': jax.device_count(), 'runs': runs}))
"""


def run_meshes(corpus, devices, shapes, **settings):
  env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}', 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, '-c', STEPS, corpus, shapes, json.dumps({**GQA, **settings})], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_data_fsdp_and_tensor_meshes_on_8_devices_match_one_device(corpus):
  one = run_meshes(corpus, 1, '1,1,1', **{'model.dropout': 0.1})['runs'][0]
  sharded = run_meshes(corpus, 8, '2,2,2/1,1,8', **{'model.dropout': 0.1})
  assert sharded['devices'] == 8
  for run in sharded['runs']:
    assert run['losses'] == pytest.approx(one['losses'], rel=1e-5), run['mesh']
  by_mesh = {tuple(r['mesh']): r for r in sharded['runs']}
  assert by_mesh[(2, 2, 2)]['q_shard'] == [16, 2, 8] and by_mesh[(2, 2, 2)]['k_shard'] == [16, 1, 8]
  assert by_mesh[(1, 1, 8)]['k_shard'] == [32, 2, 8]       # 2 kv heads do not split 8 ways: whole


def test_resume_continues_the_same_losses_exactly(tmp_path, corpus, capfd):
  settings = {**GQA, 'train.steps': 6, 'train.checkpoint_every': 3, 'train.eval_every': 3, 'model.dropout': 0.1}
  assert_resume_is_exact(tmp_path, capfd, tiny_config(corpus, 'llama.py', **settings))


def test_run_py_trains_the_cpu_size_and_samples_from_it(tmp_path, corpus):
  # The run ends with a sample (train.sample_tokens): generate's KV-cache loop on the GQA cache.
  workdir = str(tmp_path / 'llama')
  proc = run_cli('train', '--config', 'experiments/llama.py:llama:nano', f'--config.data.path={corpus}', *TINY[4:],
                 '--config.train.steps=4', '--config.train.eval_every=4', '--workdir', workdir)
  records = read_metrics(workdir)
  assert records[-1]['step'] == 4 and 'eval_loss' in records[-1]
  assert '--- sample (20 tokens' in proc.stdout + proc.stderr
