"""Token tagging fine-tuning (e.g. universal part of speech) on CoNLL-U sentences.

Each word's tag sits on its first sub-word; the other pieces, [CLS], [SEP] and padding
carry no loss. Held-out metrics come from a confusion matrix summed over every sentence:
`token_accuracy` (over words) and `f1` (macro-averaged over the tags that occur).
"""

import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax import flops, parallel
from ssl_jax.errors import ConfigError
from ssl_jax.data import labelled
from ssl_jax.data.bert_examples import SPECIALS
from ssl_jax.data.corpus import run_tokenizer
from ssl_jax.tasks import Data, Task


def make_data(config, workdir: str) -> Data:
  d = config.data
  if not d.path:
    raise ConfigError('tagging needs data.path: a CoNLL-U file (FORM and UPOS columns)')
  sentences, held_out = labelled.split(config, labelled.read_conllu_tags)
  tok = run_tokenizer(config, workdir, lambda: [' '.join(words) for words, _ in sentences + held_out], SPECIALS)
  # The tag set is read from both splits: a rare tag missing from a small training part is
  # still a class the held-out words are scored against.
  _, classes = labelled.label_ids([t for _, ts in sentences + held_out for t in ts])
  tags, _ = labelled.label_ids([t for _, ts in sentences for t in ts], classes)
  held_out_tags, _ = labelled.label_ids([t for _, ts in held_out for t in ts], classes)

  def make(rows, tag_ids, name):
    arrays = labelled.encode_tags(tok, rows, d.seq_len, tag_ids)
    cut = len(tag_ids) - arrays.pop('words_kept')
    if cut and parallel.is_first_host():
      print(f'{name}: {cut} of {len(tag_ids)} words fall past data.seq_len={d.seq_len} and are not scored')
    return labelled.LabelledBatches(arrays, config.train.batch_size, config.seed, name)

  return Data(make(sentences, tags, 'training sentences'), make(held_out, held_out_tags, 'held-out sentences'),
              tok, units_per_example=d.seq_len, classes=classes)


def model_inputs(batch) -> dict:
  return dict(tokens=batch['tokens'], segment_ids=batch['segments'], padding_mask=batch['padding'])


def loss_fn(model, params, batch, rng, train: bool):
  out = model.apply({'params': params}, **model_inputs(batch), deterministic=not train, rngs={'dropout': rng})
  logits = out['logits']                                                            # (B, T, tags)
  labels = batch['labels']                                                          # (B, T), IGNORE off words
  scored = (labels != labelled.IGNORE) * batch['weight'][:, None]                   # (B, T)
  safe = jnp.maximum(labels, 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
  count = jnp.maximum(scored.sum(), 1.0)
  loss = (ce * scored).sum() / count
  predicted = logits.argmax(-1)
  if train:
    return loss, {'loss': loss, 'token_accuracy': ((predicted == safe) * scored).sum() / count}
  k = logits.shape[-1]
  confusion = jnp.zeros((k, k), jnp.float32).at[safe.reshape(-1), predicted.reshape(-1)].add(scored.reshape(-1))
  return loss, {'loss_sum': (ce * scored).sum(), 'confusion': confusion}           # (gold, predicted)


def summarize(totals: dict) -> dict:
  confusion = np.asarray(totals['confusion'], np.float64)
  words = max(confusion.sum(), 1.0)
  true_positive = np.diag(confusion)
  gold, predicted = confusion.sum(1), confusion.sum(0)
  present = gold > 0
  precision = true_positive / np.maximum(predicted, 1e-9)
  recall = true_positive / np.maximum(gold, 1e-9)
  f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-9), 0.0)
  return {'eval_loss': float(totals['loss_sum']) / words, 'token_accuracy': float(true_positive.sum() / words),
          'f1': float(f1[present].mean()), 'eval_words': int(words)}


def flops_per_step(config):
  return flops.encoder_finetune_flops(config, config.train.batch_size, config.data.seq_len,
                                      config.model.num_classes, per_token=True)


TASK = Task('tag', make_data, model_inputs, loss_fn, flops_per_step, summarize=summarize, heads={'bert': 'bert_tagger'},
            best_metric='eval_token_accuracy')
