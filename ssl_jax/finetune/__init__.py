"""Fine-tuning beside the trainer: `prepare` is the one call the trainer makes before it
builds data and model, and the FineTuning it returns the one object it asks afterwards.

  sources.py  where parameters come from (`init_from`: our workdirs, imports, Hugging Face BERT)
  body.py     the pretrained body in the fine-tuning model's tree, and what stays frozen
  best.py     the best held-out checkpoint, kept in WORKDIR/best/
"""

import dataclasses
from typing import Callable, Optional

from ssl_jax.errors import ConfigError
from ssl_jax.finetune import best, body, sources
from ssl_jax.models import families


@dataclasses.dataclass
class FineTuning:
  """A fine-tuning run: its pretrained source (None: the head trains from scratch), which
  parameters stay frozen, and the held-out metric whose best checkpoint is kept."""
  source: Optional[sources.Source]
  frozen: Optional[Callable]     # a predicate on parameter paths, for the train step and optimizer
  best_metric: str

  def initial_params(self, config, params, shardings):
    """The fresh model's parameters with the source's body in them (the head stays fresh);
    with init=random, all fresh: the source's shape and tokenizer without its weights (the
    random-initialisation baseline of the very same model)."""
    if self.source is None or config.init == 'random':
      return params
    return body.load_body(self.source, params, shardings, families.get(config.model.family).body)

  def after_eval(self, workdir: str, step: int, metrics: dict, params, model_config: dict) -> None:
    best.keep_best(workdir, step, metrics, self.best_metric, params, model_config)


def prepare(config, workdir: str, task) -> Optional[FineTuning]:
  """Before data and model: a fine-tuning task takes its source's family, shape and tokenizer
  into `config`; a pretraining run's `init_from` is checked before anything is written."""
  if not task.fine_tuning:
    if config.init_from:
      sources.check_init_from(config)
    return None
  source = sources.apply_source(config, workdir, task.heads)
  if config.model.family not in task.heads.values():
    raise ConfigError(f'task {config.task} fine-tunes model.family {", ".join(task.heads.values())}; '
                      f'got {config.model.family!r}')
  if config.finetune.freeze > 0 and config.model.scan_layers:
    raise ConfigError('finetune.freeze freezes whole blocks, which scanned layers do not have: '
                      'set model.scan_layers=false')
  frozen = body.frozen(config.finetune.freeze, config.model.family) if config.finetune.freeze else None
  return FineTuning(source=source, frozen=frozen, best_metric=task.best_metric)


__all__ = ['FineTuning', 'prepare', 'sources', 'body', 'best']
