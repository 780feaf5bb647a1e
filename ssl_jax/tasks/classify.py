"""Classification fine-tuning: single texts (e.g. SST-2 sentiment), sentence pairs, or images.

Text comes from a TSV (`text[, text_b], label`); an encoder reads `[CLS] A [SEP] B [SEP]`
and classifies its pooled [CLS] vector; a decoder (GPT-1's recipe) reads A, a newline and
B, classifies its last token, and adds `classify.lm_weight` x its language-modelling loss.
Images come from the vision data sources and a ViT classifies its class token. Metric:
`accuracy` on the held-out split (every row of it, once).
"""

import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax import flops
from ssl_jax.errors import ConfigError
from ssl_jax.data import labelled
from ssl_jax.data.bert_examples import SPECIALS
from ssl_jax.data.corpus import run_tokenizer
from ssl_jax.tasks import Data, Task, vision


def make_data(config, workdir: str) -> Data:
  if config.model.family == 'vit_classifier':
    data = vision.make_data(config, workdir, labelled=True)
    data.eval = HeldOutImages(data.eval)
    return data
  if not config.data.path:
    raise ConfigError('classification needs data.path: a TSV with a header (text[, text_b], label)')
  rows, held_out = labelled.split(config, lambda path: list(zip(*labelled.read_tsv(path))))
  (texts, texts_b, names), (eval_texts, eval_texts_b, eval_names) = (
      tuple(list(column) for column in zip(*part)) for part in (rows, held_out))
  # From scratch, an encoder's vocabulary needs BERT's special pieces (a pretrained body brings its own).
  tok = run_tokenizer(config, workdir, lambda: texts + [b for b in texts_b if b],
                      () if config.model.family == 'gpt_classifier' else SPECIALS)
  labels, classes = labelled.label_ids(names)
  eval_labels, _ = labelled.label_ids(eval_names, classes)
  decoder = config.model.family == 'gpt_classifier'
  encode = labelled.encode_plain if decoder else labelled.encode_pairs
  d = config.data
  make = lambda rows, y, name: labelled.LabelledBatches(
      {**encode(tok, rows[0], rows[1], d.seq_len), 'labels': y}, config.train.batch_size, config.seed, name)
  return Data(make((texts, texts_b), labels, 'training rows'), make((eval_texts, eval_texts_b), eval_labels,
                                                                    'held-out rows'),
              tok, units_per_example=d.seq_len, classes=classes)


def model_inputs(batch) -> dict:
  if 'images' in batch:
    return dict(images=batch['images'])
  if 'lengths' in batch:
    return dict(tokens=batch['tokens'], lengths=batch['lengths'])
  return dict(tokens=batch['tokens'], segment_ids=batch['segments'], padding_mask=batch['padding'])


def _lm_loss(lm_logits, batch):
  """Next-token cross-entropy over each row's real tokens (GPT-1's auxiliary objective)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(lm_logits[:, :-1], batch['tokens'][:, 1:])  # (B, T-1)
  mask = batch['padding'][:, 1:] * batch['weight'][:, None]
  return (ce * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def loss_fn(model, params, batch, rng, train: bool, lm_weight: float = 0.0):
  out = model.apply({'params': params}, **model_inputs(batch), deterministic=not train, rngs={'dropout': rng})
  logits = out['logits'] if isinstance(out, dict) else out                           # (B, classes)
  weight = batch.get('weight', jnp.ones(logits.shape[:1]))
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['labels'])      # (B,)
  correct = (logits.argmax(-1) == batch['labels']) * weight
  count = jnp.maximum(weight.sum(), 1.0)
  loss = (ce * weight).sum() / count
  metrics = {'loss': loss, 'accuracy': correct.sum() / count}
  if isinstance(out, dict) and 'lm_logits' in out:
    lm = _lm_loss(out['lm_logits'], batch)
    metrics['lm_loss'] = lm
    loss = loss + lm_weight * lm
    metrics['loss'] = loss
  if not train:   # sums, so that the held-out metric is over rows, not an average of batch means
    return loss, {'loss_sum': (ce * weight).sum(), 'correct': correct.sum(), 'count': weight.sum()}
  return loss, metrics


def summarize(totals: dict) -> dict:
  count = max(float(totals['count']), 1.0)
  return {'eval_loss': float(totals['loss_sum']) / count, 'accuracy': float(totals['correct']) / count,
          'eval_examples': int(totals['count'])}


def loss_arguments(config, data) -> dict:
  """Keyword arguments of loss_fn that come from the config."""
  del data
  return {'lm_weight': config.classify.lm_weight} if config.model.family == 'gpt_classifier' else {}


def flops_per_step(config):
  if config.model.family == 'vit_classifier':
    return flops.vit_classifier_train_flops(config, config.train.batch_size)
  if config.model.family == 'gpt_classifier':
    return flops.decoder_train_flops(config, config.train.batch_size, config.data.seq_len)
  return flops.encoder_finetune_flops(config, config.train.batch_size, config.data.seq_len,
                                      config.model.num_classes, per_token=False)


class HeldOutImages:
  """A vision data set's held-out batches, each row once: rows past the end get weight 0."""

  def __init__(self, batches):
    self.batches = batches
    self.num_batches = -(-len(batches.images) // batches.global_batch)

  def eval_batch(self, i: int) -> dict:
    batch = self.batches.eval_batch(i)
    positions = i * self.batches.global_batch + self.batches.rows
    return {**batch, 'weight': (positions < len(self.batches.images)).astype(np.float32)}


TASK = Task('classify', make_data, model_inputs, loss_fn, flops_per_step, group='classify',
            settings={'lm_weight': (0.5, 'decoders: weight of the auxiliary language-modelling loss (GPT-1)')},
            loss_arguments=loss_arguments, summarize=summarize,
            heads={'bert': 'bert_classifier', 'gpt': 'gpt_classifier', 'vit': 'vit_classifier'},
            best_metric='eval_accuracy')
