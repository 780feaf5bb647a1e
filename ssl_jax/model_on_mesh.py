"""A model on a mesh, apart from any training run: what `generate`, `fewshot`, `summarize`,
`ssl_jax.load` and the trainer itself build a model from.

  build(config)   mesh -> kernels -> model -> abstract parameters and their shardings
  load(workdir)   the workdir's saved config and tokenizer, then build, then its newest
                  parameters (or a `convert --from_hf` import's): no corpus read, no
                  optimizer made, nothing written

nanoGPT's `sample.py` rebuilds its model from the checkpoint's own arguments the same way.
The trainer (`trainer.setup`) builds a training run on top: data, optimizer, steps.
"""

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax

from ssl_jax import checkpoint, kernels, models, parallel, storage, workdirs
from ssl_jax.data import tokenizer as tokenizers
from ssl_jax.finetune import sources
from ssl_jax.models import families, sizes


@dataclasses.dataclass(slots=True)
class ModelOnMesh:
  """A config's model, placed: its module, mesh, kernels and parameters' shapes and shardings."""
  config: Any               # resolved: vocabulary size and classes known
  mesh: Any
  choice: Any               # kernels.Choice: the kernels, attention and dtype the program is built from
  model: Any                # the flax module
  model_cfg: Any            # its TransformerConfig
  tokenizer: Any            # None for images
  abstract_params: Any      # ShapeDtypeStructs with shardings
  num_params: int

  @property
  def param_shardings(self):
    return jax.tree_util.tree_map(lambda x: x.sharding, self.abstract_params)

  def init_params(self, rng):
    """Fresh parameters, boxed with their logical axis names (for jax.eval_shape or jit)."""
    return self.model.init({'params': rng, 'dropout': rng}, **families.example_inputs(self.config))['params']

  def meta(self) -> dict:
    """What a checkpoint must agree with to be restored into this model."""
    m = self.model_cfg
    shape = f'{self.config.model.family} L{m.num_layers} H{m.num_heads} D{m.d_model} F{m.d_ff} V{m.vocab_size} P{m.max_len}'
    return {'model': shape, 'tokenizer': tokenizers.fingerprint(self.tokenizer) if self.tokenizer else 'none'}


def build(config, tokenizer=None, mesh=None, choice=None) -> ModelOnMesh:
  """`config` resolved (model.vocab_size and model.num_classes set); `mesh` (default: over
  this job's devices) the one the program is built for; `choice` (default: made for the
  platform of its devices) which kernels it is built from."""
  mesh = mesh if mesh is not None else parallel.make_mesh(config.mesh)
  choice = choice or kernels.choose(config.model, kernels.platform_of(mesh.devices.flat))
  model, model_cfg = models.build(config, choice)
  placed = ModelOnMesh(config=config, mesh=mesh, choice=choice, model=model, model_cfg=model_cfg,
                       tokenizer=tokenizer, abstract_params=None, num_params=0)
  boxed = jax.eval_shape(placed.init_params, jax.random.key(config.seed))
  shardings = parallel.divisible(
      parallel.logical_shardings(nn.get_partition_spec(boxed), mesh, parallel.logical_rules(choice.platform)),
      nn.meta.unbox(boxed))
  placed.abstract_params = checkpoint.abstract(nn.meta.unbox(boxed), shardings)
  placed.num_params = sum(x.size for x in jax.tree_util.tree_leaves(placed.abstract_params))
  return placed


def load(workdir: str, config=None, step: Optional[int] = None):
  """(ModelOnMesh, params, step) of a training workdir's newest checkpoint (or `step`), or of
  a `run.py convert --from_hf` output (step 0). `config` defaults to the one saved there."""
  parallel.initialize_hosts()
  config = workdirs.saved_config(workdir) if config is None else config
  sizes.resolve(config)   # a saved config is resolved; one given here may name a size
  tokenizer = tokenizers.load(workdir) if families.get(config.model.family).text else None
  placed = build(config, tokenizer)
  return (placed, *restore_params(placed, workdir, step))


def restore_params(placed: ModelOnMesh, workdir: str, step: Optional[int] = None):
  """(params, step): the parameters alone (not the optimizer's state) of the workdir's newest
  checkpoint (or `step`), placed as `placed` shards them; a `convert --from_hf` import's at
  step 0; a CheckpointError when there are none."""
  directory = storage.join(workdir, 'checkpoints')
  if storage.isdir(directory):
    ckpt = checkpoint.Checkpointer(workdir, create=False)
    try:
      found = ckpt.restore({'params': placed.abstract_params}, expect_meta=ModelOnMesh.meta(placed), step=step,
                           partial=True)
    finally:
      ckpt.close()
    if found is not None:
      restored, _, at = found
      return restored['params'], at
  if sources.has_imported_params(workdir):
    return sources.imported_params(workdir, placed.abstract_params), 0
  raise checkpoint.CheckpointError(f'no checkpoint in {directory}: train first')
