"""Causal language modelling: predict every next token (GPT, Llama).

With data.pack, each row's documents are kept apart (segment ids: attention and positions
restart at each document) and the target of a document's last token, the next document's
first, carries no loss: the loss is the mean over the other targets."""

import jax
import jax.numpy as jnp

from ssl_jax import flops, generate
from ssl_jax.data.corpus import TextCorpus
from ssl_jax.data.text import LMBatches
from ssl_jax.tasks import Data, Task


def make_data(config, workdir: str) -> Data:
  corpus = TextCorpus(config, workdir)
  seq_len, batch, seed = config.data.seq_len, config.train.batch_size, config.seed
  pack = config.data.pack
  train = LMBatches(corpus.train_tokens, seq_len, batch, seed, name='training split', pack=pack)
  held_out = LMBatches(corpus.eval_tokens, seq_len, batch, seed, name='held-out split', pack=pack)
  return Data(train, held_out, corpus.tokenizer, units_per_example=seq_len, fingerprint=corpus.fingerprint)


def model_inputs(batch) -> dict:
  if 'segment_ids' in batch:      # packed (data.pack)
    return dict(tokens=batch['inputs'], segment_ids=batch['segment_ids'])
  return dict(tokens=batch['inputs'])


def loss_fn(model, params, batch, rng, train: bool):
  per_token = model.apply({'params': params}, **model_inputs(batch), targets=batch['targets'],
                          deterministic=not train, rngs={'dropout': rng})     # (B, T)
  if 'target_mask' in batch:      # packed: no target across a document boundary
    mask = batch['target_mask']
    loss = (per_token * mask).sum() / jnp.maximum(mask.sum(), 1.0)
  else:
    loss = per_token.mean()
  return loss, {'loss': loss}


def flops_per_step(config):
  return flops.decoder_train_flops(config, config.train.batch_size, config.data.seq_len)


def report(setup, params) -> str:
  """A short sample from the trained decoder, printed at the end of a run: at most
  `train.sample_tokens`, and no more than the model's context holds after the prompt (past
  it, decoding would slide the window and recompute the cache, which a sample is not worth)."""
  tok = setup.data.tokenizer
  prompt = setup.config.train.sample_prompt or '\n'
  n = min(setup.config.train.sample_tokens, setup.model_cfg.max_len - len(tok.encode(prompt)))
  if n <= 0:
    return ''
  [text] = generate.complete(setup.model, jax.device_get(params), tok, [prompt], n, temperature=0.8, top_k=200,
                             seed=setup.config.seed)
  return f'--- sample ({n} tokens after {prompt!r}) ---\n{prompt}{text}\n---'


TASK = Task('clm', make_data, model_inputs, loss_fn, flops_per_step, report=report, packs=True)
