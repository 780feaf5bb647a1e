"""Objectives, one module each. A task module provides:

  make_data(config, workdir) -> Data           (train/eval batches, tokenizer, units)
  model_inputs(batch) -> dict                  (the model's keyword arguments)
  loss_fn(model, params, batch, rng, train) -> (loss, metrics)
  flops_per_step(config) -> (model FLOPs of one training step, Megatron-convention FLOPs)
"""

import dataclasses
import importlib

TASKS = ('clm', 'mlm_nsp', 'masked_image', 'rotation')


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
