"""Image classification by a ViT (fine-tuning, or rotation's labels): it classifies its class
token. Images come from the vision data sources. Metric: `accuracy` on the held-out split
(every image of it, once)."""

import numpy as np

from ssl_jax import flops
from ssl_jax.tasks import Data, Task, classification, vision


def make_data(config, workdir: str) -> Data:
  data = vision.make_data(config, workdir, labelled=True)
  data.eval = HeldOutImages(data.eval)
  return data


def model_inputs(batch) -> dict:
  return dict(images=batch['images'])


def loss_fn(model, params, batch, rng, train: bool):
  logits = model.apply({'params': params}, **model_inputs(batch), deterministic=not train, rngs={'dropout': rng})
  return classification.scored(logits, batch, train)


def flops_per_step(config):
  return flops.vit_classifier_train_flops(config, config.train.batch_size)


class HeldOutImages:
  """A vision data set's held-out batches, each row once: rows past the end get weight 0."""

  def __init__(self, batches):
    self.batches = batches
    self.num_batches = -(-len(batches.images) // batches.global_batch)

  def eval_batch(self, i: int) -> dict:
    batch = self.batches.eval_batch(i)
    positions = i * self.batches.global_batch + self.batches.rows
    return {**batch, 'weight': (positions < len(self.batches.images)).astype(np.float32)}


TASK = Task('classify_images', make_data, model_inputs, loss_fn, flops_per_step, summarize=classification.summarize,
            heads={'vit': 'vit_classifier'}, best_metric='eval_accuracy')
