"""Hugging Face Llama, Qwen2 and Mistral in and out: tiny random models saved by transformers
(grouped kv heads, several weight files with their index) give transformers' logits through our
llama; an export loads back in transformers with the same logits; round trips are bit-identical."""

import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from ssl_jax.convert import llama as convert_llama  # pylint: disable=wrong-import-position
from ssl_jax.convert.files import read_hf_tensors, transformer_config  # pylint: disable=wrong-import-position
from ssl_jax.models.llama import Llama  # pylint: disable=wrong-import-position
from conftest import run_cli  # pylint: disable=wrong-import-position

SHAPE = dict(vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
MODELS = {
    # Llama 3.1's rotary scaling, an untied head.
    'llama': lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **SHAPE, rope_theta=500000.0, tie_word_embeddings=False, rope_scaling={
            'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
            'original_max_position_embeddings': 8192})),
    'qwen2': lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **SHAPE, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True)),
    'mistral': lambda: transformers.MistralForCausalLM(transformers.MistralConfig(
        **{**SHAPE, 'num_key_value_heads': 1}, sliding_window=None, tie_word_embeddings=False)),
}
IDS = np.array([[3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 32, 38, 4, 6, 2, 60, 43, 38, 32]])


def hf_logits(model):
  with torch.no_grad():
    return model(torch.tensor(IDS)).logits.numpy()


def our_logits(params, model_config):
  return np.asarray(Llama(transformer_config(model_config)).apply({'params': params}, IDS))


@pytest.fixture(scope='module', params=list(MODELS))
def saved(request, tmp_path_factory):
  torch.manual_seed(0)
  model = MODELS[request.param]().float().eval()
  with torch.no_grad():   # norm scales away from 1 and q/k/v biases away from 0, so each is checked
    for name, p in model.named_parameters():
      if name.endswith('norm.weight') or name.endswith('_proj.bias'):
        p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith('weight') else 0.0))
  directory = str(tmp_path_factory.mktemp(request.param))
  model.save_pretrained(directory, safe_serialization=True, max_shard_size='20KB')   # several files + index
  return request.param, model, directory


def test_import_gives_transformers_logits(saved):
  model_type, model, directory = saved
  assert os.path.exists(os.path.join(directory, 'model.safetensors.index.json'))
  params, model_config = convert_llama.load_hf_llama(directory)
  assert model_config['unused_tensors'] == [] and model_config['bias'] == (model_type == 'qwen2')
  np.testing.assert_allclose(our_logits(params, model_config), hf_logits(model), atol=1e-4, rtol=0)


def test_export_loads_in_transformers_with_the_same_logits_and_round_trips_bit_identically(saved, tmp_path):
  model_type, model, directory = saved
  params, model_config = convert_llama.load_hf_llama(directory)
  out = str(tmp_path / 'out')
  files = convert_llama.save_hf_llama(params, model_config, out, max_shard_bytes=20_000)
  assert 'model.safetensors.index.json' in files
  with open(os.path.join(out, 'config.json')) as f:
    assert json.load(f)['architectures'] == [convert_llama.MODEL_TYPES[model_type]]
  back = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
  assert type(back) is type(model)
  np.testing.assert_allclose(hf_logits(back), hf_logits(model), atol=1e-5, rtol=0)
  original, exported = read_hf_tensors(directory), read_hf_tensors(out)
  tied = model.config.tie_word_embeddings
  assert set(exported) == set(original) - ({'lm_head.weight'} if tied else set())
  for name, x in exported.items():
    np.testing.assert_array_equal(x, original[name], err_msg=name)
  again, again_config = convert_llama.load_hf_llama(out)
  for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(a, b)
  assert {k: v for k, v in again_config.items() if k != 'unused_tensors'} == \
         {k: v for k, v in model_config.items() if k != 'unused_tensors'}


@pytest.mark.parametrize('saved', ['qwen2'], indirect=True)   # one model type through the command line
def test_run_py_imports_and_the_workdir_gives_the_same_logits_through_ssl_jax_load(saved, tmp_path):
  _, model, directory = saved
  workdir = str(tmp_path / 'imported')
  run_cli('convert', '--from_hf', directory, '--workdir', workdir)
  import ssl_jax  # pylint: disable=import-outside-toplevel
  loaded = ssl_jax.load(workdir)
  assert loaded.config.model.family == 'llama' and loaded.config.model.ln_eps == 1e-6
  np.testing.assert_allclose(loaded.logits(IDS[0]), hf_logits(model)[0], atol=1e-4, rtol=0)
  out = str(tmp_path / 'exported')
  run_cli('convert', '--to_hf', out, '--workdir', workdir)
  back = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
  np.testing.assert_allclose(hf_logits(back), hf_logits(model), atol=1e-5, rtol=0)


def test_what_our_llama_cannot_compute_is_refused(tmp_path):
  base = dict(model_type='llama', num_hidden_layers=1, num_attention_heads=2, hidden_size=8, intermediate_size=8,
              vocab_size=5, max_position_embeddings=8)
  for bad, says in (({'attention_bias': True}, 'attention_bias'), ({'hidden_act': 'gelu'}, 'hidden_act'),
                    ({'rope_scaling': {'rope_type': 'yarn', 'factor': 4.0}}, 'rope_scaling')):
    with pytest.raises(convert_llama.ConversionError, match=says):
      convert_llama.model_config_from_hf({**base, **bad})


def test_llama3_rotary_scaling_gives_transformers_frequencies():
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # pylint: disable=import-outside-toplevel
  config = MODELS['llama']().config
  config.hidden_size, config.num_attention_heads, config.head_dim = 2048, 16, 128   # as Llama 3.1
  theirs, _ = ROPE_INIT_FUNCTIONS['llama3'](config, 'cpu')
  ours = convert_llama.llama.inverse_frequencies(128, config.rope_theta, config.rope_scaling['factor'])
  np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)
