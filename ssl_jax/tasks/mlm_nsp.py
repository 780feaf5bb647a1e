"""BERT's objective: masked language modelling plus next-sentence prediction.

The MLM head runs only at the gathered masked positions (data.max_predictions per
sequence), which is where its vocabulary projection's FLOPs are counted too. With
mlm_nsp.nsp=false the objective is masked LM alone over `[CLS] A [SEP]` (RoBERTa's choice;
what a corpus of unrelated single sentences allows): the NSP head is still built, so the
parameter tree stays BERT's, but no loss reaches it.
"""

import jax
import jax.numpy as jnp
import optax

from ssl_jax import flops, storage
from ssl_jax.errors import ConfigError
from ssl_jax.data import documents as documents_lib, shard_readers, shards, sources, tokenizer as tokenizers
from ssl_jax.data.bert_examples import SPECIALS, PretrainingBatches
from ssl_jax.data.corpus import run_tokenizer
from ssl_jax.data.text import DataError
from ssl_jax.tasks import Data, Task


def make_data(config, workdir: str) -> Data:
  """Documents of data.path (held out: data.eval_path, else the last data.eval_fraction of
  documents), tokenised a sentence at a time into the workdir's cache and read memory-mapped
  (ssl_jax/data/shards.py); on bad input the trainer's setup leaves the workdir as it was."""
  if config.data.tokenizer == 'char':
    raise ConfigError('BERT needs a sub-word vocabulary: data.tokenizer=sentencepiece (or a .model path)')
  d = config.data
  if not 0 < d.mask_prob <= 1:
    raise ConfigError(f'data.mask_prob={d.mask_prob}: expected a share in (0, 1], e.g. 0.15')
  train_paths = sources.resolve(d.path, 'data.path')
  eval_paths = sources.resolve(d.eval_path, 'data.eval_path') if d.eval_path else []
  tok = run_tokenizer(config, workdir, lambda: tokenizer_texts(config, train_paths + eval_paths), SPECIALS)
  ids = [tok.piece_id(p) for p in SPECIALS]   # ours are 0-4; an imported BERT's vocab.txt has them elsewhere
  if len(set(ids)) < len(SPECIALS) or min(ids) < 0:
    raise ConfigError(f'data.tokenizer={config.data.tokenizer!r}: BERT needs the pieces {SPECIALS}, each its own id')
  train_docs = document_cache(config, workdir, tok, train_paths)
  caches = [train_docs.directory]
  if eval_paths:
    eval_docs = document_cache(config, workdir, tok, eval_paths)
    caches.append(eval_docs.directory)
  else:
    split = max(1, int(len(train_docs) * (1 - d.eval_fraction)))
    train_docs, eval_docs = train_docs[:split], train_docs[split:]
  make = lambda docs, name: PretrainingBatches(
      docs, tok, d.seq_len, config.train.batch_size, config.seed, d.max_predictions, d.short_seq_prob,
      d.whole_word_masking, mask_prob=d.mask_prob, name=name, nsp=config.mlm_nsp.nsp)
  return Data(make(train_docs, 'training documents'), make(eval_docs, 'held-out documents'), tok,
              units_per_example=d.seq_len,
              fingerprint=shard_readers.content_fingerprint(*caches))


def tokenizer_texts(config, paths):
  """A new tokenizer's training text: each document's sentences a line, the first
  data.tokenizer_sample_mb of every file (whole documents; all of a smaller corpus)."""
  d = config.data
  per_file = max(1, int(d.tokenizer_sample_mb * (1 << 20)) // max(1, len(paths)))
  seen = False
  for path in paths:
    taken = 0
    for doc in documents_lib.iter_documents([path], d.format, d.text_field):
      text = '\n'.join(doc)
      seen = True
      yield text
      taken += len(text)
      if taken >= per_file:
        break
  if not seen:
    raise DataError(f'empty corpus: no sentences in {", ".join(paths[:3])}')


def document_cache(config, workdir: str, tok, paths) -> shards.ShardedDocuments:
  d = config.data
  if d.shard_mb <= 0:
    raise ConfigError(f'data.shard_mb={d.shard_mb}: expected a positive size in MB (e.g. 64)')
  directory = shards.build(paths, tok, workdir, tokenizers.fingerprint(tok), storage.join(workdir, 'cache'),
                           fmt=d.format, text_field=d.text_field, workers=d.tokenize_workers,
                           unit_bytes=max(1, int(d.shard_mb * (1 << 20))), sentences=True, local_dir=d.cache_dir)
  return shards.ShardedDocuments(directory)


def model_inputs(batch) -> dict:
  return dict(tokens=batch['inputs'], segment_ids=batch['segments'], padding_mask=batch['padding'],
              masked_positions=batch['positions'])


def cross_entropy_and_hits(logits, labels):
  """Softmax cross-entropy with integer labels, and whether the label's logit is the largest.

  One max over the vocabulary serves both: an argmax for the accuracy is a second,
  variadic (value, index) reduction over the whole (B, P, vocabulary) logits, which
  XLA:CPU runs far slower than the max (in a profile of the 4x256 BERT step it took longer
  than the exponentials). A label tied with another largest logit counts as a hit.
  """
  top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  shifted = logits - top
  label_shifted = jnp.take_along_axis(shifted, labels[..., None], axis=-1)[..., 0]
  cross_entropy = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1)) - label_shifted
  return cross_entropy, label_shifted >= 0


def loss_fn(model, params, batch, rng, train: bool, nsp: bool = True):
  out = model.apply({'params': params}, **model_inputs(batch), deterministic=not train, rngs={'dropout': rng})
  weights = batch['weights']                                                       # (B, P), 0 on padding
  mlm_ce, mlm_hits = cross_entropy_and_hits(out['mlm_logits'], batch['labels'])    # (B, P)
  denominator = jnp.maximum(weights.sum(), 1.0)
  mlm_loss = (mlm_ce * weights).sum() / denominator
  mlm_accuracy = (mlm_hits * weights).sum() / denominator
  if not nsp:
    return mlm_loss, {'loss': mlm_loss, 'mlm_loss': mlm_loss, 'mlm_accuracy': mlm_accuracy}
  nsp_loss = optax.softmax_cross_entropy_with_integer_labels(out['nsp_logits'], batch['nsp']).mean()
  nsp_accuracy = (out['nsp_logits'].argmax(-1) == batch['nsp']).mean()
  loss = mlm_loss + nsp_loss
  return loss, {'loss': loss, 'mlm_loss': mlm_loss, 'mlm_accuracy': mlm_accuracy, 'nsp_loss': nsp_loss,
                'nsp_accuracy': nsp_accuracy}


def flops_per_step(config):
  return flops.encoder_train_flops(config, config.train.batch_size, config.data.seq_len,
                                   config.data.max_predictions)


TASK = Task('mlm_nsp', make_data, model_inputs, loss_fn, flops_per_step, group='mlm_nsp',
            settings={'nsp': (True, 'next-sentence prediction beside masked LM (false: masked LM alone over '
                                    '[CLS] A [SEP], e.g. a corpus of single sentences)')},
            loss_arguments=lambda config, data: {'nsp': config.mlm_nsp.nsp})
