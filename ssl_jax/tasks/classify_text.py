"""Text classification by an encoder (e.g. SST-2 sentiment, sentence pairs): it reads
`[CLS] A [SEP] B [SEP]` and classifies its pooled [CLS] vector. Metric: `accuracy` on the
held-out split (every row of it, once).

With data.pack, a row holds several examples (labelled.pack_rows), each with its own [CLS],
positions and attention (pack_ids); logits and labels are (B, K), and the loss and accuracy
are over the real examples (the batch's `weight` (B, K))."""

from ssl_jax import flops
from ssl_jax.data import labelled
from ssl_jax.data.bert_examples import SPECIALS
from ssl_jax.tasks import Data, Task, classification


def make_data(config, workdir: str) -> Data:
  # From scratch, the vocabulary needs BERT's special pieces (a pretrained body brings its own).
  train, held_out, tok, classes = classification.text_rows(config, workdir, SPECIALS, labelled.encode_pairs,
                                                           pack=config.data.pack)
  return Data(train, held_out, tok, units_per_example=config.data.seq_len, classes=classes)


def model_inputs(batch) -> dict:
  if 'pack_ids' in batch:      # packed (data.pack)
    return dict(tokens=batch['tokens'], segment_ids=batch['segments'], padding_mask=batch['padding'],
                pack_ids=batch['pack_ids'], cls_positions=batch['cls_positions'])
  return dict(tokens=batch['tokens'], segment_ids=batch['segments'], padding_mask=batch['padding'])


def loss_fn(model, params, batch, rng, train: bool):
  out = model.apply({'params': params}, **model_inputs(batch), deterministic=not train, rngs={'dropout': rng})
  return classification.scored(out['logits'], batch, train)


def flops_per_step(config):
  return flops.encoder_finetune_flops(config, config.train.batch_size, config.data.seq_len,
                                      config.model.num_classes, per_token=False)


TASK = Task('classify_text', make_data, model_inputs, loss_fn, flops_per_step, summarize=classification.summarize,
            heads={'bert': 'bert_classifier'}, best_metric='eval_accuracy', packs=True)
