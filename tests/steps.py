"""Runs a few train steps in a fresh process and prints one JSON line (used by the sharding tests).

  python tests/steps.py CORPUS STEPS [--experiment=FILE.py[:ARG]] [--meshes=D,F,T/...] [--config.KEY=VALUE ...]

The JSON holds the losses and, for a few parameters, their sharding, so a test can check
both that a mesh gives the same numbers and that the parameters really are split.
"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position

from ssl_jax import trainer  # pylint: disable=wrong-import-position
from conftest import tiny_config  # pylint: disable=wrong-import-position


def fc_kernel(params):
  """The first MLP input kernel of a model (GPT, BERT or ViT: the names differ a little)."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [getattr(k, 'key', '') for k in path]
    if 'mlp' in names and 'fc' in names and names[-1] == 'kernel':
      return leaf
  raise KeyError('no mlp/fc/kernel')


def run(config, steps):
  """(final state, losses, the kernels chosen) of `steps` train steps from a fresh init."""
  s = trainer.setup(config, tempfile.mkdtemp())
  state = s.init_fn(jax.random.key(config.seed))
  losses = []
  for step in range(int(steps)):
    state, m = s.train_fn(state, s.global_batch(s.data.train.batch(step)))
    losses.append(float(m['loss']))
  return state, losses, s.choice.describe()


def meshes(corpus, steps, experiment, shapes, parsed):
  """Runs `steps` steps on each mesh of `shapes` ('D,F,T/D,F,T/...'); prints one JSON line."""
  runs = []
  for shape in shapes.split('/'):
    d, f, t = (int(x) for x in shape.split(','))
    config = tiny_config(corpus, experiment, **parsed, **{'mesh.data': d, 'mesh.fsdp': f, 'mesh.tensor': t})
    state, losses, choice = run(config, steps)
    kernel = fc_kernel(state.params)
    runs.append({'mesh': [d, f, t], 'losses': losses, 'choice': choice, 'fc_kernel_shape': list(kernel.shape),
                 'fc_kernel_shard_shape': list(kernel.sharding.shard_shape(kernel.shape))})
  print(json.dumps({'devices': jax.device_count(), 'runs': runs}))


def main(corpus, steps, *overrides):
  parsed = {}
  experiment = 'default.py'
  shapes = None
  for o in overrides:
    if o.startswith('--experiment='):
      experiment = o.split('=', 1)[1]
      continue
    if o.startswith('--meshes='):
      shapes = o.split('=', 1)[1]
      continue
    key, value = o.removeprefix('--config.').split('=', 1)
    parsed[key] = json.loads(value) if value[:1].isdigit() or value[:1] in '-[{' else value
  if shapes:
    return meshes(corpus, steps, experiment, shapes, parsed)
  state, losses, _ = run(tiny_config(corpus, experiment, **parsed), steps)
  kernel = state.params['blocks']['h_0']['mlp']['fc']['kernel']
  embedding = state.params['wte' if 'wte' in state.params else 'word_embeddings']
  print(json.dumps({
      'devices': jax.device_count(),
      'losses': losses,
      'fc_kernel_spec': str(kernel.sharding.spec),
      'fc_kernel_shard_shape': list(kernel.sharding.shard_shape(kernel.shape)),
      'fc_kernel_shape': list(kernel.shape),
      'adam_mu_fc_shard_shape': list(
          jax.tree_util.tree_leaves(state.opt_state[1][0].mu['blocks']['h_0']['mlp']['fc']['kernel'])[0]
          .sharding.shard_shape(kernel.shape)),
      'wte_shard_shape': list(embedding.sharding.shard_shape(embedding.shape)),
  }))


if __name__ == '__main__':
  main(*sys.argv[1:])
