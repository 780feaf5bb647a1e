"""Packed documents in the llama family: with segment ids, attention never crosses a document
and rotary positions restart at each, so a packed row's logits and loss are those of its
documents run one by one, on the CPU, XLA and splash (interpret) paths."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.kernels.attention import attention
from ssl_jax.models.layers import TransformerConfig
from ssl_jax.models.llama import Llama, segment_positions

CFG = TransformerConfig(num_layers=2, num_heads=4, num_kv_heads=2, d_model=32, d_ff=64, vocab_size=40, max_len=128,
                        bias=False, init_std=0.3)
LENGTHS = (12, 12, 8)      # three documents in a row of 32


def test_positions_restart_at_each_segment():
  ids = jnp.array([[0, 0, 0, 1, 1, 2], [5, 5, 5, 5, 5, 5]])
  np.testing.assert_array_equal(segment_positions(ids), [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])


def test_a_packed_rows_logits_and_loss_are_its_documents_run_one_by_one():
  # The CPU path (the XLA path's segment mask is the splash test's reference below).
  model = Llama(dataclasses.replace(CFG, attention='cpu', kernels='cpu'))
  docs = [np.random.RandomState(i).randint(1, 40, n) for i, n in enumerate(LENGTHS)]
  tokens = np.concatenate(docs)[None]                                            # (1, 32)
  segments = np.concatenate([np.full(n, i) for i, n in enumerate(LENGTHS)])[None]
  targets = np.concatenate([np.append(d[1:], 0) for d in docs])[None]           # each document's own next tokens
  params = nn.meta.unbox(model.init(jax.random.key(0), tokens[:, :4])['params'])
  apply = jax.jit(lambda p, t, **kw: model.apply({'params': p}, t, **kw))
  packed = apply(params, tokens, segment_ids=segments)
  alone = np.concatenate([apply(params, d[None]) for d in docs], axis=1)
  np.testing.assert_allclose(packed, alone, atol=2e-5)
  packed_loss = float(jnp.sum(apply(params, tokens, segment_ids=segments, targets=targets)))
  log_probs = jax.nn.log_softmax(alone[0], axis=-1)                              # (32, V)
  alone_loss = -float(jnp.sum(log_probs[jnp.arange(32), targets[0]]))
  assert packed_loss == pytest.approx(alone_loss, rel=1e-5)
  # ... and without the segment ids the later documents see the earlier ones.
  assert not np.allclose(apply(params, tokens)[:, LENGTHS[0]:], alone[:, LENGTHS[0]:], atol=1e-3)


def test_splash_with_segment_ids_and_grouped_kv_heads_equals_plain_masked_attention():
  keys = jax.random.split(jax.random.key(4), 4)
  q, g = (jax.random.normal(key, (2, 128, 4, 16)) for key in keys[:2])
  k, v = (jax.random.normal(key, (2, 128, 2, 16)) for key in keys[2:])
  segments = jnp.stack([jnp.repeat(jnp.arange(3), jnp.array([50, 40, 38]), total_repeat_length=128),
                        jnp.repeat(jnp.arange(2), jnp.array([100, 28]), total_repeat_length=128)])
  loss = lambda impl: lambda q, k, v: jnp.sum(attention(q, k, v, True, impl=impl, segment_ids=segments) * g)
  splash = jax.jit(jax.value_and_grad(loss('splash_interpret'), (0, 1, 2)))(q, k, v)
  plain = jax.jit(jax.value_and_grad(loss('xla'), (0, 1, 2)))(q, k, v)
  np.testing.assert_allclose(splash[0], plain[0], rtol=1e-5)
  for a, b in zip(splash[1], plain[1]):
    np.testing.assert_allclose(a, b, atol=3e-5)


SHARDED = """
import json
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ssl_jax import parallel
from ssl_jax.kernels.attention import attention

mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 1, 2), parallel.AXES)   # batch over data, heads over tensor
segments = jnp.repeat(jnp.array([[0, 1], [0, 0], [3, 4], [1, 2]]), 64, axis=1)   # (4, 128): packed rows
report = []
for kv_heads in (2, 1):          # 2 kv heads split with their query groups; 1 stays whole
  q, g = (jax.random.normal(key, (4, 128, 4, 16)) for key in jax.random.split(jax.random.key(kv_heads), 2))
  k, v = (jax.random.normal(key, (4, 128, kv_heads, 16)) for key in jax.random.split(jax.random.key(9), 2))
  loss = lambda impl: lambda q, k, v: jnp.sum(attention(q, k, v, True, impl=impl, segment_ids=segments) * g)
  plain = jax.jit(jax.value_and_grad(loss('xla'), (0, 1, 2)))(q, k, v)
  with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.LOGICAL_RULES):
    fn = jax.value_and_grad(loss('splash_interpret'), (0, 1, 2))
    program = str(jax.make_jaxpr(fn)(q, k, v))
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P(('data', 'fsdp'), None, 'tensor', None)))
    splash = jax.jit(fn)(put(q), put(k) if kv_heads == 2 else k, put(v) if kv_heads == 2 else v)
  report.append({'kv_heads': kv_heads, 'shard_map': 'shard_map' in program,
                 'value': float(abs(splash[0] - plain[0]) / abs(plain[0])),
                 'grads': max(float(jnp.abs(a - b).max()) for a, b in zip(splash[1], plain[1]))})
print(json.dumps(report))
"""


def test_splash_with_grouped_kv_heads_and_segments_under_shard_map_on_4_devices():
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from conftest import ROOT  # pylint: disable=import-outside-toplevel
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  proc = subprocess.run([sys.executable, '-c', SHARDED], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for r in json.loads(proc.stdout.strip().splitlines()[-1]):
    assert r['shard_map'] and r['value'] < 1e-5 and r['grads'] < 3e-5, r
