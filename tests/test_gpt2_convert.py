"""Hugging Face GPT-2 import and export: logits against transformers' GPT2LMHeadModel, exact round trips.

Nothing is downloaded: the Hugging Face side is built from a GPT2Config in the test.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ssl_jax.convert import command as convert_command, files as convert_files, gpt2 as convert_gpt2
from ssl_jax.models.gpt import GPT

TINY = dict(family='gpt', num_layers=2, num_heads=4, d_model=32, d_ff=128, vocab_size=96, max_len=40,
            activation='gelu_tanh', ln_eps=1e-5, dropout=0.0, bias=True)


@pytest.fixture(scope='module')
def torch_and_transformers():
  hint = 'is not installed (pip install -r tests/requirements.txt)'
  torch = pytest.importorskip('torch', reason=f'torch {hint}')
  return torch, pytest.importorskip('transformers', reason=f'transformers {hint}')


def random_params(model_config, seed=0):
  model = GPT(convert_files.transformer_config(model_config))
  init = jax.jit(lambda rng: nn.meta.unbox(model.init(rng, jnp.zeros((1, 1), jnp.int32))['params']))
  # Biases and LayerNorms start at zeros and ones; jitter them so every tensor's place is tested.
  params = init(jax.random.key(seed))
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [np.asarray(x + 0.1 * jax.random.normal(k, x.shape)) for x, k in zip(leaves, keys)]
  return jax.tree_util.tree_unflatten(tree, leaves)


@pytest.fixture(scope='module')
def tiny_params():
  return random_params(TINY)


def our_logits(params, model_config, tokens):
  model = GPT(convert_files.transformer_config(model_config))
  return np.asarray(jax.jit(model.apply)({'params': params}, jnp.asarray(tokens)))


def assert_trees_identical(a, b):
  flat_a, flat_b = convert_files.flatten_tree(a), convert_files.flatten_tree(b)  # pylint: disable=protected-access
  assert sorted(flat_a) == sorted(flat_b)
  for path, x in flat_a.items():
    assert x.dtype == flat_b[path].dtype and np.array_equal(x, flat_b[path]), path


def test_export_matches_gpt2_lm_head_model_and_imports_back_bit_identical(torch_and_transformers, tiny_params,
                                                                         tmp_path):
  torch, transformers = torch_and_transformers
  params = tiny_params
  convert_gpt2.save_hf_gpt2(params, TINY, str(tmp_path / 'hf'))
  reference = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / 'hf'), dtype=torch.float32).eval()
  tokens = np.random.default_rng(0).integers(0, TINY['vocab_size'], (3, TINY['max_len']))
  with torch.no_grad():
    expected = reference(torch.from_numpy(tokens)).logits.numpy()
  ours = our_logits(params, TINY, tokens)
  assert np.abs(ours - expected).max() < 1e-4
  # transformers writes the model back out (prefixed `transformer.`, head tied); it imports exactly.
  reference.save_pretrained(str(tmp_path / 'again'))
  again, model_config = convert_gpt2.load_hf_gpt2(str(tmp_path / 'again'))
  assert_trees_identical(params, again)
  assert model_config['unused_tensors'] == [] and {k: model_config[k] for k in TINY} == TINY


def test_a_gpt2_config_model_imports_with_its_logits(torch_and_transformers, tmp_path):
  torch, transformers = torch_and_transformers
  torch.manual_seed(0)
  hf_config = transformers.GPT2Config(vocab_size=80, n_positions=24, n_embd=48, n_layer=2, n_head=3,
                                      activation_function='gelu_new', layer_norm_epsilon=1e-5)
  reference = transformers.GPT2LMHeadModel(hf_config).eval()
  reference.save_pretrained(str(tmp_path))
  params, model_config = convert_gpt2.load_hf_gpt2(str(tmp_path))
  assert (model_config['d_ff'], model_config['activation'], model_config['ln_eps']) == (192, 'gelu_tanh', 1e-5)
  tokens = np.random.default_rng(1).integers(0, 80, (2, 24))
  with torch.no_grad():
    expected = reference(torch.from_numpy(tokens)).logits.numpy()
  assert np.abs(our_logits(params, model_config, tokens) - expected).max() < 1e-4


def test_names_with_or_without_the_transformer_prefix_import_alike(tiny_params, tmp_path):
  params = tiny_params
  convert_gpt2.save_hf_gpt2(params, TINY, str(tmp_path))
  path = os.path.join(str(tmp_path), 'model.safetensors')
  tensors = load_file(path)
  assert 'h.0.attn.c_attn.weight' in tensors and tensors['h.0.attn.c_attn.weight'].shape == (32, 96)  # Conv1D (in, out)
  plain, _ = convert_gpt2.load_hf_gpt2(str(tmp_path))
  prefixed = {f'transformer.{k}': v for k, v in tensors.items()}
  prefixed['lm_head.weight'] = tensors['wte.weight']
  prefixed['transformer.h.0.attn.bias'] = np.tril(np.ones((1, 1, 40, 40), np.float32))   # an old mask buffer
  save_file(prefixed, path, metadata={'format': 'pt'})
  again, model_config = convert_gpt2.load_hf_gpt2(str(tmp_path))
  assert_trees_identical(plain, again)
  assert_trees_identical(params, again)
  assert model_config['unused_tensors'] == []


def test_a_model_without_biases_exports_zero_biases_and_errors_name_the_tensor(tmp_path):
  config = {**TINY, 'bias': False, 'activation': 'gelu'}
  params = random_params(config)
  convert_gpt2.save_hf_gpt2(params, config, str(tmp_path))
  with open(os.path.join(str(tmp_path), 'config.json')) as f:
    assert json.load(f)['activation_function'] == 'gelu'
  tensors = load_file(os.path.join(str(tmp_path), 'model.safetensors'))
  assert not tensors['h.1.mlp.c_fc.bias'].any() and not tensors['ln_f.bias'].any()
  del tensors['h.1.mlp.c_proj.weight']
  save_file(tensors, os.path.join(str(tmp_path), 'model.safetensors'))
  with pytest.raises(convert_files.ConversionError, match=r'h\.1\.mlp\.c_proj\.weight'):
    convert_gpt2.load_hf_gpt2(str(tmp_path))


def test_convert_command_picks_the_family_from_the_files(tiny_params, tmp_path):
  params = tiny_params
  convert_gpt2.save_hf_gpt2(params, TINY, str(tmp_path / 'hf'))
  report = convert_command.convert_command(str(tmp_path / 'hf'), None, str(tmp_path / 'ours'))
  assert report['unused_tensors'] == []
  back, model_config, _ = convert_files.load_params(str(tmp_path / 'ours'))
  assert model_config['family'] == 'gpt'
  assert_trees_identical(params, back)
  convert_command.convert_command(None, str(tmp_path / 'out'), str(tmp_path / 'ours'))
  out = load_file(os.path.join(str(tmp_path / 'out'), 'model.safetensors'))
  original = load_file(os.path.join(str(tmp_path / 'hf'), 'model.safetensors'))
  assert sorted(out) == sorted(original) and all(np.array_equal(out[k], original[k]) for k in out)
