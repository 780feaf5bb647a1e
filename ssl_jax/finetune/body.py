"""The pretrained body in a fine-tuning model: found in a source's tree, loaded into the fresh
model's (its head stays fresh), and the parts of it that stay frozen."""

import logging

import jax
import numpy as np

from ssl_jax.errors import ConfigError
from ssl_jax.models.families import BODY_KEY, BODY_MARKER, FAMILIES


def body_of(tree: dict, family: str) -> dict:
  if BODY_MARKER[family] in tree:
    return tree
  if BODY_KEY[family] in tree:
    return tree[BODY_KEY[family]]
  raise ConfigError(f'the pretrained parameters hold no {family} body (top-level keys: {sorted(tree)[:8]})')


def load_body(source, params, shardings, family: str):
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
  key = BODY_KEY[FAMILIES[family].body]
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
