"""kernels.ops.tied_cross_entropy: the whole and the vocabulary-chunked loss against plain
autodiff of the logits, values and gradients, in one process and on a mesh of 4 CPU devices."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT
from ssl_jax.kernels import ops


def reference(h, table, targets):
  logits = jnp.einsum('btc,vc->btv', h, table).astype(jnp.float32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def problem(b=2, t=8, c=16, v=64, dtype=jnp.float32):
  k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
  h = jax.random.normal(k1, (b, t, c), dtype)
  table = (jax.random.normal(k2, (v, c)) * 0.5).astype(dtype)
  targets = jax.random.randint(k3, (b, t), 0, v)
  weights = jax.random.uniform(k4, (b, t))       # a weighted sum, so every token's gradient differs
  return h, table, targets, weights


def loss_and_grads(fn, h, table, targets, weights):
  return jax.jit(jax.value_and_grad(lambda h, table: (fn(h, table, targets) * weights).sum(), argnums=(0, 1)))(
      h, table)


@pytest.mark.parametrize('chunks', [1, 2, 8])
def test_chunked_loss_matches_plain_autodiff(chunks):
  h, table, targets, weights = problem()
  budget = 2 * 8 * 64 * 4 // chunks       # the float32 logits' bytes over the chunks wanted
  losses = jax.jit(lambda h, table: ops.tied_cross_entropy(h, table, targets, 'xla', max_chunk_bytes=budget))(
      h, table)
  np.testing.assert_allclose(losses, reference(h, table, targets), rtol=1e-6, atol=1e-6)
  got_value, got_grads = loss_and_grads(
      lambda h, table, targets: ops.tied_cross_entropy(h, table, targets, 'xla', max_chunk_bytes=budget),
      h, table, targets, weights)
  want_value, want_grads = loss_and_grads(reference, h, table, targets, weights)
  np.testing.assert_allclose(got_value, want_value, rtol=1e-6)
  for got, want in zip(got_grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  text = jax.jit(lambda h, table: ops.tied_cross_entropy(h, table, targets, 'xla', max_chunk_bytes=budget)
                 ).lower(h, table).as_text()
  assert ('while' in text) == (chunks > 1)      # the chunks are a loop, the whole loss none


def test_bfloat16_logits_keep_float32_statistics():
  h, table, targets, weights = problem(dtype=jnp.bfloat16)
  want = reference(h, table, targets)       # bf16 logits cast to float32, as before
  for budget in (1 << 30, 512):
    got = ops.tied_cross_entropy(h, table, targets, 'xla', max_chunk_bytes=budget)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)
  _, (d_h, d_table) = loss_and_grads(
      lambda h, table, targets: ops.tied_cross_entropy(h, table, targets, 'xla'), h, table, targets, weights)
  assert d_h.dtype == d_table.dtype == jnp.bfloat16


def test_cpu_path_is_the_whole_logits_as_before():
  h, table, targets, _ = problem()
  np.testing.assert_array_equal(ops.tied_cross_entropy(h, table, targets, 'cpu'),
                                optax.softmax_cross_entropy_with_integer_labels(
                                    ops.tied_logits(h, table, impl='cpu').astype(jnp.float32), targets))


SHARDED = textwrap.dedent('''
    import os
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
    import flax.linen as nn, jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from ssl_jax import parallel
    from ssl_jax.kernels import ops
    mesh = Mesh(np.array(jax.devices()).reshape(1, 2, 2), parallel.AXES)
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    h = jax.random.normal(k1, (4, 8, 16))
    table = jax.random.normal(k2, (64, 16)) * 0.5
    targets = jax.random.randint(k3, (4, 8), 0, 64)
    constrain = lambda x: nn.with_logical_constraint(x, ('batch', 'length', 'vocab'))
    rows = lambda x: nn.with_logical_constraint(x, ('vocab', None))
    def grads(budget):
      def loss(h, table):
        if budget is None:
          logits = constrain(jnp.einsum('btc,vc->btv', h, table))
          return optax.softmax_cross_entropy_with_integer_labels(logits, targets).sum()
        return ops.tied_cross_entropy(h, table, targets, 'xla', constrain, rows, max_chunk_bytes=budget).sum()
      with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.LOGICAL_RULES):
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)),
                       in_shardings=(NamedSharding(mesh, P(('data', 'fsdp'))), NamedSharding(mesh, P('tensor'))))(
                           h, table)
    used, chunked = [], ops._chunked_loss
    ops._chunked_loss = lambda constrain, chunks, *rest: used.append(chunks) or chunked(constrain, chunks, *rest)
    want = grads(None)
    # Per device the logits are (4 / 2) x 8 x (64 / 2) x 4 bytes = 2 KiB: a budget of 1 KiB makes
    # 2 chunks, 256 bytes 8; 1 MiB none.
    for budget in (1 << 20, 1024, 256):
      got = grads(budget)
      np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
      for a, b in zip(got[1], want[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert used == [2, 8], used
    print('ok')
''')


def test_chunks_on_a_mesh_follow_the_per_device_share():
  proc = subprocess.run([sys.executable, '-c', SHARDED], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip().endswith('ok'), proc.stderr[-3000:]

