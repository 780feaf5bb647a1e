"""Hugging Face Llama, Qwen2 and Mistral checkpoints in and out of our llama family, exactly.

A directory holds `config.json` (model_type llama, qwen2 or mistral: num_hidden_layers,
num_attention_heads, num_key_value_heads, hidden_size, intermediate_size, vocab_size,
max_position_embeddings, rms_norm_eps, rope_theta, rope_scaling, tie_word_embeddings) and
`model.safetensors` or several files named by `model.safetensors.index.json`, with
LlamaForCausalLM's tensor names (`model.embed_tokens`, `model.layers.{i}.self_attn.q_proj`,
..., `model.norm`, `lm_head`); the three share them. Qwen2 adds biases to q, k and v (our
`bias`); Mistral's sliding window is met by capping the context at the window.

  params, model_config = load_hf_llama('SmolLM-135M/')
  save_hf_llama(params, model_config, 'out/')

How the layouts differ: a Linear's weight (out, in) is our kernel transposed, with the
heads split out of the output (q, k, v) or input (o) axis. Rotary embeddings: Hugging Face's
checkpoints are in the rotate-half layout (each head's first half of features pairs with its
second; transformers' own conversion permuted Meta's interleaved pairs into it), which is the
layout our model rotates, so q and k move as they are. Every transform is a transpose and a
reshape, so round trips are bit-identical.
"""

import os
from typing import List, Tuple

import jax
import numpy as np

from ssl_jax import storage
from ssl_jax.convert.files import (HF_CONFIG, ConversionError, Pair, copy_tensor, flatten_tree, get_path,
                                   read_hf_tensors, read_json, transformer_config, unflatten_tree, write_hf_tensors,
                                   write_json, to_ours, abstract_params)
from ssl_jax.models import llama
from ssl_jax.models.layers import TransformerConfig

MODEL_TYPES = {'llama': 'LlamaForCausalLM', 'qwen2': 'Qwen2ForCausalLM', 'mistral': 'MistralForCausalLM'}
PREFIX = 'model.'
NOT_PARAMETERS = ('rotary_emb.inv_freq',)    # a buffer older checkpoints stored


def _rope_scaling(hf: dict, where: str) -> float:
  scaling = hf.get('rope_scaling')
  if not scaling:
    return 0.0
  kind = scaling.get('rope_type', scaling.get('type'))
  expected = {'low_freq_factor': llama.LLAMA3_LOW_FREQ_FACTOR, 'high_freq_factor': llama.LLAMA3_HIGH_FREQ_FACTOR,
              'original_max_position_embeddings': llama.LLAMA3_ORIGINAL_CONTEXT}
  if kind == 'default':
    return 0.0
  if kind != 'llama3' or any(float(scaling.get(k, v)) != v for k, v in expected.items()):
    raise ConversionError(f'{where}: rope_scaling {scaling} is not Llama 3.1\'s (rope_type llama3, '
                          f'{", ".join(f"{k} {v:g}" for k, v in expected.items())})')
  return float(scaling['factor'])


def model_config_from_hf(hf: dict, where: str = HF_CONFIG) -> dict:
  """Our model_config for a Llama, Qwen2 or Mistral config.json; refuses what our model cannot be."""
  model_type = hf.get('model_type')
  if model_type not in MODEL_TYPES:
    raise ConversionError(f'{where}: model_type {model_type!r} is not one of {", ".join(MODEL_TYPES)}')
  if hf.get('hidden_act', 'silu') != 'silu':
    raise ConversionError(f'{where}: hidden_act {hf["hidden_act"]!r}; our SwiGLU is silu')
  for flag in ('attention_bias', 'mlp_bias'):   # Llama's: biases on o_proj or the MLP too, which we lack
    if hf.get(flag):
      raise ConversionError(f'{where}: {flag}=true is not what our llama computes')
  try:
    d_model, heads = int(hf['hidden_size']), int(hf['num_attention_heads'])
    max_len = int(hf['max_position_embeddings'])
    window = hf.get('sliding_window') if model_type == 'mistral' or hf.get('use_sliding_window') else None
    config = dict(family='llama', hf_model_type=model_type, num_layers=int(hf['num_hidden_layers']),
                  num_heads=heads, num_kv_heads=int(hf.get('num_key_value_heads') or heads), d_model=d_model,
                  d_ff=int(hf['intermediate_size']), vocab_size=int(hf['vocab_size']),
                  max_len=min(max_len, int(window)) if window else max_len, activation='silu',
                  ln_eps=float(hf.get('rms_norm_eps', 1e-6)), dropout=0.0, bias=model_type == 'qwen2',
                  rope_theta=float(hf.get('rope_theta', 10000.0)), rope_scaling=_rope_scaling(hf, where),
                  tie_embeddings=bool(hf.get('tie_word_embeddings', False)))
  except KeyError as e:
    raise ConversionError(f'{where}: no {e.args[0]!r}') from None
  if d_model % heads or heads % config['num_kv_heads']:
    raise ConversionError(f'{where}: hidden_size {d_model}, {heads} heads and {config["num_kv_heads"]} kv heads '
                          'do not divide')
  if hf.get('head_dim') not in (None, d_model // heads):
    raise ConversionError(f'{where}: head_dim {hf["head_dim"]} is not hidden_size / num_attention_heads')
  return config


def hf_config_from_model(model_config: dict) -> dict:
  """config.json for the model type an import came from (else Qwen2 with q/k/v biases, Llama without)."""
  mc = model_config
  model_type = mc.get('hf_model_type') or ('qwen2' if mc.get('bias') else 'llama')
  if mc.get('bias') != (model_type == 'qwen2'):
    raise ConversionError(f'a {model_type} checkpoint {"has no" if mc.get("bias") else "needs"} q/k/v biases')
  hf = {
      'architectures': [MODEL_TYPES[model_type]], 'model_type': model_type,
      'vocab_size': int(mc['vocab_size']), 'hidden_size': int(mc['d_model']),
      'intermediate_size': int(mc['d_ff']), 'num_hidden_layers': int(mc['num_layers']),
      'num_attention_heads': int(mc['num_heads']), 'num_key_value_heads': int(mc.get('num_kv_heads') or mc['num_heads']),
      'max_position_embeddings': int(mc['max_len']), 'hidden_act': 'silu', 'rms_norm_eps': float(mc['ln_eps']),
      'rope_theta': float(mc.get('rope_theta') or 10000.0), 'tie_word_embeddings': bool(mc.get('tie_embeddings', True)),
      'attention_dropout': 0.0, 'initializer_range': 0.02, 'use_cache': True, 'torch_dtype': 'float32',
  }
  if mc.get('rope_scaling'):
    hf['rope_scaling'] = {'rope_type': 'llama3', 'factor': float(mc['rope_scaling']),
                          'low_freq_factor': llama.LLAMA3_LOW_FREQ_FACTOR,
                          'high_freq_factor': llama.LLAMA3_HIGH_FREQ_FACTOR,
                          'original_max_position_embeddings': llama.LLAMA3_ORIGINAL_CONTEXT}
  if model_type == 'llama':
    hf.update(attention_bias=False, mlp_bias=False)
  if model_type == 'mistral':
    hf['sliding_window'] = None
  return hf


def _abstract_params(cfg: TransformerConfig) -> dict:
  return abstract_params(llama.Llama(cfg))


def _linear(name: str, ours_shape: tuple, heads_out: bool):
  """nn.Linear weight (out, in) <-> our kernel: (in, heads, hs) when heads_out, else (heads, hs, out)
  or (in, out) as ours_shape says."""
  hf_shape = (int(np.prod(ours_shape[1:])), ours_shape[0]) if heads_out else (ours_shape[-1], int(np.prod(ours_shape[:-1])))
  return dict(hf=(f'{name}.weight',), to_ours=lambda w: w.T.reshape(ours_shape), to_hf=lambda k: (k.reshape(hf_shape[::-1]).T,))


def pairs(cfg: TransformerConfig) -> List[Pair]:
  """Every parameter of our llama with its LlamaModel names (without `model.`)."""
  c, nh, nkv, hs, f = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_dim, cfg.d_ff
  table = [(('embed_tokens',), copy_tensor('embed_tokens.weight'))]
  for i in range(cfg.num_layers):
    ours, hf = ('layers', f'h_{i}'), f'layers.{i}'
    table.append((ours + ('input_layernorm', 'scale'), copy_tensor(f'{hf}.input_layernorm.weight')))
    for proj, heads in (('q_proj', nh), ('k_proj', nkv), ('v_proj', nkv)):
      table.append((ours + ('self_attn', proj, 'kernel'), _linear(f'{hf}.self_attn.{proj}', (c, heads, hs), True)))
      if cfg.bias:
        table.append((ours + ('self_attn', proj, 'bias'), dict(
            hf=(f'{hf}.self_attn.{proj}.bias',), to_ours=lambda b, heads=heads: b.reshape(heads, hs),
            to_hf=lambda b: (b.reshape(-1),))))
    table.append((ours + ('self_attn', 'o_proj', 'kernel'), _linear(f'{hf}.self_attn.o_proj', (nh, hs, c), False)))
    table.append((ours + ('post_attention_layernorm', 'scale'), copy_tensor(f'{hf}.post_attention_layernorm.weight')))
    for proj, shape in (('gate_proj', (c, f)), ('up_proj', (c, f)), ('down_proj', (f, c))):
      table.append((ours + ('mlp', proj, 'kernel'), _linear(f'{hf}.mlp.{proj}', shape, False)))
  table.append((('norm', 'scale'), copy_tensor('norm.weight')))
  if not cfg.tie_embeddings:
    table.append((('lm_head',), copy_tensor('lm_head.weight')))
  return [Pair(path, **spec) for path, spec in table]


def load_hf_llama(directory: str) -> Tuple[dict, dict]:
  """(params, model_config) of the Llama, Qwen2 or Mistral checkpoint in `directory`: our
  llama's full tree (numpy float32); model_config['unused_tensors'] lists what had no place."""
  where = os.path.join(directory, HF_CONFIG)
  model_config = model_config_from_hf(read_json(where), where)
  tensors = {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in read_hf_tensors(directory).items()}
  cfg = transformer_config(model_config)
  abstract = _abstract_params(cfg)
  missing = [n for pair in pairs(cfg) for n in pair.hf if n not in tensors]
  if missing:
    raise ConversionError(f'{directory}: {len(missing)} tensors of {model_config["hf_model_type"]} are missing, '
                          f'e.g. {", ".join(missing[:3])}')
  flat, used = {}, set()
  for pair in pairs(cfg):
    flat[pair.path] = to_ours(pair, tensors, abstract, directory)
    used.update(pair.hf)
  head = tensors.get('lm_head.weight')
  if cfg.tie_embeddings and head is not None:
    if not np.array_equal(head, tensors['embed_tokens.weight']):
      raise ConversionError(f'{directory}: tie_word_embeddings is true but lm_head.weight differs from embed_tokens')
    used.add('lm_head.weight')
  model_config['unused_tensors'] = sorted(k for k in tensors if k not in used and not k.endswith(NOT_PARAMETERS))
  return unflatten_tree(flat), model_config


def save_hf_llama(params: dict, model_config: dict, directory: str, max_shard_bytes: int = 5 * 2**30) -> List[str]:
  """Writes `directory`/config.json and the weights (float32; in several files past
  max_shard_bytes, with their index) as the model type's ForCausalLM loads them."""
  hf_config = hf_config_from_model(model_config)
  cfg = transformer_config(model_config)
  flat = flatten_tree(jax.tree_util.tree_map(np.asarray, params))
  shapes = _abstract_params(cfg)
  tensors = {}
  for pair in pairs(cfg):
    value, want = flat.get(pair.path), get_path(shapes, pair.path).shape
    if value is None:
      raise ConversionError(f'params have no {"/".join(pair.path)}: not our llama\'s tree?')
    if value.shape != want:
      raise ConversionError(f'params: {"/".join(pair.path)} has shape {value.shape}, the model config says {want}')
    for name, x in zip(pair.hf, pair.to_hf(np.asarray(value, np.float32))):
      tensors[name if name == 'lm_head.weight' else PREFIX + name] = np.ascontiguousarray(x)
  storage.makedirs(directory)
  files = write_hf_tensors(tensors, directory, max_shard_bytes)
  write_json(storage.join(directory, HF_CONFIG), hf_config)
  return [HF_CONFIG] + files
