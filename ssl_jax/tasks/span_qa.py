"""Extractive question answering fine-tuning (SQuAD v1.1 / v2.0 JSON).

Loss: (CE over start positions + CE over end positions) / 2. Held-out evaluation decodes
the best valid span of every question over all its windows, maps it back to characters
of the context and scores `exact_match` and `f1` (SQuAD's official normalisation); a
v2.0 file (any unanswerable question) lets the model answer '' when [CLS] scores best.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax import flops, parallel
from ssl_jax.errors import ConfigError
from ssl_jax.data import labelled, squad
from ssl_jax.data.bert_examples import SPECIALS
from ssl_jax.data.corpus import run_tokenizer
from ssl_jax.tasks import Data, Task


def make_data(config, workdir: str) -> Data:
  d, f = config.data, config.span_qa
  if not d.path:
    raise ConfigError('span_qa needs data.path: a SQuAD-style JSON file')
  examples, held_out = labelled.split(config, squad.read_squad)
  tok = run_tokenizer(config, workdir, lambda: [e.question + '\n' + e.context for e in examples + held_out],
                      SPECIALS)
  train_features = squad.make_features(examples, tok, d.seq_len, f.doc_stride, f.max_query_len)
  eval_features = squad.make_features(held_out, tok, d.seq_len, f.doc_stride, f.max_query_len)
  make = lambda feats, name: labelled.LabelledBatches(feats.arrays, config.train.batch_size, config.seed, name)
  data = Data(make(train_features, 'training windows'), make(eval_features, 'held-out windows'), tok,
              units_per_example=d.seq_len)
  data.eval.examples, data.eval.features = held_out, eval_features   # for decoding
  return data


def model_inputs(batch) -> dict:
  return dict(tokens=batch['tokens'], segment_ids=batch['segments'], padding_mask=batch['padding'])


def loss_fn(model, params, batch, rng, train: bool):
  out = model.apply({'params': params}, **model_inputs(batch), deterministic=not train, rngs={'dropout': rng})
  weight = batch['weight']
  count = jnp.maximum(weight.sum(), 1.0)
  start = optax.softmax_cross_entropy_with_integer_labels(out['start_logits'], batch['start_positions'])
  end = optax.softmax_cross_entropy_with_integer_labels(out['end_logits'], batch['end_positions'])
  loss = (((start + end) / 2) * weight).sum() / count
  return loss, {'loss': loss}


def evaluate(run, params) -> dict:
  """Held-out loss, exact_match and f1 over every held-out question."""
  held_out = run.data.eval
  starts, ends = [], []
  for i in range(held_out.num_batches):
    out = _forward(run.model, params, run.global_batch(held_out.eval_batch(i)))
    out = parallel.all_rows(out)
    starts.append(np.asarray(out['start_logits']))
    ends.append(np.asarray(out['end_logits']))
  n = held_out.size
  start_logits, end_logits = np.concatenate(starts)[:n], np.concatenate(ends)[:n]
  a = held_out.features.arrays
  rows = np.arange(n)
  loss = float(np.mean((_ce(start_logits, a['start_positions'], rows) + _ce(end_logits, a['end_positions'], rows)) / 2))
  predictions = squad.decode(held_out.examples, held_out.features, start_logits, end_logits,
                             run.config.span_qa.max_answer_len, squad.version_2(held_out.examples))
  return {'eval_loss': loss, **squad.score(held_out.examples, predictions), 'eval_examples': len(predictions)}


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, batch):
  return model.apply({'params': params}, **model_inputs(batch))


def _ce(logits, positions, rows):
  shifted = logits - logits.max(-1, keepdims=True)
  return np.log(np.exp(shifted).sum(-1)) - shifted[rows, positions]


def flops_per_step(config):
  return flops.encoder_finetune_flops(config, config.train.batch_size, config.data.seq_len, 2, per_token=True)


SETTINGS = {
    'doc_stride': (128, 'tokens between the starts of a long context\'s windows'),
    'max_query_len': (64, 'question tokens kept'),
    'max_answer_len': (30, 'longest answer decoded, in tokens'),
}
TASK = Task('span_qa', make_data, model_inputs, loss_fn, flops_per_step, group='span_qa', settings=SETTINGS,
            evaluate=evaluate, heads={'bert': 'bert_qa'}, best_metric='eval_f1')
