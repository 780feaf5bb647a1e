"""Text classification by a decoder, GPT-1's recipe: it reads A, a newline and B, classifies
its last token, and adds `classify.lm_weight` x its language-modelling loss over each row's
real tokens. Metric: `accuracy` on the held-out split (every row of it, once)."""

import jax.numpy as jnp
import optax

from ssl_jax import flops
from ssl_jax.data import labelled
from ssl_jax.tasks import Data, Task, classification


def make_data(config, workdir: str) -> Data:
  train, held_out, tok, classes = classification.text_rows(config, workdir, (), labelled.encode_plain)
  return Data(train, held_out, tok, units_per_example=config.data.seq_len, classes=classes)


def model_inputs(batch) -> dict:
  return dict(tokens=batch['tokens'], lengths=batch['lengths'])


def lm_loss(lm_logits, batch):
  """Next-token cross-entropy over each row's real tokens (GPT-1's auxiliary objective)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(lm_logits[:, :-1], batch['tokens'][:, 1:])  # (B, T-1)
  mask = batch['padding'][:, 1:] * batch['weight'][:, None]
  return (ce * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def loss_fn(model, params, batch, rng, train: bool, lm_weight: float):
  out = model.apply({'params': params}, **model_inputs(batch), deterministic=not train, rngs={'dropout': rng})
  return classification.scored(out['logits'], batch, train, (lm_loss(out['lm_logits'], batch), 'lm_loss', lm_weight))


def flops_per_step(config):
  return flops.decoder_train_flops(config, config.train.batch_size, config.data.seq_len)


TASK = Task('classify_decoder', make_data, model_inputs, loss_fn, flops_per_step, summarize=classification.summarize,
            loss_arguments=lambda config, data: {'lm_weight': config.classify.lm_weight},
            heads={'gpt': 'gpt_classifier'}, best_metric='eval_accuracy')
