"""ssl_jax/kernels: every backend-specific formulation against the plain one it replaces, in
values and gradients; the choice made from the platform; splash attention (interpret mode)."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssl_jax import kernels
from ssl_jax.config import ConfigError
from ssl_jax.kernels import attention as attn, ops
from ssl_jax.models import layers
from ssl_jax.models.layers import TransformerConfig


def model_config(**fields):
  return ml_collections.ConfigDict({'kernels': 'auto', 'attention': 'auto', 'dtype': 'auto', **fields})


@pytest.mark.parametrize('platform, want', [
    ('cpu', kernels.Choice('cpu', 'cpu', 'cpu', 'float32')),
    ('gpu', kernels.Choice('gpu', 'xla', 'cudnn', 'bfloat16')),
    ('tpu', kernels.Choice('tpu', 'xla', 'splash', 'bfloat16')),
])
def test_auto_chooses_from_the_platform(platform, want):
  assert kernels.choose(model_config(), platform) == want


def test_explicit_choices_and_their_errors():
  assert kernels.choose(model_config(kernels='xla'), 'cpu') == kernels.Choice('cpu', 'xla', 'xla', 'float32')
  assert kernels.choose(model_config(dtype='float32'), 'gpu').attention == 'xla'   # cuDNN's flash: bf16/fp16 only
  assert kernels.choose(model_config(attention='splash'), 'cpu').attention == 'splash_interpret'
  assert kernels.choose(model_config(dtype='bfloat16'), 'cpu').dtype == 'bfloat16'
  with pytest.raises(ConfigError, match='needs a GPU'):
    kernels.choose(model_config(attention='cudnn'), 'tpu')
  with pytest.raises(ConfigError, match="model.kernels='fast'"):
    kernels.choose(model_config(kernels='fast'), 'cpu')


class FakeDevice:
  def __init__(self, platform):
    self.platform = platform


def test_platform_of_devices():
  assert kernels.platform_of([FakeDevice('cuda')]) == 'gpu'
  assert kernels.platform_of([FakeDevice('tpu')]) == 'tpu'
  assert kernels.platform_of(jax.devices()) == 'cpu'


def qkv(shape, seed=0):
  return [jax.random.normal(key, shape) for key in jax.random.split(jax.random.key(seed), 4)]


def test_cpu_blocked_causal_attention_equals_the_full_matrix():
  q, k, v, g = qkv((2, 3 * attn.CAUSAL_BLOCK, 2, 8))
  causal = jnp.tril(jnp.ones((q.shape[1], q.shape[1]), bool))[None, None]
  full = lambda q, k, v: (attn.einsum_attention(q, k, v, causal) * g).sum()
  blocked = lambda q, k, v: (attn.causal_blocks(q, k, v) * g).sum()
  np.testing.assert_allclose(attn.attention(q, k, v, True, impl='cpu'), attn.einsum_attention(q, k, v, causal),
                             atol=1e-6)
  for a, b in zip(jax.grad(full, (0, 1, 2))(q, k, v), jax.grad(blocked, (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize('causal', [True, False])
def test_cpu_and_xla_attention_agree_with_padding_and_decoding(causal):
  q, k, v, _ = qkv((2, 16, 2, 8))
  padding = jnp.arange(16)[None, :] < jnp.array([[11], [16]])
  for args in ((None, None), (padding if not causal else None, None)):
    np.testing.assert_allclose(attn.attention(q, k, v, causal, *args, impl='cpu'),
                               attn.attention(q, k, v, causal, *args, impl='xla'), atol=1e-5)
  # Decoding: 3 queries at cache slots 5..7 over a 16-slot cache of which 8 hold tokens.
  cache_mask = jnp.arange(16)[None, :] < 8
  a = attn.attention(q[:, 5:8], k, v, True, jnp.broadcast_to(cache_mask, (2, 16)), 5, impl='cpu')
  b = attn.attention(q[:, 5:8], k, v, True, jnp.broadcast_to(cache_mask, (2, 16)), 5, impl='splash')
  np.testing.assert_allclose(a, b, atol=1e-5)   # decoding takes the portable path whatever is chosen
  np.testing.assert_allclose(a, attn.attention(q, k, v, True, impl='cpu')[:, 5:8], atol=1e-5)


def splash_loss(impl, q, k, v, g, causal, padding):
  out = attn.attention(q, k, v, causal, padding, impl=impl)
  real = jnp.ones(q.shape[:2], bool) if padding is None else padding
  return jnp.sum(jnp.where(real[..., None, None], out * g, 0.0))      # padded queries' outputs are unused


@pytest.mark.parametrize('causal, lengths, t', [(True, None, 256), (False, (100, 256), 256), (False, (130, 150), 150)])
def test_splash_attention_equals_the_plain_one_in_values_and_gradients(causal, lengths, t):
  q, k, v, g = qkv((2, t, 3, 16), seed=1)
  padding = None if lengths is None else jnp.arange(t)[None, :] < jnp.array(lengths)[:, None]
  plain = jax.value_and_grad(lambda *a: splash_loss('xla', *a, g, causal, padding), (0, 1, 2))(q, k, v)
  splash = jax.value_and_grad(lambda *a: splash_loss('splash_interpret', *a, g, causal, padding), (0, 1, 2))(q, k, v)
  np.testing.assert_allclose(splash[0], plain[0], rtol=1e-5)
  for a, b in zip(splash[1], plain[1]):
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_cpu_layer_norm_and_bias_match_flax_in_values_and_gradients():
  x = jax.random.normal(jax.random.key(0), (4, 8, 48)) * 3 + 1
  cfg = TransformerConfig(d_model=48, ln_eps=1e-12, kernels='cpu')
  ours, theirs = layers.LayerNorm(cfg), nn.LayerNorm(epsilon=1e-12)
  params = {'LayerNorm_0': {'scale': jax.random.normal(jax.random.key(1), (48,)),
                            'bias': jax.random.normal(jax.random.key(2), (48,))}}
  assert 'custom_vjp' in str(jax.make_jaxpr(lambda p, x: ours.apply({'params': p}, x))(params, x))   # the CPU one
  weights = jax.random.normal(jax.random.key(3), (4, 8, 48))
  loss = lambda apply, p, x: jnp.sum(jnp.sin(apply(p, x)) * weights)
  ours_apply = lambda p, x: ours.apply({'params': p}, x)
  theirs_apply = lambda p, x: theirs.apply({'params': p['LayerNorm_0']}, x)
  np.testing.assert_allclose(ours_apply(params, x), theirs_apply(params, x), atol=2e-6)
  ours_grads = jax.jit(jax.grad(lambda p, x: loss(ours_apply, p, x), (0, 1)))(params, x)
  theirs_grads = jax.grad(lambda p, x: loss(theirs_apply, p, x), (0, 1))(params, x)
  for a, b in zip(jax.tree_util.tree_leaves(ours_grads), jax.tree_util.tree_leaves(theirs_grads)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)
  bias, y = jax.random.normal(jax.random.key(4), (3, 4, 2)), jax.random.normal(jax.random.key(5), (5, 6, 3, 4, 2))
  plain = jax.grad(lambda y, b: jnp.sum(jnp.sin(y + b)), (0, 1))(y, bias)
  summed = jax.jit(jax.grad(lambda y, b: jnp.sum(jnp.sin(ops.add_bias(y, b, 'cpu'))), (0, 1)))(y, bias)
  for a, b in zip(plain, summed):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_tied_logits_match_einsum_in_values_and_gradients():
  h = jax.random.normal(jax.random.key(0), (2, 5, 8))
  table = jax.random.normal(jax.random.key(1), (11, 8))
  bias = jax.random.normal(jax.random.key(2), (11,))
  w = jax.random.normal(jax.random.key(3), (2, 5, 11))
  plain = lambda h, t, b: jnp.einsum('btc,vc->btv', h, t) + b
  cpu = lambda h, t, b=None: ops.tied_logits(h, t, b, 'cpu')
  np.testing.assert_allclose(cpu(h, table, bias), plain(h, table, bias), rtol=1e-6)
  np.testing.assert_allclose(cpu(h, table), plain(h, table, 0.0), rtol=1e-6)
  loss = lambda f: (lambda *a: jnp.sum(jnp.sin(f(*a)) * w))
  ours = jax.jit(jax.grad(loss(cpu), argnums=(0, 1, 2)))(h, table, bias)
  want = jax.grad(loss(plain), argnums=(0, 1, 2))(h, table, bias)
  ours += jax.jit(jax.grad(loss(cpu), argnums=(0, 1)))(h, table)          # no bias
  want += jax.grad(loss(lambda h, t: plain(h, t, 0.0)), argnums=(0, 1))(h, table)
  for a, b in zip(ours, want):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_split_qkv_matches_slicing_in_values_and_gradients():
  qkv_ = jax.random.normal(jax.random.key(0), (2, 5, 3, 4, 6))
  w = jax.random.normal(jax.random.key(1), (3, 2, 5, 4, 6))
  loss = lambda split, x: sum(jnp.sum(jnp.sin(part) * w[i]) for i, part in enumerate(split(x)))
  cpu = lambda x: ops.split_qkv(x, 'cpu')
  sliced = lambda x: ops.split_qkv(x, 'xla')
  for a, b in zip(cpu(qkv_), (qkv_[:, :, 0], qkv_[:, :, 1], qkv_[:, :, 2])):
    np.testing.assert_array_equal(a, b)
  ours = jax.jit(jax.grad(lambda x: loss(cpu, x)))(qkv_)
  np.testing.assert_allclose(ours, jax.grad(lambda x: loss(sliced, x))(qkv_), atol=1e-6)
  only_k = jax.grad(lambda x: jnp.sum(cpu(x)[1]))(qkv_)          # unused parts: zero gradients
  np.testing.assert_array_equal(only_k, jnp.zeros_like(qkv_).at[:, :, 1].set(1.0))


@pytest.mark.parametrize('in_axes, kernel_shape', [(1, (6, 3, 4, 5)), (2, (4, 5, 7))])
def test_cpu_contraction_equals_tensordot(in_axes, kernel_shape):
  x = jax.random.normal(jax.random.key(0), (2, 3) + kernel_shape[:in_axes])
  kernel = jax.random.normal(jax.random.key(1), kernel_shape)
  loss = lambda impl: (lambda x, w: jnp.sum(jnp.sin(ops.contract(x, w, in_axes, jnp.float32, impl))))
  np.testing.assert_allclose(ops.contract(x, kernel, in_axes, jnp.float32, 'cpu'),
                             ops.contract(x, kernel, in_axes, jnp.float32, 'xla'), rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.grad(loss('cpu'), (0, 1))(x, kernel), jax.grad(loss('xla'), (0, 1))(x, kernel)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('impl', ['cpu', 'xla'])
def test_apply_if_keeps_the_old_state_when_not_ok(impl):
  old = ({'w': jnp.ones(3)}, {'m': jnp.zeros(2)})
  update = lambda p, o: (jax.tree_util.tree_map(lambda x: x + 1, p), jax.tree_util.tree_map(lambda x: x - 1, o))
  kept = jax.jit(lambda ok: ops.apply_if(ok, update, *old, impl=impl))(False)
  moved = jax.jit(lambda ok: ops.apply_if(ok, update, *old, impl=impl))(True)
  np.testing.assert_array_equal(kept[0]['w'], 1.0)
  np.testing.assert_array_equal(kept[1]['m'], 0.0)
  np.testing.assert_array_equal(moved[0]['w'], 2.0)
  np.testing.assert_array_equal(moved[1]['m'], -1.0)


SHARDED_SPLASH = """
import json, sys
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ssl_jax import parallel
from ssl_jax.kernels import attention as attn

def loss(impl, q, k, v, g, causal, padding):
  out = attn.attention(q, k, v, causal, padding, impl=impl)
  real = jnp.ones(q.shape[:2], bool) if padding is None else padding
  return jnp.sum(jnp.where(real[..., None, None], out * g, 0.0))

report = []
# 4 and 8 devices: the batch over data (and fsdp), the heads over tensor; causal, then padded (segment ids).
for shape, causal, padding in [((2, 1, 2), True, None),
                               ((2, 2, 2), False, jnp.arange(128)[None, :] < jnp.array([[100], [128], [7], [64]]))]:
  mesh = Mesh(np.array(jax.devices()[:int(np.prod(shape))]).reshape(shape), parallel.AXES)
  q, k, v, g = (jax.random.normal(key, (4, 128, 2, 16)) for key in jax.random.split(jax.random.key(len(report)), 4))
  plain = jax.jit(jax.value_and_grad(lambda *a: loss('xla', *a, g, causal, padding), (0, 1, 2)))(q, k, v)
  spec = NamedSharding(mesh, P(('data', 'fsdp'), None, 'tensor', None))
  with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.LOGICAL_RULES):
    fn = jax.value_and_grad(lambda *a: loss('splash_interpret', *a, g, causal, padding), (0, 1, 2))
    program = str(jax.make_jaxpr(fn)(q, k, v))
    splash = jax.jit(fn)(*(jax.device_put(x, spec) for x in (q, k, v)))
  report.append({'devices': mesh.size, 'causal': causal, 'shard_map': 'shard_map' in program,
                 'value': float(abs(splash[0] - plain[0]) / abs(plain[0])),
                 'grads': max(float(jnp.abs(a - b).max()) for a, b in zip(splash[1], plain[1]))})
print(json.dumps(report))
"""


def test_splash_attention_under_shard_map_on_4_and_8_devices_equals_the_plain_one():
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from conftest import ROOT  # pylint: disable=import-outside-toplevel
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  proc = subprocess.run([sys.executable, '-c', SHARDED_SPLASH], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert [(r['devices'], r['causal']) for r in report] == [(4, True), (8, False)]
  for r in report:
    assert r['shard_map'] and r['value'] < 1e-5 and r['grads'] < 2e-5, r
