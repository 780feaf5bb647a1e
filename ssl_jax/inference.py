"""`run.py eval`: a workdir's newest parameters (or a fresh init) scored on the held-out split,
with the task's probe where it has one. It builds the task's data (the held-out split is what
it scores); `generate`, `fewshot`, `summarize` and `ssl_jax.load` need no data and start from
`model_on_mesh.load` instead."""

import json

import jax

from ssl_jax import metrics as metrics_lib, model_on_mesh
from ssl_jax.trainer import evaluate, setup


def restore_for_inference(config, workdir: str, compile_steps: bool = True):
  """(Setup, params, step): a run's setup (data included) and the workdir's newest parameters
  (not the optimizer's state); a CheckpointError if there are none. Commands that only
  sample or score pass compile_steps=False (no train or eval step)."""
  run = setup(config, workdir, compile_steps)
  params, step = model_on_mesh.restore_params(run, workdir)
  return run, params, step


def eval_command(config, workdir: str) -> dict:
  """Held-out metrics of the workdir's newest checkpoint (or, with init=random, of a fresh
  init), plus the task's probe where it has one; printed as JSON and logged to metrics.jsonl."""
  if config.init == 'random':
    run = setup(config, workdir)
    params, step = run.init_fn(jax.random.key(config.seed)).params, 0
  else:
    run, params, step = restore_for_inference(config, workdir)
  result = {'step': int(step), **evaluate(run, params)}
  if run.task.probe is not None:
    result.update(run.task.probe(run, params))
  if config.init:
    result['init'] = config.init
  if jax.process_index() == 0:
    metrics_lib.append(workdir, result)
    print(json.dumps(result), flush=True)
  return result
