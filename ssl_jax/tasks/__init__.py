"""Objectives, one module each: a module of this package is a task when it defines `TASK`, a
`Task` (so a new pretext task is a new file here, and nothing else). Helpers shared by
several tasks (vision.py, classification.py) define none.

A task owns its settings: they are its own config group (`jigsaw.tile_size`, `mae.mask_ratio`,
...), declared in `Task.settings` and read from the config; a task never writes into the
config. What the trainer, `eval` and fine-tuning ask of a task is the `Task` below; every
field past `flops_per_step` is optional. A task of one objective per head (`classify`) has
no functions of its own: `per_family` names the task that runs for each model family.
"""

import dataclasses
import functools
import importlib
import pkgutil
from typing import Callable, Optional

from ssl_jax.errors import ConfigError


@dataclasses.dataclass
class Data:
  """What a task's make_data returns: batches (each a pure function of seed and step) and units."""
  train: object                  # .batch(step) -> dict of host-local arrays
  eval: object                   # .eval_batch(i) -> the same, from the held-out split
  tokenizer: object
  unit: str = 'tokens'           # what throughput counts
  units_per_example: int = 0
  classes: tuple = ()            # what the model predicts (labels, colour bins); model.num_classes follows
  fingerprint: str = ''          # of the training data's content, kept with each checkpoint ('' = none)


def no_arguments(config, data) -> dict:
  del config, data
  return {}


@dataclasses.dataclass(frozen=True)
class Task:
  """An objective. `loss_fn(model, params, batch, rng, train, **loss_arguments(config, data))` returns
  (loss, metrics); with train False its metrics are summed over the held-out batches and
  handed to `summarize` (else averaged), unless the task `evaluate`s on the host itself."""
  name: str
  make_data: Optional[Callable] = None     # (config, workdir) -> Data
  model_inputs: Optional[Callable] = None  # batch -> the model's keyword arguments
  loss_fn: Optional[Callable] = None
  flops_per_step: Optional[Callable] = None  # config -> (model FLOPs of a step, Megatron-convention FLOPs)
  group: str = ''                          # the config group of its settings ('' = no settings)
  settings: dict = dataclasses.field(default_factory=dict)   # {key: (default, what it does)}
  loss_arguments: Callable = no_arguments  # (config, data) -> keyword arguments of loss_fn
  summarize: Optional[Callable] = None     # summed held-out metrics -> metrics
  evaluate: Optional[Callable] = None      # (setup, params) -> held-out metrics computed on the host
  probe: Optional[Callable] = None         # (setup, params) -> run.py eval's linear probe of the encoder
  report: Optional[Callable] = None        # (setup, params) -> text, at the end of training (figures, plots)
  heads: Optional[dict] = None             # fine-tuning: pretrained body family -> the model family it becomes
  best_metric: str = ''                    # fine-tuning: the held-out metric whose best checkpoint is kept
  per_family: Optional[dict] = None        # a task of one objective per head: model.family -> that task's name
  packs: bool = False                      # takes data.pack (several documents or examples a row)

  @property
  def fine_tuning(self) -> bool:
    return self.heads is not None


@functools.lru_cache(maxsize=None)
def _modules() -> dict:
  """{task name: its module}, of the modules here that define TASK."""
  found = {}
  for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    module = importlib.import_module(f'{__name__}.{info.name}')
    if hasattr(module, 'TASK'):
      found[module.TASK.name] = module
  return found


def _all() -> dict:
  return {name: module.TASK for name, module in _modules().items()}


def every() -> tuple:
  """Every task, in name order."""
  return tuple(_all().values())


def get(name: str, family: str = '', pack: bool = False) -> Task:
  """The task `name`; with `family`, the objective it runs for that model family (a task of
  one objective per head, e.g. classify, names another task for each); with `pack`
  (data.pack), a ConfigError unless that objective packs its rows."""
  tasks = _all()
  if name not in tasks:
    raise ConfigError(f'unknown task {name!r}; known: {", ".join(tasks)}')
  task = tasks[name]
  if family and task.per_family is not None:
    if family not in task.per_family:
      raise ConfigError(f'task {name} takes model.family {", ".join(task.per_family)}; got {family!r}')
    task = tasks[task.per_family[family]]
  if pack and not task.packs:
    raise ConfigError(f'data.pack=true: task {task.name}{f" (model.family {family})" if family else ""} does not '
                      f'pack rows; {" and ".join(t.name for t in tasks.values() if t.packs)} do')
  return task
