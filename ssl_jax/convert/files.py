"""What every conversion shares: our own parameter format, Hugging Face file names and
readers, the name-table entries both converters are written in, and atomic writes.

Our side of a conversion is a plain file format, so that nothing but this package (and
no trainer) is needed to read it:
  params.safetensors  every parameter of the model, float32, named by its path in the Flax
                      tree joined with '/' (e.g. `blocks/h_0/attn/qkv/kernel`);
  model.json          the model's shape (`model_config`: family, num_layers, num_heads,
                      d_model, d_ff, vocab_size, max_len, activation, ln_eps, dropout, bias;
                      after an import also `fresh_init` and `unused_tensors`);
  vocab.txt           the WordPiece vocabulary, when there is one.
`load_params(directory)` reads them back as (params, model_config, vocab); `has_params`
says whether a directory holds them. That directory may be a gs:// URL (a workdir's best/,
a `convert --from_hf` workdir): our side goes through ssl_jax.storage; a Hugging Face
directory is a local folder.
"""

import dataclasses
import json
import os
import re
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from flax import linen as nn
from safetensors.numpy import load as load_bytes, load_file, save_file

from ssl_jax import storage
from ssl_jax.checkpoint import CheckpointError
from ssl_jax.data.tokenizer import read_vocab
from ssl_jax.models import families
from ssl_jax.models.layers import TransformerConfig

HF_CONFIG = 'config.json'
HF_WEIGHTS = 'model.safetensors'
HF_WEIGHTS_INDEX = 'model.safetensors.index.json'   # a checkpoint in several files: weight_map name -> file
HF_WEIGHTS_TORCH = 'pytorch_model.bin'
VOCAB_FILE = 'vocab.txt'
PARAMS_FILE = 'params.safetensors'
MODEL_FILE = 'model.json'

# Hugging Face hidden_act -> ours. gelu_new and gelu_pytorch_tanh are both the tanh approximation.
FROM_HF_ACTIVATION = {'gelu': 'gelu', 'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh', 'relu': 'relu'}
TO_HF_ACTIVATION = {'gelu': 'gelu', 'gelu_tanh': 'gelu_new', 'relu': 'relu'}

class ConversionError(CheckpointError):
  """A checkpoint that cannot be converted; the message names the file or tensor."""


def transformer_config(model_config: dict, **overrides) -> TransformerConfig:
  """The TransformerConfig a converter's model_config describes (its family's, per the table)."""
  return families.transformer_config(model_config['family'], **{**families.shape_of(model_config), **overrides})


# The name table: one list of pairs that both directions of a conversion read.

@dataclasses.dataclass(frozen=True)
class Pair:
  """Our parameter `path` and the Hugging Face tensors `hf` it is made of (names without a
  task model's prefix, `bert.` or `transformer.`)."""
  path: Tuple[str, ...]
  hf: Tuple[str, ...]
  to_ours: Callable[..., np.ndarray]        # HF tensors -> our array
  to_hf: Callable[[np.ndarray], tuple]      # our array -> HF tensors

  @property
  def is_head(self) -> bool:
    return self.hf[0].startswith('cls.')   # BERT's pre-training heads


def copy_tensor(*names):
  return dict(hf=names, to_ours=lambda x: x, to_hf=lambda x: (x,))


def linear_pair(name):
  """nn.Linear: weight (out, in), bias (out,) <-> kernel (in, out), bias."""
  return [('kernel', dict(hf=(f'{name}.weight',), to_ours=lambda w: w.T, to_hf=lambda k: (k.T,))),
          ('bias', copy_tensor(f'{name}.bias'))]


def layer_norm_pair(name):
  return [('scale', copy_tensor(f'{name}.weight')), ('bias', copy_tensor(f'{name}.bias'))]


# Reading.

def read_json(path: str) -> dict:
  try:
    return json.loads(storage.read_text(path))
  except FileNotFoundError:
    raise ConversionError(f'{path} does not exist') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConversionError(f'{path} is not valid JSON ({e})') from None


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
  try:
    return load_file(path)
  except TypeError:
    # numpy has no bfloat16: such a checkpoint is read through JAX's arrays, then widened.
    from safetensors.flax import load_file as load_jax_file  # pylint: disable=import-outside-toplevel
    return {k: np.asarray(v, np.float32) for k, v in load_jax_file(path).items()}
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f'{path} does not read as safetensors ({e})') from None


def read_hf_tensors(directory: str) -> Dict[str, np.ndarray]:
  """The checkpoint's tensors by name (one safetensors file, the files an index names, or
  pytorch_model.bin), with old TF-era LayerNorm names made current."""
  path = os.path.join(directory, HF_WEIGHTS)
  index = os.path.join(directory, HF_WEIGHTS_INDEX)
  if os.path.exists(path):
    tensors = _read_safetensors(path)
  elif os.path.exists(index):
    weight_map = read_json(index).get('weight_map')
    if not isinstance(weight_map, dict):
      raise ConversionError(f'{index} has no weight_map')
    tensors = {}
    for name in sorted(set(weight_map.values())):
      if not os.path.exists(os.path.join(directory, name)):
        raise ConversionError(f'{index} names {name}, which is not in {directory}')
      tensors.update(_read_safetensors(os.path.join(directory, name)))
  elif os.path.exists(os.path.join(directory, HF_WEIGHTS_TORCH)):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ConversionError(f'{directory} has only {HF_WEIGHTS_TORCH}: reading it needs torch') from None
    state = torch.load(os.path.join(directory, HF_WEIGHTS_TORCH), map_location='cpu', weights_only=True)
    tensors = {k: v.float().numpy() for k, v in state.items() if v.is_floating_point()}
  else:
    raise ConversionError(f'{directory} has neither {HF_WEIGHTS} nor {HF_WEIGHTS_TORCH}')
  renamed = {}
  for name, x in tensors.items():
    name = re.sub(r'LayerNorm\.gamma$', 'LayerNorm.weight', re.sub(r'LayerNorm\.beta$', 'LayerNorm.bias', name))
    renamed[name] = x
  return renamed


def write_hf_tensors(tensors: Dict[str, np.ndarray], directory: str, max_shard_bytes: int = 5 * 2**30) -> List[str]:
  """Writes `tensors` as model.safetensors, or, past `max_shard_bytes`, as model-0000i-of-0000n
  files and their index (transformers' layout); returns the file names."""
  shards, size = [{}], 0
  for name, x in tensors.items():
    if shards[-1] and size + x.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = x
    size += x.nbytes
  if len(shards) == 1:
    names = [HF_WEIGHTS]
  else:
    names = [f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors' for i in range(len(shards))]
  for name, shard in zip(names, shards):
    write_atomically(storage.join(directory, name), lambda p, shard=shard: save_file(shard, p, metadata={'format': 'pt'}))
  if len(shards) > 1:
    weight_map = {t: name for name, shard in zip(names, shards) for t in shard}
    write_json(storage.join(directory, HF_WEIGHTS_INDEX),
               {'metadata': {'total_size': int(sum(x.nbytes for x in tensors.values()))}, 'weight_map': weight_map})
    names.append(HF_WEIGHTS_INDEX)
  return names


# Our plain file format (params.safetensors + model.json + vocab.txt).

def save_params(params: dict, model_config: dict, directory: str, vocab: Optional[Sequence[str]] = None) -> None:
  storage.makedirs(directory)
  tensors = {'/'.join(p): np.ascontiguousarray(np.asarray(x, np.float32))
             for p, x in flatten_tree(jax.tree_util.tree_map(np.asarray, params)).items()}
  write_atomically(storage.join(directory, PARAMS_FILE), lambda p: save_file(tensors, p, metadata={'format': 'ssl_jax'}))
  write_json(storage.join(directory, MODEL_FILE), model_config)
  if vocab is not None:
    write_vocab(storage.join(directory, VOCAB_FILE), vocab)


def read_model_config(directory: str) -> Tuple[str, dict]:
  """(path, model_config) of the model.json beside a directory's params.safetensors."""
  path = storage.join(directory, MODEL_FILE)
  return path, read_json(path)


def has_params(directory: str) -> bool:
  return storage.exists(storage.join(directory, PARAMS_FILE))


def load_params(directory: str) -> Tuple[dict, dict, Optional[List[str]]]:
  """(params, model_config, vocab) as save_params (or `run.py convert --from_hf`) wrote them."""
  path = storage.join(directory, PARAMS_FILE)
  if not storage.exists(path):
    raise ConversionError(f'{path} does not exist')
  data = storage.read_bytes(path) if storage.is_url(path) else None   # a local file is memory-mapped instead
  try:
    flat = load_file(path) if data is None else load_bytes(data)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f'{path} does not read as safetensors ({e})') from None
  model_config = read_json(storage.join(directory, MODEL_FILE))
  vocab_path = storage.join(directory, VOCAB_FILE)
  vocab = read_vocab(vocab_path) if storage.exists(vocab_path) else None
  return unflatten_tree({tuple(k.split('/')): v for k, v in flat.items()}), model_config, vocab


# Tree and file helpers.

def abstract_params(module) -> dict:
  """Shapes of every parameter of a text model `module` (initialised on one token), without
  computing any."""
  tokens = jax.numpy.zeros((1, 1), jax.numpy.int32)
  return nn.meta.unbox(jax.eval_shape(lambda rng: module.init(rng, tokens)['params'], jax.random.key(0)))


def to_ours(pair: 'Pair', tensors: Dict[str, np.ndarray], abstract: dict, directory: str) -> np.ndarray:
  """`pair`'s parameter made from the Hugging Face `tensors`, in float32; a ConversionError
  when it is not the shape our model (`abstract`) wants."""
  value = np.asarray(pair.to_ours(*[tensors[n] for n in pair.hf]), np.float32)
  want = get_path(abstract, pair.path).shape
  if value.shape != want:
    raise ConversionError(f'{directory}: {", ".join(pair.hf)} of shape {tensors[pair.hf[0]].shape} does not fit '
                          f'our {"/".join(pair.path)} of shape {want} (config.json says otherwise?)')
  return value


def get_path(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def flatten_tree(tree, prefix=()) -> Dict[Tuple[str, ...], np.ndarray]:
  out = {}
  for k, v in tree.items():
    if hasattr(v, 'items'):   # dict or FrozenDict
      out.update(flatten_tree(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def unflatten_tree(flat: Dict[Tuple[str, ...], np.ndarray]) -> dict:
  tree = {}
  for path, v in sorted(flat.items()):
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def write_atomically(path: str, write: Callable[[str], None]) -> None:
  """Writes through a temporary file and a rename, so a crash never leaves half a file; to a
  URL, `write` fills a local temporary file that is then uploaded whole (one object)."""
  if storage.is_url(path):
    with tempfile.TemporaryDirectory() as local:
      tmp = os.path.join(local, storage.basename(path))
      write(tmp)
      storage.upload(tmp, path)
    return
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    write(tmp)
    os.chmod(tmp, 0o644)  # safetensors creates its files readable by their owner only
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, obj: dict) -> None:
  def write(p):
    with open(p, 'w') as f:
      json.dump(obj, f, indent=2)
      f.write('\n')
  write_atomically(path, write)


def write_text(path: str, text: str) -> None:
  def write(p):
    with open(p, 'w', encoding='utf-8') as f:
      f.write(text)
  write_atomically(path, write)


def write_vocab(path: str, vocab: Sequence[str]) -> None:
  def write(p):
    with open(p, 'w', encoding='utf-8') as f:
      f.writelines(token + '\n' for token in vocab)
  write_atomically(path, write)
