"""Objectives, one module each. A task module provides:

  make_data(config, workdir) -> Data           (train/eval batches, tokenizer, units)
  model_inputs(batch) -> dict                  (the model's keyword arguments)
  loss_fn(model, params, batch, rng, train) -> (loss, metrics)
  flops_per_step(config) -> (model FLOPs of one training step, Megatron-convention FLOPs)
"""

import importlib

TASKS = ('clm', 'mlm_nsp')


def get(name: str):
  if name not in TASKS:
    raise ValueError(f'unknown task {name!r}; known: {", ".join(TASKS)}')
  return importlib.import_module(f'ssl_jax.tasks.{name}')
