"""The llama family: named sizes' parameter counts, grouped-query attention on every CPU path
against repeated k/v, rotary positions, the KV cache (the smaller GQA one) against the plain
forward and greedy recompute, scan and remat against the unrolled model."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import generate
from ssl_jax.kernels.attention import attention
from ssl_jax.models import sizes
from ssl_jax.models.layers import TransformerConfig
from ssl_jax.models.llama import Llama, inverse_frequencies, rotate

CFG = TransformerConfig(num_layers=2, num_heads=4, num_kv_heads=2, d_model=32, d_ff=64, vocab_size=48, max_len=64,
                        bias=False, init_std=0.3, tie_embeddings=False)


def count(name):
  s = sizes.decode(name)
  cfg = TransformerConfig(num_layers=s['num_layers'], num_heads=s['num_heads'], num_kv_heads=s['num_kv_heads'],
                          d_model=s['d_model'], d_ff=s['d_ff'], vocab_size=s.get('vocab_size', 65), max_len=8,
                          bias=False, tie_embeddings=sizes.tied(name))
  shapes = jax.eval_shape(Llama(cfg).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nn.meta.unbox(shapes)))


@pytest.mark.parametrize('name, params', [
    ('smollm:135M', 134_515_008),      # HuggingFaceTB/SmolLM-135M
    ('llama3.2:1B', 1_235_814_400),    # meta-llama/Llama-3.2-1B
    ('llama3:8B', 8_030_261_248),      # meta-llama/Meta-Llama-3-8B
    ('llama3:70B', 70_553_706_496),    # meta-llama/Meta-Llama-3-70B
])
def test_named_sizes_have_the_released_models_parameter_counts(name, params):
  assert count(name) == params


def test_cpu_sizes_match_gpts_of_the_same_name_within_a_few_percent():
  # gpt:baby at the embedded corpus' character vocabulary (65) and 64 positions.
  gpt_baby = 4 * (4 * 128 * 128 + 2 * 128 * 512 + 4 * 128 + 512 + 2 * 2 * 128) + 65 * 128 + 64 * 128 + 2 * 128
  assert abs(count('llama:baby') / gpt_baby - 1) < 0.03


def repeated(q, k, v, causal, mask=None):
  """Plain attention with each kv head repeated for its query group: the reference."""
  group = q.shape[2] // k.shape[2]
  return attention(q, jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2), causal, mask, impl='xla')


@pytest.mark.parametrize('impl, length, padded, kv_heads', [('cpu', 128, False, 2), ('cpu', 24, True, 1),
                                                            ('xla', 24, False, 1), ('xla', 24, True, 2)])
def test_grouped_query_attention_equals_repeated_kv_values_and_gradients(impl, length, padded, kv_heads):
  # cpu at 128: the blocked causal einsums; cpu at 24: the einsums with a mask; xla: jax's own.
  keys = jax.random.split(jax.random.key(1), 3)
  q = jax.random.normal(keys[0], (2, length, 4, 8))
  k, v = (jax.random.normal(key, (2, length, kv_heads, 8)) for key in keys[1:])
  mask = (jnp.arange(length)[None] < jnp.array([[length], [length - 5]])) if padded else None
  loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))
  ours = jax.jit(jax.value_and_grad(loss(lambda q, k, v: attention(q, k, v, True, mask, impl=impl)), (0, 1, 2)))(
      q, k, v)
  reference = jax.jit(jax.value_and_grad(loss(lambda q, k, v: repeated(q, k, v, True, mask)), (0, 1, 2)))(q, k, v)
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(reference)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)


def test_rotary_scores_depend_only_on_the_distance():
  cfg = dataclasses.replace(CFG, rope_theta=500000.0, rope_scaling=32.0)
  q, k = jax.random.normal(jax.random.key(2), (2, 1, 1, 1, 8))
  score = lambda i, j: float(jnp.sum(rotate(q, jnp.array([i]), cfg) * rotate(k, jnp.array([j]), cfg)))
  assert score(7, 3) == pytest.approx(score(1007, 1003), abs=1e-4)
  assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-3)
  # Llama 3.1's scaling keeps the fast rates, divides the slow ones by the factor.
  plain, scaled = inverse_frequencies(128, 500000.0), inverse_frequencies(128, 500000.0, 32.0)
  assert scaled[0] == plain[0] and scaled[-1] == pytest.approx(plain[-1] / 32)


@pytest.fixture(scope='module')
def tiny():
  model = Llama(CFG)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))['params'])
  return model, params


def test_a_later_token_never_changes_an_earlier_logit_and_the_head_is_untied(tiny):
  model, params = tiny
  assert 'lm_head' in params and 'bias' not in str(jax.tree_util.tree_structure(params))
  tokens = jnp.arange(10)[None] % CFG.vocab_size
  changed = tokens.at[0, 6].set(1)
  apply = jax.jit(model.apply)
  a, b = apply({'params': params}, tokens), apply({'params': params}, changed)
  np.testing.assert_array_equal(a[:, :6], b[:, :6])
  assert not np.allclose(a[:, 6:], b[:, 6:])


def test_the_cache_holds_only_the_kv_heads_and_decoding_matches_the_plain_forward(tiny):
  model, params = tiny
  prompt = np.asarray([3, 1, 4, 1, 5])
  padded = np.concatenate([np.zeros(3, np.int32), prompt])[None]                      # (1, 8)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32), decode=True,
                                             positions=jnp.zeros((1, 8), jnp.int32)))['cache']
  assert shapes['layers']['h_0']['self_attn']['key'].shape == (1, 8, CFG.kv_heads, CFG.head_dim)
  cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  positions = np.maximum(np.arange(8) - 3, 0)[None]
  cached, _ = jax.jit(lambda p, c: model.apply({'params': p, 'cache': c}, padded, positions=positions,
                                               padding_mask=jnp.arange(8)[None] >= 3, decode=True,
                                               mutable=['cache']))(params, cache)
  plain = jax.jit(model.apply)({'params': params}, prompt[None])
  np.testing.assert_allclose(np.asarray(cached[:, 3:]), np.asarray(plain), atol=1e-5)


def test_cached_greedy_equals_recompute_token_for_token(tiny):
  model, params = tiny
  prompts = [[5], [1, 2, 3], list(range(7, 30))]
  new = generate.generate(model, params, prompts, 12, temperature=0.0)
  for prompt, ids in zip(prompts, new):
    np.testing.assert_array_equal(ids, generate.sample(model, params, prompt, 12, temperature=0.0)[len(prompt):])


@pytest.mark.parametrize('remat', ['none', 'full'])
def test_scanned_and_rematerialised_layers_give_the_unrolled_loss_and_gradients(tiny, remat):
  model, params = tiny
  tokens = jnp.arange(24).reshape(2, 12) % CFG.vocab_size
  loss = lambda m, p: jnp.mean(m.apply({'params': p}, tokens, targets=jnp.roll(tokens, -1, 1)))
  reference = jax.jit(jax.value_and_grad(lambda p: loss(model, p)))(params)
  scanned = Llama(dataclasses.replace(CFG, scan_layers=True, remat=remat))
  stacked = dict(params, layers={'h': {'block': jax.tree_util.tree_map(
      lambda *x: jnp.stack(x), params['layers']['h_0'], params['layers']['h_1'])}})
  value, grads = jax.jit(jax.value_and_grad(lambda p: loss(scanned, p)))(stacked)
  assert value == pytest.approx(float(reference[0]), rel=1e-6)
  np.testing.assert_allclose(grads['layers']['h']['block']['mlp']['gate_proj']['kernel'][1],
                             reference[1]['layers']['h_1']['mlp']['gate_proj']['kernel'], atol=1e-6)


@pytest.mark.parametrize('kv_heads, lengths', [(2, (100, 128)), (1, None)])
def test_splash_with_grouped_kv_heads_equals_plain_attention_in_values_and_gradients(kv_heads, lengths):
  # The Pallas kernel run by its interpreter: query groups read their kv head, never a copy;
  # padding (segment ids) and causality as in training.
  keys = jax.random.split(jax.random.key(3), 4)
  q, g = (jax.random.normal(key, (2, 128, 4, 16)) for key in keys[:2])
  k, v = (jax.random.normal(key, (2, 128, kv_heads, 16)) for key in keys[2:])
  mask = None if lengths is None else jnp.arange(128)[None] < jnp.array(lengths)[:, None]
  real = jnp.ones((2, 128), bool) if mask is None else mask
  loss = lambda fn: lambda q, k, v: jnp.sum(jnp.where(real[..., None, None], fn(q, k, v) * g, 0.0))
  splash = jax.jit(jax.value_and_grad(loss(lambda q, k, v: attention(q, k, v, True, mask, impl='splash_interpret')),
                                      (0, 1, 2)))(q, k, v)
  plain = jax.jit(jax.value_and_grad(loss(lambda q, k, v: repeated(q, k, v, True, mask)), (0, 1, 2)))(q, k, v)
  np.testing.assert_allclose(splash[0], plain[0], rtol=1e-5)
  for a, b in zip(splash[1], plain[1]):
    np.testing.assert_allclose(a, b, atol=3e-5)


def test_model_flops_count_the_grouped_kv_and_swiglu_matrices():
  import os  # pylint: disable=import-outside-toplevel
  from ssl_jax import config as config_lib, flops  # pylint: disable=import-outside-toplevel
  from conftest import ROOT  # pylint: disable=import-outside-toplevel
  config = config_lib.load(os.path.join(ROOT, 'experiments', 'llama.py:llama3:8B'))
  sizes.resolve(config)
  # Every parameter but the embedding table and the norms' scales is a matrix each token meets.
  assert flops.matmul_params(config) == count('llama3:8B') - 128256 * 4096 - (2 * 32 + 1) * 4096
