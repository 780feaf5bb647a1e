"""Where a run's parameters come from before its first step: `init_from`.

`init_from` names one of
  - a training workdir of ours (its config.json and newest checkpoint, any family),
  - a directory written by `run.py convert --from_hf` (params.safetensors, model.json, tokenizer),
  - a Hugging Face BERT directory (config.json, model.safetensors or pytorch_model.bin, vocab.txt).
A fine-tuning run takes the source's model shape and tokenizer (`apply_source`); a
pretraining run from an import takes its shape too (`check_init_from`), from one of our
workdirs its checkpoint (the trainer restores it). Our workdirs and imports may be gs:// URLs
(read through ssl_jax.storage); a Hugging Face directory is a local folder.
"""

import dataclasses
import functools
import json
from typing import Optional

import jax
import numpy as np

from ssl_jax import checkpoint, storage
from ssl_jax.errors import ConfigError
from ssl_jax.convert import bert as convert_bert, files as convert_files
from ssl_jax.data import tokenizer as tokenizers
from ssl_jax.models import families

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


@functools.lru_cache(maxsize=2)
def read_source(path: str) -> Source:
  if not storage.isdir(path):
    raise ConfigError(f'init_from={path!r} is not a directory')
  config_path = storage.join(path, 'config.json')
  if convert_files.has_params(path):                                  # run.py convert --from_hf output
    params, model, _ = convert_files.load_params(path)
    return Source(path, families.get(model.get('family', 'bert')).body, model, params, _text_tokenizer(path))
  if not storage.exists(config_path):
    raise ConfigError(f'init_from={path!r}: no config.json, {convert_files.PARAMS_FILE} or checkpoint here')
  saved = json.loads(storage.read_text(config_path))
  if 'model_type' in saved and storage.is_url(path):
    raise ConfigError(f'init_from={path!r} is a Hugging Face directory at a URL: copy it to a local folder, '
                      'or import it with run.py convert --from_hf DIR --workdir URL and start from that')
  if 'model_type' in saved:                                     # a Hugging Face directory
    params, model, _ = convert_bert.load_hf_bert(path)
    return Source(path, 'bert', model, params, _text_tokenizer(path))
  model = saved.get('model', {})
  family = _body(model.get('family'))
  if family is None:
    raise ConfigError(f'{config_path}: model.family {model.get("family")!r} has no body to fine-tune')
  model = {k: model[k] for k in SHAPE_KEYS if k in model}
  if not model.get('max_len'):
    model['max_len'] = saved.get('data', {}).get('seq_len', 0)
  return Source(path, family, model, checkpoint.read_params(path),
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
  path = config.init_from
  if not storage.isdir(path):
    raise ConfigError(f'init_from={path!r} is not a directory')
  if convert_files.has_params(path):
    _, model = convert_files.read_model_config(path)
    if _body(model.get('family')) != _body(config.model.family):
      raise ConfigError(f'init_from={path!r} holds a {model.get("family")} model; this run trains '
                        f'model.family={config.model.family}')
    for key, value in model.items():
      if key in SHAPE_KEYS and key in config.model and value not in (None, ''):
        config.model[key] = type(config.model[key])(value)
    if config.data.seq_len > config.model.max_len:
      config.data.seq_len = config.model.max_len
    _text_tokenizer(path)
    return
  if not storage.listdir(storage.join(path, 'checkpoints')):
    raise ConfigError(f'init_from={path!r}: no {convert_files.PARAMS_FILE} and no checkpoint to start from')
  saved_path = storage.join(path, 'config.json')
  if storage.exists(saved_path):
    saved = json.loads(storage.read_text(saved_path)).get('model', {})
    for key in ('family',) + SHAPE_KEYS:
      if key in saved and key in config.model and key != 'vocab_size' and saved[key] != config.model[key]:
        raise ConfigError(f'init_from={path!r} was trained with model.{key}={saved[key]!r}; this run has '
                          f'model.{key}={config.model[key]!r}')


def has_imported_params(directory: str) -> bool:
  return convert_files.has_params(directory)


def imported_state(run, directory: str):
  """A fresh state of Setup `run` with every parameter from `directory`'s params.safetensors."""
  state = run.init_fn(jax.random.key(run.config.seed))
  return state.replace(params=imported_params(directory, run.abstract_params))


def imported_params(directory: str, abstract_params):
  """Every parameter of `abstract_params` (shapes, dtypes and shardings) from `directory`'s
  params.safetensors (a `convert --from_hf` import): each must be there, in this shape."""
  params, _, _ = convert_files.load_params(directory)

  def take(path, value):
    names = [p.key for p in path]
    node = params
    for name in names:
      node = node.get(name) if isinstance(node, dict) else None
      if node is None:
        raise ConfigError(f'{directory}: {convert_files.PARAMS_FILE} has no {"/".join(names)}: not this model\'s tree')
    if tuple(node.shape) != tuple(value.shape):
      raise ConfigError(f'{directory}: {"/".join(names)} has shape {node.shape}, this model wants {value.shape}')
    host = np.asarray(node, value.dtype)
    return jax.make_array_from_callback(host.shape, value.sharding, lambda index: host[index])

  return jax.tree_util.tree_map_with_path(take, abstract_params)


def apply_source(config, workdir: str, heads: dict) -> Optional[Source]:
  """Sets the run's model family, shape and tokenizer from `init_from`; None without one.

  heads: base family -> the fine-tuning family of this task (e.g. {'bert': 'bert_classifier'}).
  """
  if not config.init_from:
    return None
  source = read_source(storage.absolute(config.init_from))
  if source.family not in heads:
    raise ConfigError(f'init_from={config.init_from!r} holds a {source.family} model; task {config.task} '
                      f'fine-tunes {", ".join(heads)}')
  config.model.family = heads[source.family]
  config.model.size = ''   # the shape is the source's
  for key, value in source.model.items():
    if key in SHAPE_KEYS and value not in (None, ''):
      config.model[key] = type(config.model[key])(value)
  if source.image_size:
    config.data.image_size = source.image_size
  if source.tokenizer is not None and tokenizers.load(workdir) is None and jax.process_index() == 0:
    tokenizers.save(source.tokenizer, workdir)     # the data pipeline reads it from the workdir
  return source


def _body(family: str) -> Optional[str]:
  return families.FAMILIES[family].body if family in families.FAMILIES else None
