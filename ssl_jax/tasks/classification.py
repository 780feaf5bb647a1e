"""What the three classification objectives share (classify_text.py, classify_decoder.py,
classify_images.py): the cross-entropy and accuracy over weighted rows, and held-out sums so
that accuracy is over rows, not an average of batch means."""

import jax.numpy as jnp
import optax

from ssl_jax.errors import ConfigError
from ssl_jax.data import labelled
from ssl_jax.data.corpus import run_tokenizer


def scored(logits, batch, train: bool, extra_loss=None):
  """(loss, metrics) of class logits (B, classes) against batch['labels'], each row weighted by
  batch['weight'] (0: padding past the held-out split's end); packed rows' logits (B, K,
  classes) against labels and weights (B, K), one an example; `extra_loss` (loss, name) adds
  an auxiliary term (a decoder's language modelling)."""
  weight = batch.get('weight', jnp.ones(logits.shape[:1]))
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['labels'])      # (B,)
  correct = (logits.argmax(-1) == batch['labels']) * weight
  count = jnp.maximum(weight.sum(), 1.0)
  loss = (ce * weight).sum() / count
  metrics = {'loss': loss, 'accuracy': correct.sum() / count}
  if extra_loss is not None:
    value, name, scale = extra_loss
    metrics[name] = value
    loss = loss + scale * value
    metrics['loss'] = loss
  if not train:
    return loss, {'loss_sum': (ce * weight).sum(), 'correct': correct.sum(), 'count': weight.sum()}
  return loss, metrics


def summarize(totals: dict) -> dict:
  count = max(float(totals['count']), 1.0)
  return {'eval_loss': float(totals['loss_sum']) / count, 'accuracy': float(totals['correct']) / count,
          'eval_examples': int(totals['count'])}


def text_rows(config, workdir: str, special, encode, pack: bool = False):
  """(train batches, held-out batches, tokenizer, classes) of data.path's TSV (`text[, text_b],
  label`), each row encoded by `encode(tokenizer, texts, texts_b, seq_len)`; `special`: the
  pieces a new vocabulary must hold. With `pack`, several encoded rows a row
  (labelled.pack_rows, at most data.pack_examples, 0: data.seq_len // 4)."""
  if not config.data.path:
    raise ConfigError('classification needs data.path: a TSV with a header (text[, text_b], label)')
  rows, held_out = labelled.split(config, lambda path: list(zip(*labelled.read_tsv(path))))
  (texts, texts_b, names), (eval_texts, eval_texts_b, eval_names) = (
      tuple(list(column) for column in zip(*part)) for part in (rows, held_out))
  tok = run_tokenizer(config, workdir, lambda: texts + [b for b in texts_b if b], special)
  labels, classes = labelled.label_ids(names)
  eval_labels, _ = labelled.label_ids(eval_names, classes)
  per_row = config.data.pack_examples or max(1, config.data.seq_len // 4)
  arrays = lambda rows, y: {**encode(tok, rows[0], rows[1], config.data.seq_len), 'labels': y}
  packed = lambda a: labelled.pack_rows(a, per_row, config.seed) if pack else a
  make = lambda rows, y, name: labelled.LabelledBatches(packed(arrays(rows, y)), config.train.batch_size,
                                                        config.seed, name)
  return (make((texts, texts_b), labels, 'training rows'), make((eval_texts, eval_texts_b), eval_labels, 'held-out rows'),
          tok, classes)
