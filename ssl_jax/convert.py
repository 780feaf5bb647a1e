"""Hugging Face BERT checkpoints in and out, exactly (the WordPiece tokenizer is data/wordpiece.py).

GPT-2 is convert_gpt2.py, on the helpers here; `run.py convert` picks the family from the
files (config.json's model_type, or our model.json's family).

A Hugging Face BERT directory holds `config.json`, `model.safetensors` (tensors named as
in transformers' BertModel, or BertForPreTraining with a `bert.` prefix on the body and
the heads under `cls.`) and `vocab.txt` (one WordPiece a line; the id is the line number).

  params, model_config, vocab = load_hf_bert('bert-base-uncased/')   # into our BERT's tree
  save_hf_bert(params, model_config, 'out/', vocab)                  # and back out

  python run.py convert --from_hf DIR --workdir OUT   # HF directory -> OUT/params.safetensors, model.json, vocab.txt
  python run.py convert --to_hf DIR --workdir W       # W's params (as above, or its newest checkpoint) -> HF directory

Our side of a conversion is a plain file format, so that nothing but this module (and
no trainer) is needed to read it:
  params.safetensors  every parameter of ssl_jax.models.bert.BERT, float32, named by its
                      path in the Flax tree joined with '/' (e.g. `blocks/h_0/attn/qkv/kernel`);
  model.json          the model's shape (`model_config`, below);
  vocab.txt           the WordPiece vocabulary, when there is one.
`load_params(workdir)` reads them back as (params, model_config, vocab) (`has_params`
says whether a directory holds them): what a run's `init_from` can start from, after
checking model_config's shape against its own config.model. The params hold the whole
tree, heads included.

`model_config` is a dict: family ('bert'), num_layers, num_heads, d_model, d_ff,
vocab_size, max_len, activation (gelu = erf, as BERT; gelu_tanh; relu), ln_eps, dropout,
bias; after an import also `fresh_init` (our parameters the checkpoint lacked, e.g. the
pre-training heads of a BertModel, left at our seeded initialisation) and
`unused_tensors` (checkpoint tensors with no place in our model). `transformer_config()`
turns it into the model's TransformerConfig. (The bert family's TransformerConfig fixes
ln_eps at BERT's 1e-12, which every released BERT uses.)

How the layouts differ: HF's nn.Linear keeps weight as (out, in), ours kernel as (in, out);
our attention fuses query/key/value into one (embed, 3, heads, head_dim) kernel and keeps
the output projection as (heads, head_dim, embed); the MLM decoder is tied to the word
embeddings on both sides, so only its bias is stored. Every transform is a transpose or a
reshape, so a round trip is bit-identical.
"""

import dataclasses
import functools
import json
import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from safetensors.numpy import load_file, save_file

from ssl_jax.checkpoint import CheckpointError
from ssl_jax.data import tokenizer as tokenizers
from ssl_jax.data.text import DataError
from ssl_jax.models.bert import BERT, TYPE_VOCAB_SIZE
from ssl_jax.data.wordpiece import read_vocab
from ssl_jax.models.layers import TransformerConfig

HF_CONFIG = 'config.json'
HF_WEIGHTS = 'model.safetensors'
HF_WEIGHTS_TORCH = 'pytorch_model.bin'
VOCAB_FILE = 'vocab.txt'
PARAMS_FILE = 'params.safetensors'
MODEL_FILE = 'model.json'

# Hugging Face hidden_act -> ours. gelu_new and gelu_pytorch_tanh are both the tanh approximation.
FROM_HF_ACTIVATION = {'gelu': 'gelu', 'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh', 'relu': 'relu'}
TO_HF_ACTIVATION = {'gelu': 'gelu', 'gelu_tanh': 'gelu_new', 'relu': 'relu'}
# Our parameters that a checkpoint may lack (BertModel has no pre-training heads; some have no pooler).
OPTIONAL = ('pooler', 'nsp', 'mlm_transform', 'mlm_ln', 'mlm_bias')
HEADS = ('nsp', 'mlm_transform', 'mlm_ln', 'mlm_bias')
# The families that convert, with the LayerNorm eps their TransformerConfig fixes (models.FAMILIES).
LN_EPS = {'bert': 1e-12, 'gpt': 1e-5}
TRANSFORMER_KEYS = ('num_layers', 'num_heads', 'd_model', 'd_ff', 'vocab_size', 'max_len', 'activation',
                    'ln_eps', 'dropout', 'bias')


class ConversionError(CheckpointError):
  """A checkpoint that cannot be converted; the message names the file or tensor."""


# Model shape: Hugging Face config.json <-> our model_config <-> TransformerConfig.

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


def transformer_config(model_config: dict, **overrides) -> TransformerConfig:
  """The TransformerConfig of our BERT that `model_config` describes (post-LN, as BERT)."""
  fields = {k: model_config[k] for k in TRANSFORMER_KEYS if k in model_config}
  return TransformerConfig(pre_norm=False, **{**fields, **overrides})


def _abstract_params(cfg: TransformerConfig) -> dict:
  """Shapes of every parameter of BERT(cfg), heads included, without computing any."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  boxed = jax.eval_shape(lambda rng: BERT(cfg).init(rng, tokens)['params'], jax.random.key(0))
  return nn.meta.unbox(boxed)


@functools.partial(jax.jit, static_argnums=0)
def _init(cfg: TransformerConfig, rng) -> dict:
  # Jitted once per shape: compiling an initialiser takes seconds on a CPU, running it little.
  return nn.meta.unbox(BERT(cfg).init(rng, jnp.zeros((1, 1), jnp.int32))['params'])


def _fresh_params(cfg: TransformerConfig, seed: int) -> dict:
  """Every parameter of BERT(cfg), initialised from `seed` as model.init does (numpy)."""
  return jax.tree_util.tree_map(np.asarray, _init(cfg, jax.random.key(seed)))


# The name table: one list that both directions read.

@dataclasses.dataclass(frozen=True)
class Pair:
  """Our parameter `path` and the Hugging Face tensors `hf` it is made of (names without `bert.`)."""
  path: Tuple[str, ...]
  hf: Tuple[str, ...]
  to_ours: Callable[..., np.ndarray]        # HF tensors -> our array
  to_hf: Callable[[np.ndarray], tuple]      # our array -> HF tensors

  @property
  def is_head(self) -> bool:
    return self.hf[0].startswith('cls.')


def _copy(*names):
  return dict(hf=names, to_ours=lambda x: x, to_hf=lambda x: (x,))


def _linear(name):
  """nn.Linear: weight (out, in), bias (out,) <-> kernel (in, out), bias."""
  return [('kernel', dict(hf=(f'{name}.weight',), to_ours=lambda w: w.T, to_hf=lambda k: (k.T,))),
          ('bias', _copy(f'{name}.bias'))]


def _layer_norm(name):
  return [('scale', _copy(f'{name}.weight')), ('bias', _copy(f'{name}.bias'))]


def pairs(cfg: TransformerConfig) -> List[Pair]:
  """Every parameter of our BERT with its Hugging Face names and the transforms between them."""
  c, nh, hs = cfg.d_model, cfg.num_heads, cfg.head_dim
  table = [(('word_embeddings',), _copy('embeddings.word_embeddings.weight')),
           (('position_embeddings',), _copy('embeddings.position_embeddings.weight')),
           (('token_type_embeddings',), _copy('embeddings.token_type_embeddings.weight'))]
  table += [(('embeddings_ln', 'LayerNorm_0', k), v) for k, v in _layer_norm('embeddings.LayerNorm')]
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
        (ours + ('attn', 'out', 'bias'), _copy(f'{hf}.attention.output.dense.bias')),
    ]
    table += [(ours + ('ln1', 'LayerNorm_0', k), v) for k, v in _layer_norm(f'{hf}.attention.output.LayerNorm')]
    table += [(ours + ('mlp', 'fc', k), v) for k, v in _linear(f'{hf}.intermediate.dense')]
    table += [(ours + ('mlp', 'proj', k), v) for k, v in _linear(f'{hf}.output.dense')]
    table += [(ours + ('ln2', 'LayerNorm_0', k), v) for k, v in _layer_norm(f'{hf}.output.LayerNorm')]
  table += [(('pooler', k), v) for k, v in _linear('pooler.dense')]
  table += [(('nsp', k), v) for k, v in _linear('cls.seq_relationship')]
  table += [(('mlm_transform', k), v) for k, v in _linear('cls.predictions.transform.dense')]
  table += [(('mlm_ln', 'LayerNorm_0', k), v) for k, v in _layer_norm('cls.predictions.transform.LayerNorm')]
  table += [(('mlm_bias',), _copy('cls.predictions.bias'))]
  return [Pair(path, **spec) for path, spec in table]


# Import.

def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise ConversionError(f'{path} does not exist') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConversionError(f'{path} is not valid JSON ({e})') from None


def _read_hf_tensors(directory: str) -> Dict[str, np.ndarray]:
  """The checkpoint's tensors by name, with old TF-era LayerNorm names made current."""
  path = os.path.join(directory, HF_WEIGHTS)
  if os.path.exists(path):
    try:
      tensors = load_file(path)
    except TypeError:
      # numpy has no bfloat16: such a checkpoint is read through JAX's arrays, then widened.
      from safetensors.flax import load_file as load_jax_file  # pylint: disable=import-outside-toplevel
      tensors = {k: np.asarray(v, np.float32) for k, v in load_jax_file(path).items()}
    except Exception as e:  # pylint: disable=broad-except
      raise ConversionError(f'{path} does not read as safetensors ({e})') from None
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


def load_hf_bert(directory: str, seed: int = 0) -> Tuple[dict, dict, Optional[List[str]]]:
  """(params, model_config, vocab) of the Hugging Face BERT checkpoint in `directory`.

  params is our BERT's full tree (numpy float32). Parameters the checkpoint lacks (the
  pooler or the pre-training heads) keep a fresh initialisation from `seed`; their paths
  are listed in model_config['fresh_init'], and checkpoint tensors we have no place for in
  model_config['unused_tensors']. vocab is None when there is no vocab.txt.
  """
  model_config = model_config_from_hf(_read_json(os.path.join(directory, HF_CONFIG)),
                                      os.path.join(directory, HF_CONFIG))
  tensors = _read_hf_tensors(directory)
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
    value = np.asarray(pair.to_ours(*[tensors[n] for n in pair.hf]), np.float32)
    want = _get(abstract, pair.path).shape
    if value.shape != want:
      raise ConversionError(f'{directory}: {", ".join(pair.hf)} of shape {tensors[pair.hf[0]].shape} does not fit '
                            f'our {"/".join(pair.path)} of shape {want} (config.json says otherwise?)')
    flat[pair.path] = value
    used.update(pair.hf)
  if missing:
    names = [n for p in missing for n in p.hf if n not in tensors]
    raise ConversionError(f'{directory}: {len(names)} tensors of the BERT body are missing, e.g. '
                          f'{", ".join(names[:3])}')
  if fresh:
    initial = _fresh_params(cfg, seed)
    for pair in fresh:
      flat[pair.path] = _get(initial, pair.path)
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
  return _unflatten(flat), model_config, vocab


# Export.

def save_hf_bert(params: dict, model_config: dict, directory: str, vocab: Optional[Sequence[str]] = None) -> List[str]:
  """Writes `directory`/config.json, model.safetensors (float32) and, given vocab, vocab.txt.

  With the pre-training heads in `params` the checkpoint is a BertForPreTraining (body under
  `bert.`, heads under `cls.`); without them a BertModel. A model without biases gets zero
  ones, which computes the same. Returns the names of the files written.
  """
  cfg = transformer_config(model_config)
  flat = _flatten(jax.tree_util.tree_map(np.asarray, params))
  modules = {p[:-1] for p in flat}
  heads = any(p[0] in HEADS for p in flat)
  shapes = _abstract_params(dataclasses.replace(cfg, bias=True))
  tensors = {}
  for pair in pairs(cfg):
    value = flat.get(pair.path)
    if value is None:
      if pair.path[-1] == 'bias' and pair.path[:-1] in modules:
        value = np.zeros(_get(shapes, pair.path).shape, np.float32)
      elif pair.path[0] in OPTIONAL:
        continue
      else:
        raise ConversionError(f'params have no {"/".join(pair.path)}: not our BERT\'s tree?')
    if value.shape != _get(shapes, pair.path).shape:
      raise ConversionError(f'params: {"/".join(pair.path)} has shape {value.shape}, the model config says '
                            f'{_get(shapes, pair.path).shape}')
    for name, x in zip(pair.hf, pair.to_hf(np.asarray(value, np.float32))):
      name = name if pair.is_head or not heads else f'bert.{name}'
      tensors[name] = np.ascontiguousarray(x)
  os.makedirs(directory, exist_ok=True)
  # transformers refuses a safetensors file whose metadata does not name its format.
  _atomic(os.path.join(directory, HF_WEIGHTS), lambda p: save_file(tensors, p, metadata={'format': 'pt'}))
  written = [HF_CONFIG, HF_WEIGHTS]
  _write_json(os.path.join(directory, HF_CONFIG), hf_config_from_model(model_config, heads))
  if vocab is not None:
    _write_vocab(os.path.join(directory, VOCAB_FILE), vocab)
    written.append(VOCAB_FILE)
  return written


# Our plain file format (params.safetensors + model.json + vocab.txt).

def save_params(params: dict, model_config: dict, directory: str, vocab: Optional[Sequence[str]] = None) -> None:
  os.makedirs(directory, exist_ok=True)
  tensors = {'/'.join(p): np.ascontiguousarray(np.asarray(x, np.float32))
             for p, x in _flatten(jax.tree_util.tree_map(np.asarray, params)).items()}
  _atomic(os.path.join(directory, PARAMS_FILE), lambda p: save_file(tensors, p, metadata={'format': 'ssl_jax'}))
  _write_json(os.path.join(directory, MODEL_FILE), model_config)
  if vocab is not None:
    _write_vocab(os.path.join(directory, VOCAB_FILE), vocab)


def read_model_config(directory: str) -> Tuple[str, dict]:
  """(path, model_config) of the model.json beside a directory's params.safetensors."""
  path = os.path.join(directory, MODEL_FILE)
  return path, _read_json(path)


def has_params(directory: str) -> bool:
  return os.path.exists(os.path.join(directory, PARAMS_FILE))


def load_params(directory: str) -> Tuple[dict, dict, Optional[List[str]]]:
  """(params, model_config, vocab) as save_params (or `run.py convert --from_hf`) wrote them."""
  path = os.path.join(directory, PARAMS_FILE)
  if not os.path.exists(path):
    raise ConversionError(f'{path} does not exist')
  try:
    flat = load_file(path)
  except Exception as e:  # pylint: disable=broad-except
    raise ConversionError(f'{path} does not read as safetensors ({e})') from None
  model_config = _read_json(os.path.join(directory, MODEL_FILE))
  vocab_path = os.path.join(directory, VOCAB_FILE)
  vocab = read_vocab(vocab_path) if os.path.exists(vocab_path) else None
  return _unflatten({tuple(k.split('/')): v for k, v in flat.items()}), model_config, vocab


def load_workdir_params(workdir: str) -> Tuple[dict, dict, Optional[List[str]]]:
  """(params, model_config, vocab) of a workdir: its params.safetensors, else its newest checkpoint.

  A training workdir's model shape comes from its config.json; its checkpoint is read
  without the trainer (the parameters only, onto this host's default device).
  """
  if has_params(workdir):
    return load_params(workdir)
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.exists(config_path):
    raise ConversionError(f'{workdir} has neither {PARAMS_FILE} nor a training config.json')
  run_config = _read_json(config_path)
  model = run_config.get('model', {})
  if model.get('family') not in LN_EPS:
    raise ConversionError(f'{config_path}: model.family is {model.get("family")!r}; only {", ".join(LN_EPS)} convert')
  if model.get('scan_layers'):
    raise ConversionError(f'{config_path}: the run scanned its layers (model.scan_layers); export reads '
                          'one block per layer: train with model.scan_layers=false to export')
  seq_len = run_config.get('data', {}).get('seq_len', 0)
  model_config = dict(family=model['family'], num_layers=model['num_layers'], num_heads=model['num_heads'],
                      d_model=model['d_model'], d_ff=model['d_ff'], vocab_size=model['vocab_size'],
                      max_len=model.get('max_len') or seq_len, activation=model['activation'],
                      ln_eps=LN_EPS[model['family']],
                      dropout=model.get('dropout', 0.0), bias=model.get('bias', True))
  from ssl_jax import transfer  # pylint: disable=import-outside-toplevel
  try:
    params = transfer.read_workdir_params(workdir)
  except CheckpointError as e:
    raise ConversionError(str(e)) from None
  vocab_path = os.path.join(workdir, VOCAB_FILE)
  return params, model_config, read_vocab(vocab_path) if os.path.exists(vocab_path) else None


def convert_command(from_hf: Optional[str], to_hf: Optional[str], workdir: str) -> dict:
  """`run.py convert`: exactly one of from_hf (HF dir -> workdir) and to_hf (workdir -> HF dir).

  The family comes from the files: config.json's model_type (bert, gpt2) on the way in, our
  model.json's (or the training config's) family (bert, gpt) on the way out."""
  from ssl_jax import convert_gpt2  # pylint: disable=import-outside-toplevel  (it imports this module)
  if bool(from_hf) == bool(to_hf):
    raise ConversionError('convert needs exactly one of --from_hf DIR and --to_hf DIR')
  if not workdir:
    raise ConversionError('convert needs --workdir')
  if from_hf:
    report = import_hf(from_hf, workdir)
  else:
    params, model_config, vocab = load_workdir_params(workdir)
    if model_config.get('family') == 'gpt':
      report = {'from': workdir, 'to': to_hf, 'files': convert_gpt2.save_hf_gpt2(params, model_config, to_hf),
                'note': 'weights only: our char or sentencepiece tokenizer is not GPT-2\'s byte-level BPE'}
    else:
      report = {'from': workdir, 'to': to_hf, 'files': save_hf_bert(params, model_config, to_hf, vocab)}
    if vocab is None and model_config.get('family') != 'gpt':
      report['note'] = f'no {VOCAB_FILE} in {workdir}: the run\'s tokenizer is not WordPiece, so none was written'
    tok = tokenizers.load(workdir)
    if tok is not None and tok.kind == 'huggingface':   # transformers reads it as it is
      _write_text(os.path.join(to_hf, 'tokenizer.json'), tok.json_text)
      report['files'].append('tokenizer.json')
      report.pop('note', None)
  print(json.dumps(report), flush=True)
  return report


def import_hf(from_hf: str, workdir: str) -> dict:
  """`convert --from_hf`: a Hugging Face BERT or GPT-2 directory into a workdir that every
  command takes (eval, generate, fewshot, summarize, and init_from of train and finetune):
  params.safetensors + model.json, the tokenizer (tokenizers.load: vocab.txt, tokenizer.json
  or vocab.json + merges.txt) and config.json, the run config those commands read.

  Everything is read and checked before anything is written; each file is written atomically."""
  if os.path.isdir(os.path.join(workdir, 'checkpoints')) and os.listdir(os.path.join(workdir, 'checkpoints')):
    raise ConversionError(f'{workdir} holds a training run\'s checkpoints: convert into a new --workdir')
  model_type = _read_json(os.path.join(from_hf, HF_CONFIG)).get('model_type')
  if model_type == 'gpt2':
    from ssl_jax import convert_gpt2  # pylint: disable=import-outside-toplevel  (it imports this module)
    params, model_config = convert_gpt2.load_hf_gpt2(from_hf)
    model_config['fresh_init'] = []
  elif model_type in ('bert', None):
    params, model_config, _ = load_hf_bert(from_hf)
  else:
    raise ConversionError(f'{os.path.join(from_hf, HF_CONFIG)}: model_type {model_type!r}; bert and gpt2 convert')
  try:
    tok = tokenizers.load(from_hf)
  except (DataError, OSError, ValueError) as e:
    raise ConversionError(f'{from_hf}: its tokenizer does not load ({e})') from None
  if tok is not None and tok.vocab_size > model_config['vocab_size']:
    raise ConversionError(f'{from_hf}: the tokenizer has {tok.vocab_size} tokens, the model\'s vocabulary '
                          f'{model_config["vocab_size"]}')
  config = run_config(model_config, tok, os.path.basename(os.path.normpath(from_hf)))
  save_params(params, model_config, workdir)
  files = [PARAMS_FILE, MODEL_FILE]
  if tok is not None:
    tokenizers.save(tok, workdir)
    files += [tokenizers.TOKENIZER_FILE, tok.state().get('file') or tok.state().get('vocab')]
  _write_json(os.path.join(workdir, 'config.json'), config)
  report = {'from': from_hf, 'to': workdir, 'files': files + ['config.json'],
            'tokenizer': tok.kind if tok is not None else None,
            'fresh_init': model_config['fresh_init'], 'unused_tensors': model_config['unused_tensors']}
  if tok is None:
    report['note'] = (f'no tokenizer in {from_hf} (tokenizer.json, vocab.txt, or vocab.json + merges.txt): '
                      'weights only; commands that read text need one')
  return report


def run_config(model_config: dict, tok, name: str) -> dict:
  """The run config (config.json) of an imported checkpoint: its family's objective, its shape,
  and `data.tokenizer` naming the kind of the tokenizer saved beside it."""
  from ssl_jax.config import base_config  # pylint: disable=import-outside-toplevel
  c = base_config()
  family = model_config['family']
  c.experiment = f'imported_{name}'
  c.task = 'clm' if family == 'gpt' else 'mlm_nsp'
  c.model.family = family
  for key in ('num_layers', 'num_heads', 'd_model', 'd_ff', 'vocab_size', 'max_len', 'activation', 'bias', 'dropout'):
    c.model[key] = type(c.model[key])(model_config[key])
  c.data.seq_len = model_config['max_len'] if family == 'gpt' else min(128, model_config['max_len'])
  c.data.tokenizer = tok.kind if tok is not None else 'char'
  return c.to_dict()


# Small helpers.

def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _flatten(tree, prefix=()) -> Dict[Tuple[str, ...], np.ndarray]:
  out = {}
  for k, v in tree.items():
    if hasattr(v, 'items'):   # dict or FrozenDict
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unflatten(flat: Dict[Tuple[str, ...], np.ndarray]) -> dict:
  tree = {}
  for path, v in sorted(flat.items()):
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def _atomic(path: str, write: Callable[[str], None]) -> None:
  """Writes through a temporary file and a rename, so a crash never leaves half a file."""
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    write(tmp)
    os.chmod(tmp, 0o644)  # safetensors creates its files readable by their owner only
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _write_json(path: str, obj: dict) -> None:
  def write(p):
    with open(p, 'w') as f:
      json.dump(obj, f, indent=2)
      f.write('\n')
  _atomic(path, write)


def _write_text(path: str, text: str) -> None:
  def write(p):
    with open(p, 'w', encoding='utf-8') as f:
      f.write(text)
  _atomic(path, write)


def _write_vocab(path: str, vocab: Sequence[str]) -> None:
  def write(p):
    with open(p, 'w', encoding='utf-8') as f:
      f.writelines(token + '\n' for token in vocab)
  _atomic(path, write)
