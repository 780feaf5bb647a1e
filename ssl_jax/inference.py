"""A workdir's model restored for use, not training: `eval`, `generate`, `fewshot`,
`summarize` and the Python API start here."""

import json

import jax

from ssl_jax import checkpoint, finetune, metrics as metrics_lib, storage
from ssl_jax.trainer import evaluate, setup


def restore_for_inference(config, workdir: str, compile_steps: bool = True):
  """(Setup, state) from the workdir's newest checkpoint; an error if there is none.
  Commands that only sample or score pass compile_steps=False (no train or eval step)."""
  run = setup(config, workdir, compile_steps)
  ckpt = checkpoint.Checkpointer(workdir, keep=config.train.keep_checkpoints)
  restored = ckpt.restore(run.abstract_state, expect_meta=run.meta())
  ckpt.close()
  if restored is None and finetune.sources.has_imported_params(workdir):   # a `convert --from_hf` workdir
    return run, finetune.sources.imported_state(run, workdir), 0
  if restored is None:
    raise checkpoint.CheckpointError(f'no checkpoint in {storage.join(workdir, "checkpoints")}: train first')
  state, _, step = restored
  return run, state, step


def eval_command(config, workdir: str) -> dict:
  """Held-out metrics of the workdir's newest checkpoint (or, with init=random, of a fresh
  init), plus the task's probe where it has one; printed as JSON and logged to metrics.jsonl."""
  if config.init == 'random':
    run = setup(config, workdir)
    state, step = run.init_fn(jax.random.key(config.seed)), 0
  else:
    run, state, step = restore_for_inference(config, workdir)
  result = {'step': int(step), **evaluate(run, state.params)}
  if run.task.probe is not None:
    result.update(run.task.probe(run, state.params))
  if config.init:
    result['init'] = config.init
  if jax.process_index() == 0:
    metrics_lib.append(workdir, result)
    print(json.dumps(result), flush=True)
  return result
