"""Every model family in one table: its module, its normalisation, the pretrained body a
fine-tuning family builds on and where that body sits in its parameter tree, and what text
(if any) it reads. Models, fine-tuning and both converters read this table; adding a family
is one row here (and its module)."""

import dataclasses
from typing import Callable, Optional

import jax.numpy as jnp

from ssl_jax.errors import ConfigError
from ssl_jax.models import bert, gpt, heads, llama, vit
from ssl_jax.models.layers import TransformerConfig


# How a family's module is made from a run's config and its TransformerConfig (`cfg`).

def plain(module):
  return lambda config, cfg: module(cfg)


def with_classes(module):
  """A text head over model.num_classes classes."""
  return lambda config, cfg: module(cfg, _num_classes(config))


def image(module):
  """A ViT-based module over data.image_size images in patches of model.patch."""
  return lambda config, cfg: module(cfg, config.model.patch, config.data.image_size)


def image_with_classes(module):
  """A ViT-based head over model.num_classes classes."""
  return lambda config, cfg: module(cfg, config.model.patch, config.data.image_size, _num_classes(config))


def _num_classes(config) -> int:
  if config.model.num_classes <= 0:
    raise ConfigError(f'model.num_classes={config.model.num_classes}: a classifier needs its number of classes')
  return config.model.num_classes


def _pool(config) -> str:
  pool = config.finetune.get('pool', 'cls')
  if pool not in ('cls', 'mean'):
    raise ConfigError(f"finetune.pool={pool!r}: expected 'cls' (the pooled [CLS] vector) or 'mean' (the tokens' mean)")
  if pool == 'mean' and config.data.get('pack', False):
    raise ConfigError("finetune.pool='mean' reads one example a row: with data.pack, pool [CLS] (finetune.pool=cls)")
  return pool


def _mae(config, cfg):
  m = config.model
  decoder = dataclasses.replace(cfg, num_layers=m.decoder_layers, num_heads=m.decoder_heads,
                                d_model=m.decoder_d_model, d_ff=4 * m.decoder_d_model, dropout=0.0)
  return vit.MAE(cfg, decoder, m.patch, config.data.image_size)


def _jigsaw(config, cfg):
  m, j, size = config.model, config.jigsaw, config.data.image_size
  vit.tile_geometry(size, j.tile_size)   # the tiles fit their cells
  if j.tile_size % m.patch:
    raise ConfigError(f'jigsaw.tile_size={j.tile_size} is not a multiple of model.patch={m.patch}')
  return vit.JigsawNet(cfg, m.patch, size, j.tile_size, j.num_permutations, j.hidden)


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  build: Callable           # (config, cfg) -> the flax module
  pre_norm: bool            # LayerNorm before each sub-layer (GPT-2, ViT) or after (BERT)
  ln_eps: float
  body: str                 # the pretrained family its parameters hold or build on: bert | gpt | llama | vit
  body_key: str             # where that body sits in this family's tree ('' = it is the whole tree)
  text: Optional[str]       # 'bert' (needs [CLS] [SEP] [MASK] ...), 'any' (any tokenizer), None (images)
  with_lengths: bool = False   # its input is tokens and each row's length (a decoder's classifier)


FAMILIES = {f.name: f for f in (
    Family('gpt', plain(gpt.GPT), True, 1e-5, 'gpt', '', 'any'),
    Family('llama', plain(llama.Llama), True, 1e-5, 'llama', '', 'any'),
    Family('bert', plain(bert.BERT), False, 1e-12, 'bert', '', 'bert'),
    Family('vit', image(vit.ViT), True, 1e-6, 'vit', '', None),
    Family('mae', _mae, True, 1e-6, 'vit', 'encoder', None),
    Family('jigsaw', _jigsaw, True, 1e-6, 'vit', 'encoder', None),
    Family('colorizer', image_with_classes(vit.ViTCellClassifier), True, 1e-6, 'vit', 'encoder', None),
    # Fine-tuning heads on the bodies above (ssl_jax/models/heads.py).
    Family('vit_classifier', image_with_classes(vit.ViTClassifier), True, 1e-6, 'vit', 'encoder', None),
    Family('bert_classifier', lambda config, cfg: heads.BertClassifier(cfg, _num_classes(config), pool=_pool(config)),
           False, 1e-12, 'bert', 'bert', 'bert'),
    Family('bert_tagger', with_classes(heads.BertTagger), False, 1e-12, 'bert', 'bert', 'bert'),
    Family('bert_qa', plain(heads.BertSpanQA), False, 1e-12, 'bert', 'bert', 'bert'),
    Family('gpt_classifier', with_classes(heads.GPTClassifier), True, 1e-5, 'gpt', 'gpt', 'any', with_lengths=True),
)}

# A body's own top-level parameter: present when a tree is the body itself (a pretraining
# run's), rather than a model holding the body under its body_key.
BODY_MARKER = {'bert': 'word_embeddings', 'gpt': 'wte', 'llama': 'embed_tokens', 'vit': 'patch_embed'}
# Where the families built on each body keep it (read off the table: they agree).
BODY_KEY = {f.body: f.body_key for f in FAMILIES.values() if f.body_key}


def get(name: str) -> Family:
  if name not in FAMILIES:
    raise ConfigError(f'unknown model.family {name!r}; known: {", ".join(FAMILIES)}')
  return FAMILIES[name]


def example_inputs(config) -> dict:
  """One example's model inputs, to build the parameters from (their shapes do not depend on
  it): a token, or an image of data.image_size."""
  family = get(config.model.family)
  if family.text is None:
    size = config.data.image_size
    return {'images': jnp.zeros((1, size, size, 3), jnp.float32)}
  tokens = {'tokens': jnp.zeros((1, 1), jnp.int32)}
  return {**tokens, 'lengths': jnp.ones((1,), jnp.int32)} if family.with_lengths else tokens


# The TransformerConfig fields a model shape (a converter's model_config, a run's model block) carries.
SHAPE_FIELDS = ('num_layers', 'num_heads', 'd_model', 'd_ff', 'vocab_size', 'max_len', 'activation', 'ln_eps',
                'dropout', 'bias', 'num_kv_heads', 'rope_theta', 'rope_scaling', 'tie_embeddings')


def transformer_config(family: str, **fields) -> TransformerConfig:
  """The TransformerConfig of `family` with these fields (an imported checkpoint's ln_eps
  overrides the family's); unknown fields are an error, missing ones take their defaults."""
  spec = get(family)
  return TransformerConfig(**{'pre_norm': spec.pre_norm, 'ln_eps': spec.ln_eps, **fields})


def shape_of(model_config: dict) -> dict:
  """The SHAPE_FIELDS a converter's model_config holds."""
  return {k: model_config[k] for k in SHAPE_FIELDS if k in model_config}
