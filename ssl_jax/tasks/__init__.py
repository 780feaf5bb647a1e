"""Objectives, one module each. A task module provides:

  make_data(config, workdir) -> Data           (train/eval batches, tokenizer, units)
  model_inputs(batch) -> dict                  (the model's keyword arguments)
  loss_fn(model, params, batch, rng, train) -> (loss, metrics)
  flops_per_step(config) -> (model FLOPs of one training step, Megatron-convention FLOPs)

and optionally
  probe(setup, params) -> dict                 (run.py eval: a linear probe of the encoder)
  report(setup, params) -> str                 (the end of training: figures, plots)
  bind(config) -> dict                         (keyword arguments of loss_fn from the config)
  summarize(sums) -> dict                      (held-out metrics from loss_fn's per-batch sums,
                                                which it returns when train is False)
  evaluate(setup, params) -> dict              (held-out metrics computed on the host instead)
  HEADS, BEST_METRIC                           (fine-tuning: body family -> model family, and
                                                the held-out metric whose best is kept)
"""

import dataclasses
import importlib

TASKS = ('clm', 'mlm_nsp', 'masked_image', 'rotation', 'jigsaw', 'inpaint', 'classify', 'tag', 'span_qa')


@dataclasses.dataclass
class Data:
  """What a task's make_data returns: batches (each a pure function of seed and step) and units."""
  train: object                  # .batch(step) -> dict of host-local arrays
  eval: object                   # .eval_batch(i) -> the same, from the held-out split
  tokenizer: object
  unit: str = 'tokens'           # what throughput counts
  units_per_example: int = 0
  classes: tuple = ()            # label names, where the data has labels


def get(name: str):
  if name not in TASKS:
    raise ValueError(f'unknown task {name!r}; known: {", ".join(TASKS)}')
  return importlib.import_module(f'ssl_jax.tasks.{name}')
