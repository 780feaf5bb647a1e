"""Sampling from a decoder: temperature and top-k over a sliding window of the model's context.

Each new token recomputes the window (one compiled function, fixed shapes); a KV-cache
decoder is the generation issue's work.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=('model', 'top_k'))
def _next_token(model, params, window, position, rng, temperature, top_k: int):
  logits = model.apply({'params': params}, window)                     # (1, L, V)
  logits = jax.lax.dynamic_index_in_dim(logits[0], position, keepdims=False)  # (V,)
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][-1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  greedy = jnp.argmax(logits)
  sampled = jax.random.categorical(rng, logits / jnp.maximum(temperature, 1e-6))
  return jnp.where(temperature > 0, sampled, greedy)


def sample(model, params, prompt_ids, max_new_tokens: int, temperature: float = 0.8,
           top_k: int = 200, seed: int = 0) -> np.ndarray:
  """Prompt ids + `max_new_tokens` sampled ids (greedy when temperature is 0)."""
  context = model.cfg.max_len
  top_k = min(top_k, model.cfg.vocab_size)
  tokens = list(np.asarray(prompt_ids, dtype=np.int32).tolist()) or [0]
  key = jax.random.key(seed)
  for i in range(max_new_tokens):
    window = tokens[-context:]
    padded = np.zeros((1, context), np.int32)
    padded[0, :len(window)] = window
    token = _next_token(model, params, jnp.asarray(padded), len(window) - 1,
                        jax.random.fold_in(key, i), temperature, top_k)
    tokens.append(int(token))
  return np.asarray(tokens, dtype=np.int32)
