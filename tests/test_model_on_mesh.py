"""A trained workdir used without its training run: `generate` and `ssl_jax.load` rebuild the
model from the workdir alone (model_on_mesh), read no corpus and write nothing there."""

import os
import shutil

import jax
import numpy as np

from conftest import run_cli, tiny_config
import ssl_jax
from ssl_jax import checkpoint, model_on_mesh, trainer, workdirs


def files_under(directory: str) -> dict:
  """{relative path: (size, modification time)} of every file and folder under `directory`."""
  found = {}
  for folder, names, files in os.walk(directory):
    for name in names + files:
      path = os.path.join(folder, name)
      stat = os.stat(path)
      found[os.path.relpath(path, directory)] = (stat.st_size, stat.st_mtime_ns)
  return found


def test_generate_and_load_work_after_the_corpus_is_deleted_and_write_nothing(corpus, tmp_path):
  own_corpus = tmp_path / 'corpus' / 'text.txt'
  own_corpus.parent.mkdir()
  shutil.copy(corpus, own_corpus)
  workdir = str(tmp_path / 'w')
  trainer.train_and_evaluate(tiny_config(str(own_corpus), **{'train.steps': 2, 'train.eval_every': 0}), workdir)
  shutil.rmtree(own_corpus.parent)
  shutil.rmtree(os.path.join(workdir, 'cache'))   # the token cache: nothing may rebuild it
  before = files_under(workdir)

  proc = run_cli('generate', '--workdir', workdir, '--prompt', 'KING', '--max_new_tokens', '12', '--temperature', '0')
  assert proc.stdout.startswith('KING') and len(proc.stdout.strip()) > len('KING'), proc.stdout

  model = ssl_jax.load(workdir)
  assert model.step == 2 and model.family == 'gpt'
  saved = checkpoint.read_params(workdir)
  loaded = jax.tree_util.tree_map(np.asarray, model.params)
  assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(saved)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(saved)))
  ids = model.encode('KING')
  assert model.logits(ids).shape == (len(ids), model.config.model.vocab_size)
  # Greedy decoding from the Python API continues the prompt as the command line did.
  assert 'KING' + model.generate('KING', max_new_tokens=12, temperature=0.0) == proc.stdout.rstrip('\n')

  assert files_under(workdir) == before


def test_the_model_on_a_mesh_is_the_training_runs_model(corpus, tmp_path):
  """The trainer's Setup is built on the same constructor: the same parameter shapes,
  shardings and checkpoint meta as a model rebuilt from the saved config."""
  workdir = str(tmp_path / 'w')
  config = tiny_config(corpus, **{'train.steps': 1, 'train.eval_every': 0})
  run = trainer.setup(config, workdir, compile_steps=False)
  workdirs.save_config(workdir, run.config, 0)
  placed = model_on_mesh.build(workdirs.saved_config(workdir), run.tokenizer)
  shapes = lambda tree: jax.tree_util.tree_map(lambda x: (x.shape, x.dtype, x.sharding.spec), tree)
  assert shapes(placed.abstract_params) == shapes(run.abstract_state.params) == shapes(run.abstract_params)
  assert placed.meta() == model_on_mesh.ModelOnMesh.meta(run) and placed.num_params == run.num_params
  assert run.meta() == {**placed.meta(), 'data': run.data.fingerprint}   # checkpoints record the data too


def test_model_size_decides_the_shape_and_explicit_keys_win():
  from ssl_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from ssl_jax.models import sizes  # pylint: disable=import-outside-toplevel
  config = config_lib.load('experiments/default.py')
  config_lib.override(config, 'model.size', 'gpt2:124M')
  assert sizes.resolve(config) == []
  # GPT-2 small's 124,439,808 parameters, with its vocabulary padded from 50,257 to 50,304.
  assert model_on_mesh.build(config).num_params == 124_439_808 + 47 * 768

  config = config_lib.load('experiments/default.py')
  config_lib.override(config, 'model.num_layers', '6')
  lines = sizes.resolve(config)
  assert 'model.num_layers=6 (set explicitly; gpt:baby has 4)' in lines
  assert (config.model.num_layers, config.model.d_model, config.model.max_len) == (6, 128, config.data.seq_len)
