"""The optimizer: AdamW with decay on matrices only, warm-up then decay, global-norm clipping."""

import jax
import jax.numpy as jnp
import optax
from ssl_jax.errors import ConfigError
from ssl_jax.kernels import ops


def schedule(train) -> optax.Schedule:
  """Linear warm-up to train.lr, then cosine (or linear) to train.min_lr at train.decay_steps."""
  decay_steps = train.decay_steps or train.steps
  warmup = max(int(train.warmup_steps), 0)
  if train.schedule == 'constant':
    after = optax.constant_schedule(train.lr)
  elif train.schedule == 'cosine':
    after = optax.cosine_decay_schedule(train.lr, max(decay_steps - warmup, 1), alpha=train.min_lr / train.lr)
  elif train.schedule == 'linear':
    after = optax.linear_schedule(train.lr, train.min_lr, max(decay_steps - warmup, 1))
  else:
    raise ConfigError(f'train.schedule={train.schedule!r}: expected cosine, linear or constant')
  if not warmup:
    return after
  # nanoGPT's warm-up: lr * (step + 1) / warmup, so the first update is not wasted at lr 0.
  return optax.join_schedules([optax.linear_schedule(train.lr / warmup, train.lr, warmup - 1), after], [warmup])


def decay_mask(params):
  """Weight decay on matrices (kernels, embeddings), not on biases or LayerNorm scales."""
  return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def zero_where(tree, frozen):
  """`tree` with the leaves whose path `frozen(path)` names replaced by zeros (which do not
  depend on them, so XLA drops the work that only computed them)."""
  return jax.tree_util.tree_map_with_path(lambda path, x: jnp.zeros_like(x) if frozen(path) else x, tree)


def zero_frozen(frozen) -> optax.GradientTransformation:
  """Zeroes the updates of frozen parameters (their weight decay too); stateless."""
  return optax.GradientTransformation(lambda params: optax.EmptyState(),
                                      lambda updates, state, params=None: (zero_where(updates, frozen), state))


def clip_by_global_norm(max_norm: float, kernels: str = 'xla') -> optax.GradientTransformationExtraArgs:
  """`optax.clip_by_global_norm` (same empty state) that takes the norm already computed
  (`update(..., grad_norm=n)`; the train step has it for its metrics and its non-finite
  check), so the gradients are not read twice more, and scales by a multiplication that
  XLA fuses into the Adam moments instead of a division it writes out as another copy."""

  def update(updates, state, params=None, *, grad_norm=None, **extra_args):
    del params, extra_args
    norm = ops.global_norm(updates, kernels) if grad_norm is None else grad_norm
    scale = jnp.minimum(1.0, max_norm / norm)               # norm 0: max_norm / 0 = inf -> 1
    return jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), updates), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def make(train, frozen=None, kernels: str = 'xla') -> optax.GradientTransformation:
  """AdamW as `train` says; with `frozen` (a path predicate) those parameters never move
  (the train step zeroes their gradients; this zeroes their updates, weight decay included).
  `kernels` says which formulation of the gradient norm the clipping uses (ssl_jax/kernels).
  `update` takes an optional `grad_norm=` (the gradients' global norm) for the clipping."""
  parts = []
  if train.grad_clip > 0:
    parts.append(clip_by_global_norm(train.grad_clip, kernels))
  parts.append(optax.adamw(schedule(train), b1=train.b1, b2=train.b2, eps=train.eps,
                           weight_decay=train.weight_decay, mask=decay_mask))
  if frozen is not None:
    parts.append(zero_frozen(frozen))
  return optax.chain(*parts)
