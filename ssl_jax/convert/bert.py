"""Hugging Face BERT checkpoints in and out, exactly (the WordPiece tokenizer is data/wordpiece.py).

A Hugging Face BERT directory holds `config.json`, `model.safetensors` (tensors named as
in transformers' BertModel, or BertForPreTraining with a `bert.` prefix on the body and
the heads under `cls.`) and `vocab.txt` (one WordPiece a line; the id is the line number).

  params, model_config, vocab = load_hf_bert('bert-base-uncased/')   # into our BERT's tree
  save_hf_bert(params, model_config, 'out/', vocab)                  # and back out

Parameters a checkpoint lacks (the pooler or the pre-training heads of a BertModel) keep a
seeded fresh initialisation, listed in model_config['fresh_init']; tensors with no place in
our model are listed in model_config['unused_tensors'].

How the layouts differ: HF's nn.Linear keeps weight as (out, in), ours kernel as (in, out);
our attention fuses query/key/value into one (embed, 3, heads, head_dim) kernel and keeps
the output projection as (heads, head_dim, embed); the MLM decoder is tied to the word
embeddings on both sides, so only its bias is stored. Every transform is a transpose or a
reshape, so a round trip is bit-identical.
"""

import dataclasses
import functools
import os
from typing import List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from safetensors.numpy import save_file

from ssl_jax import storage
from ssl_jax.convert.files import (FROM_HF_ACTIVATION, HF_CONFIG, HF_WEIGHTS, TO_HF_ACTIVATION, VOCAB_FILE,
                                   ConversionError, Pair, copy_tensor, flatten_tree, get_path, layer_norm_pair,
                                   linear_pair, read_hf_tensors, read_json, transformer_config, unflatten_tree,
                                   to_ours, write_atomically, write_json, write_vocab, abstract_params)
from ssl_jax.data.wordpiece import read_vocab
from ssl_jax.models.bert import BERT, TYPE_VOCAB_SIZE
from ssl_jax.models.layers import TransformerConfig

# Our parameters that a checkpoint may lack (BertModel has no pre-training heads; some have no pooler).
OPTIONAL = ('pooler', 'nsp', 'mlm_transform', 'mlm_ln', 'mlm_bias')
HEADS = ('nsp', 'mlm_transform', 'mlm_ln', 'mlm_bias')

# Model shape: Hugging Face config.json <-> our model_config.

def model_config_from_hf(hf: dict, where: str = HF_CONFIG) -> dict:
  """Our model_config for a Hugging Face BertConfig dict; refuses what our BERT cannot be."""
  if hf.get('model_type', 'bert') != 'bert':
    raise ConversionError(f'{where}: model_type {hf.get("model_type")!r} is not bert')
  act = hf.get('hidden_act', 'gelu')
  if act not in FROM_HF_ACTIVATION:
    raise ConversionError(f'{where}: hidden_act {act!r} is not one of {", ".join(FROM_HF_ACTIVATION)}')
  if hf.get('position_embedding_type', 'absolute') != 'absolute':
    raise ConversionError(f'{where}: position_embedding_type {hf["position_embedding_type"]!r}; '
                          'only learned absolute positions are supported')
  if hf.get('type_vocab_size', TYPE_VOCAB_SIZE) != TYPE_VOCAB_SIZE:
    raise ConversionError(f'{where}: type_vocab_size {hf["type_vocab_size"]}; our BERT has {TYPE_VOCAB_SIZE} segments')
  try:
    config = dict(family='bert', num_layers=int(hf['num_hidden_layers']), num_heads=int(hf['num_attention_heads']),
                  d_model=int(hf['hidden_size']), d_ff=int(hf['intermediate_size']),
                  vocab_size=int(hf['vocab_size']), max_len=int(hf.get('max_position_embeddings', 512)),
                  activation=FROM_HF_ACTIVATION[act], ln_eps=float(hf.get('layer_norm_eps', 1e-12)),
                  dropout=float(hf.get('hidden_dropout_prob', 0.1)), bias=True)
  except KeyError as e:
    raise ConversionError(f'{where}: no {e.args[0]!r}') from None
  if config['d_model'] % config['num_heads']:
    raise ConversionError(f'{where}: hidden_size {config["d_model"]} is not divisible by '
                          f'num_attention_heads {config["num_heads"]}')
  return config


def hf_config_from_model(model_config: dict, heads: bool = True) -> dict:
  """A Hugging Face config.json dict (BertForPreTraining when `heads`, else BertModel)."""
  mc = model_config
  if mc['activation'] not in TO_HF_ACTIVATION:
    raise ConversionError(f'activation {mc["activation"]!r} has no Hugging Face name')
  dropout = float(mc.get('dropout', 0.1))
  return {
      'architectures': ['BertForPreTraining' if heads else 'BertModel'],
      'model_type': 'bert',
      'vocab_size': int(mc['vocab_size']),
      'hidden_size': int(mc['d_model']),
      'num_hidden_layers': int(mc['num_layers']),
      'num_attention_heads': int(mc['num_heads']),
      'intermediate_size': int(mc['d_ff']),
      'hidden_act': TO_HF_ACTIVATION[mc['activation']],
      'hidden_dropout_prob': dropout,
      # Our attention applies no dropout to its probabilities (fused kernels do not expose it).
      'attention_probs_dropout_prob': 0.0,
      'max_position_embeddings': int(mc['max_len']),
      'type_vocab_size': TYPE_VOCAB_SIZE,
      'initializer_range': 0.02,
      'layer_norm_eps': float(mc.get('ln_eps', 1e-12)),
      'pad_token_id': 0,
      'position_embedding_type': 'absolute',
      'tie_word_embeddings': True,
  }

def _abstract_params(cfg: TransformerConfig) -> dict:
  return abstract_params(BERT(cfg))   # heads included


@functools.partial(jax.jit, static_argnums=0)
def _init(cfg: TransformerConfig, rng) -> dict:
  # Jitted once per shape: compiling an initialiser takes seconds on a CPU, running it little.
  return nn.meta.unbox(BERT(cfg).init(rng, jnp.zeros((1, 1), jnp.int32))['params'])


def _fresh_params(cfg: TransformerConfig, seed: int) -> dict:
  """Every parameter of BERT(cfg), initialised from `seed` as model.init does (numpy)."""
  return jax.tree_util.tree_map(np.asarray, _init(cfg, jax.random.key(seed)))


def pairs(cfg: TransformerConfig) -> List[Pair]:
  """Every parameter of our BERT with its Hugging Face names and the transforms between them."""
  c, nh, hs = cfg.d_model, cfg.num_heads, cfg.head_dim
  table = [(('word_embeddings',), copy_tensor('embeddings.word_embeddings.weight')),
           (('position_embeddings',), copy_tensor('embeddings.position_embeddings.weight')),
           (('token_type_embeddings',), copy_tensor('embeddings.token_type_embeddings.weight'))]
  table += [(('embeddings_ln', 'LayerNorm_0', k), v) for k, v in layer_norm_pair('embeddings.LayerNorm')]
  for i in range(cfg.num_layers):
    ours, hf = ('blocks', f'h_{i}'), f'encoder.layer.{i}'
    qkv = tuple(f'{hf}.attention.self.{n}' for n in ('query', 'key', 'value'))
    table += [
        # Three (out, in) weights -> one (embed, 3, heads, head_dim) kernel, and back.
        (ours + ('attn', 'qkv', 'kernel'), dict(
            hf=tuple(f'{n}.weight' for n in qkv),
            to_ours=lambda *w: np.stack([x.T.reshape(c, nh, hs) for x in w], axis=1),
            to_hf=lambda k: tuple(k[:, j].reshape(c, c).T for j in range(3)))),
        (ours + ('attn', 'qkv', 'bias'), dict(
            hf=tuple(f'{n}.bias' for n in qkv),
            to_ours=lambda *b: np.stack([x.reshape(nh, hs) for x in b], axis=0),
            to_hf=lambda b: tuple(b[j].reshape(c) for j in range(3)))),
        # (embed, heads * head_dim) weight -> (heads, head_dim, embed) kernel.
        (ours + ('attn', 'out', 'kernel'), dict(
            hf=(f'{hf}.attention.output.dense.weight',),
            to_ours=lambda w: w.T.reshape(nh, hs, c),
            to_hf=lambda k: (k.reshape(c, c).T,))),
        (ours + ('attn', 'out', 'bias'), copy_tensor(f'{hf}.attention.output.dense.bias')),
    ]
    table += [(ours + ('ln1', 'LayerNorm_0', k), v) for k, v in layer_norm_pair(f'{hf}.attention.output.LayerNorm')]
    table += [(ours + ('mlp', 'fc', k), v) for k, v in linear_pair(f'{hf}.intermediate.dense')]
    table += [(ours + ('mlp', 'proj', k), v) for k, v in linear_pair(f'{hf}.output.dense')]
    table += [(ours + ('ln2', 'LayerNorm_0', k), v) for k, v in layer_norm_pair(f'{hf}.output.LayerNorm')]
  table += [(('pooler', k), v) for k, v in linear_pair('pooler.dense')]
  table += [(('nsp', k), v) for k, v in linear_pair('cls.seq_relationship')]
  table += [(('mlm_transform', k), v) for k, v in linear_pair('cls.predictions.transform.dense')]
  table += [(('mlm_ln', 'LayerNorm_0', k), v) for k, v in layer_norm_pair('cls.predictions.transform.LayerNorm')]
  table += [(('mlm_bias',), copy_tensor('cls.predictions.bias'))]
  return [Pair(path, **spec) for path, spec in table]


# Import.

def load_hf_bert(directory: str, seed: int = 0) -> Tuple[dict, dict, Optional[List[str]]]:
  """(params, model_config, vocab) of the Hugging Face BERT checkpoint in `directory`.

  params is our BERT's full tree (numpy float32). Parameters the checkpoint lacks (the
  pooler or the pre-training heads) keep a fresh initialisation from `seed`; their paths
  are listed in model_config['fresh_init'], and checkpoint tensors we have no place for in
  model_config['unused_tensors']. vocab is None when there is no vocab.txt.
  """
  model_config = model_config_from_hf(read_json(os.path.join(directory, HF_CONFIG)),
                                      os.path.join(directory, HF_CONFIG))
  tensors = read_hf_tensors(directory)
  # BertForPreTraining (and the other task models) prefix the body with `bert.`.
  prefixed = any(k.startswith('bert.') for k in tensors)
  tensors = {(k[len('bert.'):] if prefixed and k.startswith('bert.') else k): v for k, v in tensors.items()}
  cfg = transformer_config(model_config)
  abstract = _abstract_params(cfg)
  flat, fresh, missing, used = {}, [], [], set()
  for pair in pairs(cfg):
    if not all(n in tensors for n in pair.hf):
      (fresh if pair.path[0] in OPTIONAL else missing).append(pair)
      continue
    flat[pair.path] = to_ours(pair, tensors, abstract, directory)
    used.update(pair.hf)
  if missing:
    names = [n for p in missing for n in p.hf if n not in tensors]
    raise ConversionError(f'{directory}: {len(names)} tensors of the BERT body are missing, e.g. '
                          f'{", ".join(names[:3])}')
  if fresh:
    initial = _fresh_params(cfg, seed)
    for pair in fresh:
      flat[pair.path] = get_path(initial, pair.path)
  unused = sorted(k for k in tensors if k not in used and k != 'embeddings.position_ids')
  decoder = tensors.get('cls.predictions.decoder.weight')
  if decoder is not None and np.array_equal(decoder, tensors['embeddings.word_embeddings.weight']):
    unused.remove('cls.predictions.decoder.weight')   # the tied copy: ours is the word embeddings
  if 'cls.predictions.decoder.bias' in unused and 'cls.predictions.bias' in used:
    unused.remove('cls.predictions.decoder.bias')      # tied to cls.predictions.bias
  model_config['fresh_init'] = ['/'.join(p.path) for p in fresh]
  model_config['unused_tensors'] = unused
  vocab_path = os.path.join(directory, VOCAB_FILE)
  vocab = read_vocab(vocab_path) if os.path.exists(vocab_path) else None
  return unflatten_tree(flat), model_config, vocab


# Export.

def save_hf_bert(params: dict, model_config: dict, directory: str, vocab: Optional[Sequence[str]] = None) -> List[str]:
  """Writes `directory`/config.json, model.safetensors (float32) and, given vocab, vocab.txt.

  With the pre-training heads in `params` the checkpoint is a BertForPreTraining (body under
  `bert.`, heads under `cls.`); without them a BertModel. A model without biases gets zero
  ones, which computes the same. Returns the names of the files written.
  """
  cfg = transformer_config(model_config)
  flat = flatten_tree(jax.tree_util.tree_map(np.asarray, params))
  modules = {p[:-1] for p in flat}
  heads = any(p[0] in HEADS for p in flat)
  shapes = _abstract_params(dataclasses.replace(cfg, bias=True))
  tensors = {}
  for pair in pairs(cfg):
    value = flat.get(pair.path)
    if value is None:
      if pair.path[-1] == 'bias' and pair.path[:-1] in modules:
        value = np.zeros(get_path(shapes, pair.path).shape, np.float32)
      elif pair.path[0] in OPTIONAL:
        continue
      else:
        raise ConversionError(f'params have no {"/".join(pair.path)}: not our BERT\'s tree?')
    if value.shape != get_path(shapes, pair.path).shape:
      raise ConversionError(f'params: {"/".join(pair.path)} has shape {value.shape}, the model config says '
                            f'{get_path(shapes, pair.path).shape}')
    for name, x in zip(pair.hf, pair.to_hf(np.asarray(value, np.float32))):
      name = name if pair.is_head or not heads else f'bert.{name}'
      tensors[name] = np.ascontiguousarray(x)
  storage.makedirs(directory)   # a local folder, or a URL (each file then uploaded whole)
  # transformers refuses a safetensors file whose metadata does not name its format.
  write_atomically(storage.join(directory, HF_WEIGHTS), lambda p: save_file(tensors, p, metadata={'format': 'pt'}))
  written = [HF_CONFIG, HF_WEIGHTS]
  write_json(storage.join(directory, HF_CONFIG), hf_config_from_model(model_config, heads))
  if vocab is not None:
    write_vocab(storage.join(directory, VOCAB_FILE), vocab)
    written.append(VOCAB_FILE)
  return written
