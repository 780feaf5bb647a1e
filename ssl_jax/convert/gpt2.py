"""Hugging Face GPT-2 checkpoints in and out, exactly (BERT: bert.py; shared helpers: files.py).

A GPT-2 directory holds `config.json` (a GPT2Config: n_layer, n_head, n_embd, n_inner,
n_positions, vocab_size, activation_function, layer_norm_epsilon) and `model.safetensors`
with GPT2Model's tensor names (`wte.weight`, `wpe.weight`, `h.{i}.ln_1`, `h.{i}.attn.c_attn`,
`h.{i}.attn.c_proj`, `h.{i}.ln_2`, `h.{i}.mlp.c_fc`, `h.{i}.mlp.c_proj`, `ln_f`), or
GPT2LMHeadModel's: the same under `transformer.`, plus `lm_head.weight`, tied to wte and
usually not stored. Both read; we write GPT2LMHeadModel's layout without the prefix, as
OpenAI's released checkpoints are, which GPT2LMHeadModel.from_pretrained loads.

  params, model_config = load_hf_gpt2('gpt2/')
  save_hf_gpt2(params, model_config, 'out/')

How the layouts differ: hardly. GPT-2's Conv1D keeps its weight as (in, out), as our
kernels are. c_attn's (C, 3C) output is query, key and value one after another, each heads
x head_dim, so it reshapes straight into our fused (C, 3, heads, head_dim) kernel; c_proj
(C, C) into (heads, head_dim, C). Every transform is a reshape, so round trips are
bit-identical. Our GPT is GPT-2's shape (pre-LN, learned positions, tied head); its
gelu_tanh is GPT-2's gelu_new and its LayerNorm eps GPT-2's 1e-5. A model trained without
biases (nanoGPT's recipe) exports zero biases, which compute the same. Only weights move:
our tokenizers are char or sentencepiece, not GPT-2's byte-level BPE.
"""

import os
from typing import List, Tuple

import jax
import numpy as np
from safetensors.numpy import save_file

from ssl_jax import storage
from ssl_jax.convert.files import (FROM_HF_ACTIVATION, HF_CONFIG, HF_WEIGHTS, TO_HF_ACTIVATION, ConversionError,
                                   Pair, copy_tensor, flatten_tree, get_path, layer_norm_pair, read_hf_tensors,
                                   read_json, to_ours, transformer_config, unflatten_tree, write_atomically,
                                   write_json, abstract_params)
from ssl_jax.models.gpt import GPT
from ssl_jax.models.layers import TransformerConfig

PREFIX = 'transformer.'
# Tensors a checkpoint may hold that are not parameters: old causal-mask buffers, the tied head.
NOT_PARAMETERS = (r'.attn.bias', r'.attn.masked_bias', 'lm_head.weight')


def model_config_from_hf(hf: dict, where: str = HF_CONFIG) -> dict:
  """Our model_config for a Hugging Face GPT2Config dict; refuses what our GPT cannot be."""
  if hf.get('model_type', 'gpt2') != 'gpt2':
    raise ConversionError(f'{where}: model_type {hf.get("model_type")!r} is not gpt2')
  act = hf.get('activation_function', 'gelu_new')
  if act not in FROM_HF_ACTIVATION:
    raise ConversionError(f'{where}: activation_function {act!r} is not one of {", ".join(FROM_HF_ACTIVATION)}')
  for flag, fine in (('scale_attn_weights', True), ('scale_attn_by_inverse_layer_idx', False),
                     ('reorder_and_upcast_attn', False), ('add_cross_attention', False)):
    if hf.get(flag, fine) != fine:
      raise ConversionError(f'{where}: {flag}={hf[flag]} is not what our GPT computes')
  try:
    d_model = int(hf['n_embd'])
    config = dict(family='gpt', num_layers=int(hf['n_layer']), num_heads=int(hf['n_head']), d_model=d_model,
                  d_ff=int(hf.get('n_inner') or 4 * d_model), vocab_size=int(hf['vocab_size']),
                  max_len=int(hf['n_positions']), activation=FROM_HF_ACTIVATION[act],
                  ln_eps=float(hf.get('layer_norm_epsilon', 1e-5)), dropout=float(hf.get('resid_pdrop', 0.1)),
                  bias=True)
  except KeyError as e:
    raise ConversionError(f'{where}: no {e.args[0]!r}') from None
  if config['d_model'] % config['num_heads']:
    raise ConversionError(f'{where}: n_embd {d_model} is not divisible by n_head {config["num_heads"]}')
  return config


def hf_config_from_model(model_config: dict) -> dict:
  """A Hugging Face config.json dict for GPT2LMHeadModel."""
  mc = model_config
  if mc['activation'] not in TO_HF_ACTIVATION:
    raise ConversionError(f'activation {mc["activation"]!r} has no Hugging Face name')
  dropout = float(mc.get('dropout', 0.0))
  return {
      'architectures': ['GPT2LMHeadModel'],
      'model_type': 'gpt2',
      'vocab_size': int(mc['vocab_size']),
      'n_positions': int(mc['max_len']),
      'n_embd': int(mc['d_model']),
      'n_layer': int(mc['num_layers']),
      'n_head': int(mc['num_heads']),
      'n_inner': int(mc['d_ff']),
      'activation_function': TO_HF_ACTIVATION[mc['activation']],
      'resid_pdrop': dropout,
      'embd_pdrop': dropout,
      'attn_pdrop': 0.0,   # our attention applies no dropout to its probabilities
      'layer_norm_epsilon': float(mc.get('ln_eps', 1e-5)),
      'initializer_range': 0.02,
      'scale_attn_weights': True,
      'tie_word_embeddings': True,
      'use_cache': True,
  }


def _abstract_params(cfg: TransformerConfig) -> dict:
  return abstract_params(GPT(cfg))


def _conv1d(name, ours_shape=None, hf_shape=None):
  """Conv1D: weight (in, out) is our kernel, reshaped to ours_shape (and back to hf_shape)
  where ours splits an axis into heads; bias (out,) likewise."""
  if ours_shape is None:
    return [('kernel', copy_tensor(f'{name}.weight')), ('bias', copy_tensor(f'{name}.bias'))]
  return [('kernel', dict(hf=(f'{name}.weight',), to_ours=lambda w: w.reshape(ours_shape),
                          to_hf=lambda k: (k.reshape(hf_shape),)))]


def pairs(cfg: TransformerConfig) -> List[Pair]:
  """Every parameter of our GPT with its GPT2Model names and the reshapes between them."""
  c, nh, hs = cfg.d_model, cfg.num_heads, cfg.head_dim
  table = [(('wte',), copy_tensor('wte.weight')), (('wpe',), copy_tensor('wpe.weight'))]
  for i in range(cfg.num_layers):
    ours, hf = ('blocks', f'h_{i}'), f'h.{i}'
    table += [(ours + ('ln1', 'LayerNorm_0', k), v) for k, v in layer_norm_pair(f'{hf}.ln_1')]
    # c_attn (C, 3C) -> (C, 3, heads, head_dim): query, key, value, each split into heads.
    table += [(ours + ('attn', 'qkv', 'kernel'), v) for _, v in _conv1d(f'{hf}.attn.c_attn', (c, 3, nh, hs), (c, 3 * c))]
    table += [(ours + ('attn', 'qkv', 'bias'), dict(hf=(f'{hf}.attn.c_attn.bias',), to_ours=lambda b: b.reshape(3, nh, hs),
                                                    to_hf=lambda b: (b.reshape(3 * c),)))]
    table += [(ours + ('attn', 'out', 'kernel'), v) for _, v in _conv1d(f'{hf}.attn.c_proj', (nh, hs, c), (c, c))]
    table += [(ours + ('attn', 'out', 'bias'), copy_tensor(f'{hf}.attn.c_proj.bias'))]
    table += [(ours + ('ln2', 'LayerNorm_0', k), v) for k, v in layer_norm_pair(f'{hf}.ln_2')]
    table += [(ours + ('mlp', 'fc', k), v) for k, v in _conv1d(f'{hf}.mlp.c_fc')]
    table += [(ours + ('mlp', 'proj', k), v) for k, v in _conv1d(f'{hf}.mlp.c_proj')]
  table += [(('ln_f', 'LayerNorm_0', k), v) for k, v in layer_norm_pair('ln_f')]
  return [Pair(path, **spec) for path, spec in table]


def load_hf_gpt2(directory: str) -> Tuple[dict, dict]:
  """(params, model_config) of the Hugging Face GPT-2 checkpoint in `directory`: our GPT's
  full tree (numpy float32); model_config['unused_tensors'] lists what had no place in it."""
  model_config = model_config_from_hf(read_json(os.path.join(directory, HF_CONFIG)),
                                      os.path.join(directory, HF_CONFIG))
  tensors = read_hf_tensors(directory)
  tensors = {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in tensors.items()}
  cfg = transformer_config(model_config)
  abstract = _abstract_params(cfg)
  flat, used = {}, set()
  missing = [n for pair in pairs(cfg) for n in pair.hf if n not in tensors]
  if missing:
    raise ConversionError(f'{directory}: {len(missing)} tensors of GPT-2 are missing, e.g. {", ".join(missing[:3])}')
  for pair in pairs(cfg):
    flat[pair.path] = to_ours(pair, tensors, abstract, directory)
    used.update(pair.hf)
  head = tensors.get('lm_head.weight')
  if head is not None and not np.array_equal(head, tensors['wte.weight']):
    raise ConversionError(f'{directory}: lm_head.weight is not tied to wte.weight; our GPT ties them')
  model_config['unused_tensors'] = sorted(k for k in tensors if k not in used and not k.endswith(NOT_PARAMETERS))
  return unflatten_tree(flat), model_config


def save_hf_gpt2(params: dict, model_config: dict, directory: str) -> List[str]:
  """Writes `directory`/config.json and model.safetensors (float32); returns the file names."""
  cfg = transformer_config(model_config)
  flat = flatten_tree(jax.tree_util.tree_map(np.asarray, params))
  modules = {p[:-1] for p in flat}
  shapes = _abstract_params(transformer_config(model_config, bias=True))
  tensors = {}
  for pair in pairs(cfg):
    want = get_path(shapes, pair.path).shape
    value = flat.get(pair.path)
    if value is None and pair.path[-1] == 'bias' and pair.path[:-1] in modules:
      value = np.zeros(want, np.float32)    # a model without biases
    if value is None:
      raise ConversionError(f'params have no {"/".join(pair.path)}: not our GPT\'s tree?')
    if value.shape != want:
      raise ConversionError(f'params: {"/".join(pair.path)} has shape {value.shape}, the model config says {want}')
    for name, x in zip(pair.hf, pair.to_hf(np.asarray(value, np.float32))):
      tensors[name] = np.ascontiguousarray(x)
  storage.makedirs(directory)   # a local folder, or a URL (each file then uploaded whole)
  write_atomically(storage.join(directory, HF_WEIGHTS), lambda p: save_file(tensors, p, metadata={'format': 'pt'}))
  write_json(storage.join(directory, HF_CONFIG), hf_config_from_model(model_config))
  return [HF_CONFIG, HF_WEIGHTS]
