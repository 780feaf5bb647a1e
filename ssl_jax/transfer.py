"""Fine-tuning from a pretrained body: where it comes from, how it is loaded, what stays frozen,
and the best checkpoint kept.

`init_from` names one of
  - a training workdir of ours (its config.json and newest checkpoint, any family),
  - a directory written by `run.py convert --from_hf` (params.safetensors, model.json, vocab.txt),
  - a Hugging Face BERT directory (config.json, model.safetensors or pytorch_model.bin, vocab.txt).
The run takes the source's model shape and tokenizer; its parameters fill the body of the
fine-tuning model (under `bert`, `gpt` or `encoder`) and the head starts fresh.
"""

import dataclasses
import functools
import json
import logging
import os
from typing import Optional

import jax
import numpy as np

from ssl_jax.config import ConfigError
from ssl_jax.data import tokenizer as tokenizers

# A family's body: the family its pretrained parameters come from, and the key they sit under.
BASE_FAMILY = {'bert': 'bert', 'bert_classifier': 'bert', 'bert_tagger': 'bert', 'bert_qa': 'bert',
               'gpt': 'gpt', 'gpt_classifier': 'gpt', 'vit': 'vit', 'mae': 'vit', 'vit_classifier': 'vit',
               'jigsaw': 'vit'}
BODY_KEY = {'bert': 'bert', 'gpt': 'gpt', 'vit': 'encoder'}
# Keys that mark a body's own top level (a pretraining tree), rather than one nested under BODY_KEY.
BODY_MARKER = {'bert': 'word_embeddings', 'gpt': 'wte', 'vit': 'patch_embed'}
# What the source decides of the run's config (its shape); dropout and the head stay the experiment's.
SHAPE_KEYS = ('num_layers', 'num_heads', 'd_model', 'd_ff', 'vocab_size', 'max_len', 'activation', 'bias', 'patch')


@dataclasses.dataclass
class Source:
  path: str
  family: str                 # base family: bert | gpt | vit
  model: dict                 # model config fields (SHAPE_KEYS that the source knows)
  params: dict                # numpy tree, as the source model holds it
  tokenizer: object           # None for images
  image_size: int = 0


def read_workdir_params(workdir: str) -> dict:
  """The parameters of a training workdir's newest checkpoint (numpy, on this host)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from ssl_jax import checkpoint  # pylint: disable=import-outside-toplevel
  ckpt = checkpoint.Checkpointer(workdir, create=False)
  try:
    steps = ckpt.steps()
    if not steps:
      raise checkpoint.CheckpointError(f'{ckpt.directory} holds no checkpoint')
    restored = ckpt.manager.restore(steps[-1], args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  finally:
    ckpt.close()
  return jax.tree_util.tree_map(np.asarray, restored['state']['params'])


@functools.lru_cache(maxsize=2)
def read_source(path: str) -> Source:
  from ssl_jax import convert  # pylint: disable=import-outside-toplevel
  if not os.path.isdir(path):
    raise ConfigError(f'init_from={path!r} is not a directory')
  config_path = os.path.join(path, 'config.json')
  if convert.has_params(path):                                  # run.py convert --from_hf output
    params, model, _ = convert.load_params(path)
    return Source(path, BASE_FAMILY[model.get('family', 'bert')], model, params, _text_tokenizer(path))
  if not os.path.exists(config_path):
    raise ConfigError(f'init_from={path!r}: no config.json, {convert.PARAMS_FILE} or checkpoint here')
  with open(config_path) as f:
    saved = json.load(f)
  if 'model_type' in saved:                                     # a Hugging Face directory
    params, model, _ = convert.load_hf_bert(path)
    return Source(path, 'bert', model, params, _text_tokenizer(path))
  model = saved.get('model', {})
  family = BASE_FAMILY.get(model.get('family'))
  if family is None:
    raise ConfigError(f'{config_path}: model.family {model.get("family")!r} has no body to fine-tune')
  model = {k: model[k] for k in SHAPE_KEYS if k in model}
  if not model.get('max_len'):
    model['max_len'] = saved.get('data', {}).get('seq_len', 0)
  return Source(path, family, model, read_workdir_params(path),
                None if family == 'vit' else _text_tokenizer(path),
                image_size=saved.get('data', {}).get('image_size', 0))


def _text_tokenizer(directory: str):
  tok = tokenizers.load(directory)
  if tok is None:
    raise ConfigError(f'init_from={directory!r}: no tokenizer (tokenizer.json, vocab.txt, or vocab.json + '
                      'merges.txt) beside the parameters')
  return tok


def check_init_from(config) -> None:
  """Pretraining from `init_from` (not fine-tuning): checks it before anything is written, so a
  bad one leaves the workdir as it was. A `convert --from_hf` directory (params.safetensors)
  gives the run its model shape and tokenizer; another run's workdir must hold a checkpoint
  of this run's model shape."""
  from ssl_jax import convert  # pylint: disable=import-outside-toplevel
  path = config.init_from
  if not os.path.isdir(path):
    raise ConfigError(f'init_from={path!r} is not a directory')
  if convert.has_params(path):
    _, model = convert.read_model_config(path)
    if BASE_FAMILY.get(model.get('family')) != BASE_FAMILY.get(config.model.family):
      raise ConfigError(f'init_from={path!r} holds a {model.get("family")} model; this run trains '
                        f'model.family={config.model.family}')
    for key, value in model.items():
      if key in SHAPE_KEYS and key in config.model and value not in (None, ''):
        config.model[key] = type(config.model[key])(value)
    if config.data.seq_len > config.model.max_len:
      config.data.seq_len = config.model.max_len
    _text_tokenizer(path)
    return
  checkpoints = os.path.join(path, 'checkpoints')
  if not os.path.isdir(checkpoints) or not os.listdir(checkpoints):
    raise ConfigError(f'init_from={path!r}: no {convert.PARAMS_FILE} and no checkpoint to start from')
  saved_path = os.path.join(path, 'config.json')
  if os.path.exists(saved_path):
    with open(saved_path) as f:
      saved = json.load(f).get('model', {})
    for key in ('family',) + SHAPE_KEYS:
      if key in saved and key in config.model and key != 'vocab_size' and saved[key] != config.model[key]:
        raise ConfigError(f'init_from={path!r} was trained with model.{key}={saved[key]!r}; this run has '
                          f'model.{key}={config.model[key]!r}')


def has_imported_params(directory: str) -> bool:
  from ssl_jax import convert  # pylint: disable=import-outside-toplevel
  return convert.has_params(directory)


def imported_state(s, directory: str):
  """A fresh state of Setup `s` with every parameter from `directory`'s params.safetensors
  (a `convert --from_hf` import): each must be there, in this model's shape."""
  from ssl_jax import convert  # pylint: disable=import-outside-toplevel
  params, _, _ = convert.load_params(directory)
  state = s.init_fn(jax.random.key(s.config.seed))

  def take(path, value, sharding):
    names = [p.key for p in path]
    node = params
    for name in names:
      node = node.get(name) if isinstance(node, dict) else None
      if node is None:
        raise ConfigError(f'{directory}: {convert.PARAMS_FILE} has no {"/".join(names)}: not this model\'s tree')
    if tuple(node.shape) != tuple(value.shape):
      raise ConfigError(f'{directory}: {"/".join(names)} has shape {node.shape}, this model wants {value.shape}')
    host = np.asarray(node, value.dtype)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return state.replace(params=jax.tree_util.tree_map_with_path(take, state.params, s.state_shardings.params))


def apply_source(config, workdir: str, heads: dict) -> Optional[Source]:
  """Sets the run's model family, shape and tokenizer from `init_from`; None without one.

  heads: base family -> the fine-tuning family of this task (e.g. {'bert': 'bert_classifier'}).
  """
  if not config.init_from:
    return None
  source = read_source(os.path.abspath(config.init_from))
  if source.family not in heads:
    raise ConfigError(f'init_from={config.init_from!r} holds a {source.family} model; task {config.task} '
                      f'fine-tunes {", ".join(heads)}')
  config.model.family = heads[source.family]
  for key, value in source.model.items():
    if key in SHAPE_KEYS and value not in (None, ''):
      config.model[key] = type(config.model[key])(value)
  if source.image_size:
    config.data.image_size = source.image_size
  if source.tokenizer is not None and tokenizers.load(workdir) is None and jax.process_index() == 0:
    tokenizers.save(source.tokenizer, workdir)     # the data pipeline reads it from the workdir
  return source


def body_of(tree: dict, family: str) -> dict:
  if BODY_MARKER[family] in tree:
    return tree
  if BODY_KEY[family] in tree:
    return tree[BODY_KEY[family]]
  raise ConfigError(f'the pretrained parameters hold no {family} body (top-level keys: {sorted(tree)[:8]})')


def load_body(source: Source, params, shardings, family: str):
  """`params` (the fresh fine-tuning model's, sharded) with its body replaced by the source's.

  Every body parameter the source has must match in shape; those it lacks (e.g. a pooler
  that a Hugging Face BertModel left out) keep their fresh values and are logged.
  """
  key = BODY_KEY[family]
  source_body = body_of(source.params, family)
  fresh, loaded = [], 0

  def take(path, value, sharding):
    nonlocal loaded
    names = [p.key for p in path]
    if names[0] != key:
      return value                                   # the head: fresh
    node = source_body
    for name in names[1:]:
      node = node.get(name) if isinstance(node, dict) else None
      if node is None:
        fresh.append('/'.join(names))
        return value
    if tuple(node.shape) != tuple(value.shape):
      raise ConfigError(f'init_from: {"/".join(names[1:])} has shape {node.shape}, this model wants {value.shape}')
    loaded += 1
    host = np.asarray(node, value.dtype)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  out = jax.tree_util.tree_map_with_path(take, params, shardings)
  if not loaded:
    raise ConfigError(f'init_from={source.path!r}: none of its parameters fit this model\'s {key}')
  if fresh:
    logging.warning('init_from: %d body parameters are not in %s and start fresh: %s', len(fresh), source.path,
                    ', '.join(fresh[:5]))
  return out


def frozen(freeze: int, family: str):
  """A predicate on parameter paths: the body (freeze=-1, a linear probe), or its embeddings
  and lowest `freeze` blocks (freeze=k); the head, and what sits above the blocks, train."""
  key = BODY_KEY[BASE_FAMILY[family]]
  top = ('pooler', 'ln_f')

  def is_frozen(path) -> bool:
    names = [p.key for p in path if hasattr(p, 'key')]
    if not names or names[0] != key:
      return False
    if freeze < 0:
      return True
    if 'blocks' in names:
      return int(names[names.index('blocks') + 1].split('_')[-1]) < freeze
    return not any(n in top for n in names)

  return is_frozen


def keep_best(workdir: str, step: int, metrics: dict, metric: str, params, model_config: dict) -> bool:
  """Writes workdir/best/ (params.safetensors, model.json, best.json) when `metric` improves."""
  if metric not in metrics:
    return False
  path = os.path.join(workdir, 'best')
  record_path = os.path.join(path, 'best.json')
  if os.path.exists(record_path):
    with open(record_path) as f:
      if json.load(f)['value'] >= metrics[metric]:
        return False
  host = jax.tree_util.tree_map(np.asarray, _gather(params))
  if jax.process_index() == 0:
    from ssl_jax import convert  # pylint: disable=import-outside-toplevel
    convert.save_params(host, model_config, path)
    tmp = record_path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump({'step': step, 'metric': metric, 'value': metrics[metric], **metrics}, f)
    os.replace(tmp, record_path)     # written last: best.json names only a complete save
  return True


def _gather(params):
  if jax.process_count() == 1:
    return jax.device_get(params)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return multihost_utils.process_allgather(params, tiled=True)
