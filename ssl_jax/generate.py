"""Sampling from a decoder: a KV-cache decoder in one compiled loop, and the slow reference.

  generate()  what commands use: a batch of prompts of any lengths, left-padded to one
              length (each row's positions count from its own first token; padded slots
              are masked out of attention), decoded inside one jitted function: a prefill
              of the prompts fills every layer's key/value cache, then a while_loop feeds
              one token at a time, writing its keys and values at the next cache slot
              (dynamic_update_slice in layers.Attention). Cost per new token: one token's
              forward pass, not the whole window's.
  sample()    the reference: one prompt; every new token recomputes the model's whole
              window (a sliding window of its context). The tests check generate()
              against it token for token.

Both choose tokens the same way (`choose`): greedy at temperature 0; otherwise logits
divided by the temperature, then top-k, then top-p (nucleus) filtering, then a draw.
Learned positions end at the model's context: a prompt keeps its rightmost tokens so that
prompt + new tokens fit; more new tokens than the context are made in chunks, each
re-reading the rightmost part of the text so far. Stop strings cut the decoded text
before the first one (`trim_at_stop`); a row whose new token's own text holds one is done,
and the loop ends once every row is.
"""

import functools
from typing import List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PAD_MULTIPLE = 32   # padded prompt lengths are rounded up to this, so few lengths compile


def filter_logits(logits, top_k: int = 0, top_p=1.0):
  """logits (..., V) with -inf outside the top_k largest, then outside the smallest set of
  likeliest tokens whose probability reaches top_p (the likeliest always stays).
  top_k 0 and top_p >= 1 filter nothing."""
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]                      # (..., 1)
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  ranked = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)                 # (..., V) descending
  probs = jax.nn.softmax(ranked, axis=-1)
  above = jnp.cumsum(probs, axis=-1) - probs                            # probability ranked above each
  threshold = jnp.min(jnp.where(above < top_p, ranked, jnp.inf), axis=-1, keepdims=True)
  return jnp.where((logits >= threshold) | (top_p >= 1.0), logits, -jnp.inf)


def choose(logits, rng, temperature, top_k: int, top_p):
  """logits (..., V) -> token ids (...): argmax at temperature 0, else a filtered draw."""
  greedy = jnp.argmax(logits, axis=-1)
  filtered = filter_logits(logits / jnp.maximum(temperature, 1e-6), top_k, top_p)
  sampled = jax.random.categorical(rng, filtered, axis=-1)
  return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


# The cached path.

@functools.partial(jax.jit, static_argnames=('model', 'max_new_tokens', 'top_k'))
def _decode(model, params, tokens, starts, stop_tokens, rng, temperature, top_p, *, max_new_tokens: int,
            top_k: int):
  """tokens (B, P) prompts left-padded (row b's begins at starts[b]) -> (B, N) new ids, and
  how many of the N were made (fewer once every row has emitted a stop token)."""
  b, p = tokens.shape
  slots = p + max_new_tokens                                            # S: the cache's length
  shapes = jax.eval_shape(functools.partial(model.init, decode=True), jax.random.key(0),
                          jnp.zeros((b, slots), jnp.int32), positions=jnp.zeros((b, slots), jnp.int32))
  cache = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['cache'])
  filled = jnp.arange(slots)[None, :] >= starts[:, None]                # (B, S) slots of real tokens

  def forward(cache, ids, positions):
    logits, variables = model.apply({'params': params, 'cache': cache}, ids, positions=positions,
                                    padding_mask=filled, decode=True, mutable=['cache'])
    return logits[:, -1], variables['cache']                            # (B, V)

  def pick(logits, i):
    token = choose(logits, jax.random.fold_in(rng, i), temperature, top_k, top_p)  # (B,)
    return token, jnp.isin(token, stop_tokens)

  prompt_positions = jnp.maximum(jnp.arange(p)[None, :] - starts[:, None], 0)   # (B, P)
  logits, cache = forward(cache, tokens, prompt_positions)
  token, done = pick(logits, 0)
  out = jnp.zeros((b, max_new_tokens), jnp.int32).at[:, 0].set(token)

  def unfinished(carry):
    i, _, _, done = carry
    return (i < max_new_tokens) & ~jnp.all(done)

  def step(carry):
    i, out, cache, done = carry
    previous = jax.lax.dynamic_slice_in_dim(out, i - 1, 1, axis=1)       # (B, 1)
    logits, cache = forward(cache, previous, (p + i - 1 - starts)[:, None])
    token, stopped = pick(logits, i)
    out = jax.lax.dynamic_update_slice(out, token[:, None], (0, i))
    return i + 1, out, cache, done | stopped

  made, out, _, _ = jax.lax.while_loop(unfinished, step, (jnp.int32(1), out, cache, done))
  return out, made


def stop_token_ids(tokenizer, stop: Sequence[str]) -> np.ndarray:
  """Ids whose own text holds a stop string: emitting one finishes a row."""
  stop = [s for s in stop if s]
  ids = [i for i in range(tokenizer.vocab_size) if any(s in tokenizer.decode([i]) for s in stop)] if stop else []
  return np.asarray(ids or [-1], np.int32)


def generate(model, params, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float = 0.8,
             top_k: int = 200, top_p: float = 1.0, seed: int = 0, stop_tokens=None) -> List[np.ndarray]:
  """For each prompt (a sequence of ids), its `max_new_tokens` new ids, fewer where every
  row emitted one of `stop_tokens` (ids, see stop_token_ids) before the end."""
  if not prompts:
    return []
  context = model.cfg.max_len
  top_k = min(top_k, model.cfg.vocab_size)
  stop_tokens = jnp.asarray(np.asarray([-1] if stop_tokens is None else stop_tokens, np.int32))
  texts = [list(np.asarray(p, np.int32).tolist()) or [0] for p in prompts]
  new = [[] for _ in texts]
  key = jax.random.key(seed)
  chunk = max_new_tokens if max_new_tokens <= context else context // 2
  done = 0
  while done < max_new_tokens:
    n = min(chunk, max_new_tokens - done)
    keep = context - n + 1                                              # prompt + n - 1 fed tokens fit
    rows = [t[-keep:] for t in texts]
    width = -(-max(map(len, rows)) // PAD_MULTIPLE) * PAD_MULTIPLE
    tokens = np.zeros((len(rows), width), np.int32)
    for r, row in enumerate(rows):
      tokens[r, width - len(row):] = row
    starts = np.asarray([width - len(row) for row in rows], np.int32)
    out, made = _decode(model, params, jnp.asarray(tokens), jnp.asarray(starts), stop_tokens,
                        jax.random.fold_in(key, done), temperature, top_p, max_new_tokens=n, top_k=top_k)
    out, made = np.asarray(out)[:, :int(made)], int(made)
    for r in range(len(texts)):
      texts[r] += out[r].tolist()
      new[r] += out[r].tolist()
    done += n
    if made < n:   # every row stopped
      break
  return [np.asarray(ids, np.int32) for ids in new]


def trim_at_stop(text: str, stop: Sequence[str]) -> str:
  """`text` up to (not including) the first occurrence of any stop string."""
  cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
  return text[:cut]


def complete(model, params, tokenizer, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = (),
             **sampling) -> List[str]:
  """The text each prompt continues with (cut at the first stop string); `sampling` as generate()'s."""
  stop = [s for s in stop if s]
  prompt_ids = [tokenizer.encode(p) for p in prompts]
  ids = generate(model, params, prompt_ids, max_new_tokens, stop_tokens=stop_token_ids(tokenizer, stop), **sampling)
  return [trim_at_stop(continuation_text(tokenizer, p, new), stop) for p, new in zip(prompt_ids, ids)]


def continuation_text(tokenizer, prompt_ids, new_ids) -> str:
  """The text of new_ids as it reads after the prompt: sentencepiece drops a word-initial
  space from text decoded on its own, so the whole is decoded and the prompt's part cut."""
  whole, head = tokenizer.decode(np.concatenate([prompt_ids, new_ids])), tokenizer.decode(prompt_ids)
  return whole[len(head):] if whole.startswith(head) else tokenizer.decode(new_ids)


# The reference path.

@functools.partial(jax.jit, static_argnames=('model', 'top_k'))
def _next_token(model, params, window, position, rng, temperature, top_p, top_k: int):
  logits = model.apply({'params': params}, window)                     # (1, L, V)
  logits = jax.lax.dynamic_index_in_dim(logits[0], position, keepdims=False)  # (V,)
  return choose(logits, rng, temperature, top_k, top_p)


def sample(model, params, prompt_ids, max_new_tokens: int, temperature: float = 0.8,
           top_k: int = 200, seed: int = 0, top_p: float = 1.0) -> np.ndarray:
  """Prompt ids + `max_new_tokens` sampled ids (greedy when temperature is 0), recomputing
  the window of the last max_len tokens for every new one."""
  context = model.cfg.max_len
  top_k = min(top_k, model.cfg.vocab_size)
  tokens = list(np.asarray(prompt_ids, dtype=np.int32).tolist()) or [0]
  key = jax.random.key(seed)
  for i in range(max_new_tokens):
    window = tokens[-context:]
    padded = np.zeros((1, context), np.int32)
    padded[0, :len(window)] = window
    token = _next_token(model, params, jnp.asarray(padded), len(window) - 1,
                        jax.random.fold_in(key, i), temperature, top_p, top_k)
    tokens.append(int(token))
  return np.asarray(tokens, dtype=np.int32)
