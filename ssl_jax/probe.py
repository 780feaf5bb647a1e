"""Linear probes: frozen features in, an L2-regularised logistic regression on them, accuracy out.

The regression is multinomial, fit to convergence by L-BFGS on standardised features, and
minimises mean cross-entropy + ||W||^2 / (2 C n) (the bias unpenalised): scikit-learn's
`LogisticRegression(C=C)` objective, scaled by 1/n. C, the inverse strength of the
regularisation, is chosen by a sweep: each C of `CS` is fit on the first 80% of the training
features (a seeded shuffle) and scored on the other 20%; the best is refit on all of them and
scored on the test features. A pretrained encoder and the same encoder at random
initialisation get the same sweep, so their probes are compared on equal terms.
"""

from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
HELD_OUT_FRACTION = 0.2
MAX_ITERATIONS = 1000
TOLERANCE = 1e-5


def features(encode, images: np.ndarray, batch: int = 250) -> np.ndarray:
  """encode: (B, H, W, 3) float in [0, 1] -> (B, D); applied in batches over uint8 images."""
  encode = jax.jit(encode)
  out = [np.asarray(encode(jnp.asarray(images[i:i + batch], jnp.float32) / 255.0))
         for i in range(0, len(images), batch)]
  return np.concatenate(out)


def standardise(train_x: np.ndarray, *others: np.ndarray):
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  return [(x - mean) / std for x in (train_x, *others)]


def fit(x: np.ndarray, y: np.ndarray, num_classes: int, c: float, max_iterations: int = MAX_ITERATIONS):
  """The weights {'w': (D, K), 'b': (K,)} of the regularised regression on (x, y) (x standardised)."""
  return _solve(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), jnp.float32(c), num_classes,
                max_iterations)


def _objective(params, x, y, c):
  logits = x @ params['w'] + params['b']   # (n, K)
  penalty = jnp.sum(params['w'] ** 2) / (2 * c * x.shape[0])
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + penalty


def _solve_impl(x, y, c, num_classes, max_iterations):
  params = {'w': jnp.zeros((x.shape[1], num_classes)), 'b': jnp.zeros((num_classes,))}
  objective = lambda p: _objective(p, x, y, c)
  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = solver.update(grad, state, p, value=value, grad=grad, value_fn=objective)
    return optax.apply_updates(p, updates), state

  def going(carry):
    _, state = carry
    count = otu.tree_get(state, 'count')
    grad = otu.tree_get(state, 'grad')
    return (count == 0) | ((count < max_iterations) & (otu.tree_norm(grad) >= TOLERANCE))

  params, _ = jax.lax.while_loop(going, step, (params, solver.init(params)))
  return params


_solve = jax.jit(_solve_impl, static_argnums=(3,))


def accuracy(params, x: np.ndarray, y: np.ndarray) -> float:
  predictions = np.asarray(jnp.asarray(x, jnp.float32) @ params['w'] + params['b']).argmax(-1)
  return float((predictions == np.asarray(y)).mean())


def split(count: int, seed: int = 0, fraction: float = HELD_OUT_FRACTION):
  """(fit, held-out) indices of the training features: a seeded shuffle, the last `fraction` held out."""
  order = np.random.default_rng(seed).permutation(count)
  cut = count - int(round(count * fraction))
  return order[:cut], order[cut:]


def linear_probe(train_x, train_y, test_x, test_y, num_classes: int, cs: Sequence[float] = CS,
                 seed: int = 0) -> Dict:
  """{'accuracy': test accuracy at the chosen C, 'C': it, 'sweep': {C: held-out accuracy}}."""
  train_x, test_x = standardise(np.asarray(train_x, np.float32), np.asarray(test_x, np.float32))
  fit_rows, held_rows = split(len(train_x), seed)
  fit_x, held_x = standardise(train_x[fit_rows], train_x[held_rows])
  sweep = {float(c): accuracy(fit(fit_x, train_y[fit_rows], num_classes, c), held_x, train_y[held_rows])
           for c in cs}
  best = max(sweep, key=lambda c: (sweep[c], -c))   # ties go to the stronger regularisation
  params = fit(train_x, train_y, num_classes, best)
  return {'accuracy': accuracy(params, test_x, test_y), 'C': best, 'sweep': sweep}
