"""The linear probe against scikit-learn's LogisticRegression, C chosen the same way, on the same features."""

import os

import numpy as np
import pytest

from ssl_jax import probe

from conftest import SHARED_DATA

CIFAR = os.path.join(SHARED_DATA, 'cifar10')


def random_relu_features(images, dims=256, seed=0):
  """A fixed random projection of the pixels through a ReLU: (B, H, W, 3) uint8 -> (B, dims)."""
  flat = images.reshape(len(images), -1).astype(np.float32) / 255.0 - 0.5
  projection = np.random.default_rng(seed).normal(size=(flat.shape[1], dims)).astype(np.float32)
  return np.maximum(flat @ projection / np.sqrt(flat.shape[1]), 0)


def sklearn_probe(train_x, train_y, test_x, test_y):
  """scikit-learn's LogisticRegression with C chosen as probe.linear_probe chooses it: the same
  standardisation, the same 80/20 split of the training features, the same grid and tie rule."""
  linear_model = pytest.importorskip('sklearn.linear_model', reason='scikit-learn is in tests/requirements.txt')
  train_x, test_x = probe.standardise(train_x, test_x)
  fit_rows, held_rows = probe.split(len(train_x))
  fit_x, held_x = probe.standardise(train_x[fit_rows], train_x[held_rows])
  # Warm starts from the next stronger C: the same optimum (the problem is convex), sooner.
  model = linear_model.LogisticRegression(max_iter=2000, warm_start=True)
  sweep = {}
  for c in sorted(probe.CS):
    sweep[c] = model.set_params(C=c).fit(fit_x, train_y[fit_rows]).score(held_x, train_y[held_rows])
  best = max(sweep, key=lambda c: (sweep[c], -c))
  final = linear_model.LogisticRegression(C=best, max_iter=2000).fit(train_x, train_y)
  return {'accuracy': final.score(test_x, test_y), 'C': best, 'sweep': sweep}


@pytest.mark.skipif(not os.path.isdir(CIFAR), reason=f'{CIFAR} is absent (the shared data sets)')
def test_probe_matches_scikit_learn_on_cifar():
  from ssl_jax.data import images as images_lib
  train_images, train_y, _ = images_lib.load(os.path.join(CIFAR, 'train'), 32)
  test_images, test_y, _ = images_lib.load(os.path.join(CIFAR, 'test'), 32)
  train_x, test_x = random_relu_features(train_images), random_relu_features(test_images)
  theirs = sklearn_probe(train_x, train_y, test_x, test_y)
  ours = probe.linear_probe(train_x, train_y, test_x, test_y, 10)
  print('ours', ours, 'scikit-learn', theirs)
  # Both ways, within what the README states: 0.5 point on the test images, 0.3 point at each C
  # of the sweep (measured: equal, and at most 0.2 point: two of the 1,000 held-out images).
  assert abs(ours['accuracy'] - theirs['accuracy']) <= 0.005 + 1e-9, (ours, theirs)
  assert ours['C'] == theirs['C']
  for c in probe.CS:   # each fit of the sweep, not only the chosen one
    assert abs(ours['sweep'][c] - theirs['sweep'][c]) <= 0.003 + 1e-9, (c, ours['sweep'], theirs['sweep'])
  # The choice is doing work here: the weakest regularisation tried is well below the chosen.
  assert ours['sweep'][ours['C']] > ours['sweep'][max(probe.CS)] + 0.01


def test_fit_reaches_the_regularised_optimum():
  """At the solution the gradient of the objective vanishes: mean (softmax - onehot) x + W / (C n) = 0."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(300, 5)).astype(np.float32)
  y = rng.integers(0, 3, 300)
  c = 0.05
  params = probe.fit(x, y, 3, c)
  logits = x @ np.asarray(params['w']) + np.asarray(params['b'])
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  residual = p - np.eye(3)[y]
  grad_w = x.T @ residual / len(x) + np.asarray(params['w']) / (c * len(x))
  grad_b = residual.mean(0)
  assert np.abs(grad_w).max() < 1e-4 and np.abs(grad_b).max() < 1e-4
