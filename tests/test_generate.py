"""KV-cache decoding against the recompute-the-window reference; top-k/top-p filtering; stop strings."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import generate
from ssl_jax.data.tokenizer import CharTokenizer
from ssl_jax.models.gpt import GPT
from ssl_jax.models.layers import TransformerConfig

# Mixed lengths: one token, a few, and one past PAD_MULTIPLE's first step (so rows are padded apart).
PROMPTS = [[5], [1, 2, 3], list(range(7, 47))]


@pytest.fixture(scope='module')
def tiny():
  # A larger init scale than training's spreads the logits, so greedy choices are far from ties.
  cfg = TransformerConfig(num_layers=2, num_heads=2, d_model=32, d_ff=64, vocab_size=48, max_len=64, init_std=0.3)
  model = GPT(cfg)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))['params'])
  return model, params


def test_cached_greedy_equals_recompute_token_for_token(tiny):
  model, params = tiny
  new = generate.generate(model, params, PROMPTS, 20, temperature=0.0)
  for prompt, ids in zip(PROMPTS, new):
    reference = generate.sample(model, params, prompt, 20, temperature=0.0)[len(prompt):]
    np.testing.assert_array_equal(ids, reference)


def test_cache_path_logits_match_the_plain_forward(tiny):
  # The prefill of a left-padded row gives the logits the training path gives the bare row.
  model, params = tiny
  prompt = np.asarray(PROMPTS[1])
  padded = np.concatenate([np.zeros(5, np.int32), prompt])[None]                      # (1, 8)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32), decode=True,
                                             positions=jnp.zeros((1, 8), jnp.int32)))['cache']
  cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  positions = np.maximum(np.arange(8) - 5, 0)[None]
  cached, _ = jax.jit(lambda p, c: model.apply({'params': p, 'cache': c}, padded, positions=positions,
                                               padding_mask=jnp.arange(8)[None] >= 5, decode=True,
                                               mutable=['cache']))(params, cache)
  plain = jax.jit(model.apply)({'params': params}, prompt[None])
  np.testing.assert_allclose(np.asarray(cached[:, 5:]), np.asarray(plain), atol=1e-5)


def test_more_tokens_than_the_context_come_in_chunks(tiny):
  model, params = tiny
  new = generate.generate(model, params, PROMPTS, 70, temperature=0.0)
  assert [len(ids) for ids in new] == [70, 70, 70]
  # Until the context is full the chunked result is the reference's, token for token.
  reference = generate.sample(model, params, PROMPTS[0], 32, temperature=0.0)[1:]
  np.testing.assert_array_equal(new[0][:32], reference)


def test_top_k_and_top_p_keep_the_expected_tokens():
  logits = jnp.log(jnp.asarray([0.05, 0.5, 0.15, 0.3]))
  kept = lambda **kw: np.isfinite(np.asarray(generate.filter_logits(logits, **kw))).nonzero()[0].tolist()
  assert kept() == [0, 1, 2, 3]
  assert kept(top_k=2) == [1, 3]
  assert kept(top_p=0.7) == [1, 3]          # 0.5 ranked first; 0.5 < 0.7 so 0.3 joins; 0.8 >= 0.7 stops
  assert kept(top_p=0.5) == [1]             # the likeliest alone already holds 0.5
  assert kept(top_p=0.9) == [1, 2, 3]
  assert kept(top_p=0.01) == [1]            # the likeliest always stays
  assert kept(top_k=3, top_p=0.99) == [1, 2, 3]


def test_sampling_draws_only_kept_tokens_and_greedy_is_argmax():
  logits = jnp.log(jnp.asarray([[0.05, 0.5, 0.15, 0.3]] * 512))              # (512, 4)
  drawn = np.asarray(generate.choose(logits, jax.random.key(0), 1.0, 0, 0.7))
  assert set(drawn.tolist()) == {1, 3}
  assert 0.55 < (drawn == 1).mean() < 0.75                                   # 0.5 / 0.8 renormalised
  assert set(np.asarray(generate.choose(logits, jax.random.key(1), 0.0, 0, 0.7)).tolist()) == {1}
  assert set(np.asarray(generate.choose(logits, jax.random.key(2), 1.0, 1, 1.0)).tolist()) == {1}


def test_stop_strings_cut_the_text_and_end_the_loop(tiny):
  model, params = tiny
  tok = CharTokenizer([chr(ord('a') + i) for i in range(24)] + [chr(ord('A') + i) for i in range(24)])
  assert generate.trim_at_stop('abcXdefYg', ['Y', 'X']) == 'abc'
  assert generate.trim_at_stop('abc', ['Z', '']) == 'abc'
  full = tok.decode(generate.generate(model, params, [tok.encode('abc')], 30, temperature=0.0)[0])
  stop = full[7]                                        # a character that greedy decoding produces
  text = generate.complete(model, params, tok, ['abc'], 30, stop=[stop], temperature=0.0)[0]
  assert text == full[:full.index(stop)] and stop not in text
  stopped = generate.generate(model, params, [tok.encode('abc')], 30, temperature=0.0,
                              stop_tokens=generate.stop_token_ids(tok, [stop]))[0]
  assert len(stopped) == full.index(stop) + 1            # the loop ended at the stop token


class Pieces:
  """Decodes like sentencepiece: '▁' is a space, and a text's leading space is dropped."""
  pieces = ['▁the', '▁cat', 's']

  def decode(self, ids):
    return ''.join(self.pieces[i] for i in ids).replace('▁', ' ').lstrip(' ')


def test_continuation_text_keeps_the_space_before_a_new_word():
  tok = Pieces()
  assert tok.decode([1, 2]) == 'cats'                                  # decoded alone, the space is gone
  assert generate.continuation_text(tok, np.asarray([0]), np.asarray([1, 2])) == ' cats'
