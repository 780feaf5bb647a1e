"""Linear probes: frozen features in, a logistic-regression head trained on them, accuracy out.

Every probe gets the same budget (full-batch AdamW for `steps` steps on standardised
features), so a pretrained encoder and the same encoder at random initialisation are
compared on equal terms.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def features(encode, images: np.ndarray, batch: int = 250) -> np.ndarray:
  """encode: (B, H, W, 3) float in [0, 1] -> (B, D); applied in batches over uint8 images."""
  encode = jax.jit(encode)
  out = [np.asarray(encode(jnp.asarray(images[i:i + batch], jnp.float32) / 255.0))
         for i in range(0, len(images), batch)]
  return np.concatenate(out)


def linear_probe(train_x, train_y, test_x, test_y, num_classes: int, steps: int = 1000, lr: float = 1e-2,
                 weight_decay: float = 1e-4) -> float:
  """Test accuracy of a softmax classifier fit on (train_x, train_y)."""
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
  params = {'w': jnp.zeros((train_x.shape[1], num_classes)), 'b': jnp.zeros((num_classes,))}
  tx = optax.adamw(lr, weight_decay=weight_decay)

  def loss(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(x @ p['w'] + p['b'], y).mean()

  @jax.jit
  def fit(params, x, y):
    def step(carry, _):
      p, opt = carry
      g = jax.grad(loss)(p, x, y)
      updates, opt = tx.update(g, opt, p)
      return (optax.apply_updates(p, updates), opt), None
    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params

  params = fit(params, jnp.asarray(train_x), jnp.asarray(train_y))
  predictions = np.asarray(jnp.asarray(test_x) @ params['w'] + params['b']).argmax(-1)
  return float((predictions == np.asarray(test_y)).mean())
