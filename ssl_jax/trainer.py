"""One trainer for every family, read top to bottom in phases.

  setup():   hosts and mesh -> data and tokenizer -> the model on the mesh (model_on_mesh,
             what inference builds too) -> optimizer -> state shapes and shardings -> the
             compiled train and eval steps
  train_and_evaluate(): resume or init -> loop (step, log, eval, checkpoint) -> the end

The step is a module-level pure function, `train_step(state, batch) -> (state, metrics)`,
compiled once ahead of time with explicit shardings and the state donated. Its only
randomness is `fold_in(key(seed), step)`; the objective comes from the task (`tasks.Task`).
"""

import contextlib
import copy
import dataclasses
import functools
import sys
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ssl_jax import (checkpoint, compile_cache, config as config_lib, finetune, kernels, metrics as metrics_lib,
                     model_on_mesh, optim, parallel, progress, storage, tasks, workdirs)
from ssl_jax.data import corpus
from ssl_jax.kernels import ops
from ssl_jax.models import sizes
from ssl_jax.workdirs import TrainingError


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def train_step(state: TrainState, batch, *, model, loss_fn, tx, seed: int, grad_accum: int, frozen=None,
               kernels: str = 'xla'):
  """One optimizer update on a global batch; gradients averaged over `grad_accum` micro-batches.
  `kernels` (ssl_jax/kernels) says how the gradient norm and the non-finite skip are written.

  `frozen` (fine-tuning: a predicate on parameter paths) zeroes those gradients first, so
  XLA drops the backward work only they needed.
  """
  rng = jax.random.fold_in(jax.random.key(seed), state.step)
  grad_fn = jax.value_and_grad(lambda p, b, r: loss_fn(model, p, b, r, True), has_aux=True)
  if grad_accum == 1:
    (_, step_metrics), grads = grad_fn(state.params, batch, rng)
  else:
    # Micro-batch i takes rows i, i + k, i + 2k, ...: strided, so each is spread over every
    # data shard instead of living on a few devices.
    micro = jax.tree_util.tree_map(
        lambda x: x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:]).swapaxes(0, 1), batch)

    def accumulate(carry, i):
      mb = jax.tree_util.tree_map(lambda x: x[i], micro)
      (_, m), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
      return jax.tree_util.tree_map(jnp.add, carry, (g, m)), None

    shapes = jax.eval_shape(grad_fn, state.params, jax.tree_util.tree_map(lambda x: x[0], micro), rng)
    zeros = jax.tree_util.tree_map(lambda shape: jnp.zeros(shape.shape, shape.dtype), (shapes[1], shapes[0][1]))
    (grads, step_metrics), _ = jax.lax.scan(accumulate, zeros, jnp.arange(grad_accum))
    grads, step_metrics = jax.tree_util.tree_map(lambda x: x / grad_accum, (grads, step_metrics))
  if frozen is not None:
    grads = optim.zero_where(grads, frozen)
  grad_norm = ops.global_norm(grads, kernels)
  # A non-finite loss or gradient skips the update (the step still advances, so the data
  # order stays a function of the step); the loop counts skips and stops after too many.
  finite = jnp.isfinite(grad_norm) & jnp.isfinite(step_metrics.get('loss', 0.0))

  def update(params, opt_state):
    updates, opt_state = tx.update(grads, opt_state, params, grad_norm=grad_norm)
    return optax.apply_updates(params, updates), opt_state

  params, opt_state = ops.apply_if(finite, update, state.params, state.opt_state, impl=kernels)
  step_metrics = {**step_metrics, 'grad_norm': grad_norm, 'skipped': 1.0 - finite.astype(jnp.float32)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), step_metrics


def eval_step(params, batch, *, model, loss_fn):
  _, step_metrics = loss_fn(model, params, batch, jax.random.key(0), False)
  return step_metrics


@dataclasses.dataclass(slots=True)
class Setup(model_on_mesh.ModelOnMesh):
  """A training run: the model on its mesh (config resolved with the vocabulary and classes
  the data brought, model, kernels, parameters' shapes) and everything training adds, built
  once in `setup` (slots: nothing else is stored on it)."""
  workdir: str
  task: Any                # tasks.Task
  data: Any
  loss_fn: Any             # the task's loss with its settings bound: (model, params, batch, rng, train)
  tx: Any
  state_shardings: Any
  abstract_state: Any       # ShapeDtypeStructs with shardings
  train_fn: Any             # compiled
  eval_fn: Any              # compiled
  compile_s: float
  init_fn: Any = None       # rng -> a fresh state, created sharded
  tuning: Any = None        # finetune.FineTuning of a fine-tuning task: its source, frozen parameters, best metric

  def meta(self) -> dict:
    """What each checkpoint records: the model and tokenizer it fits (ModelOnMesh.meta) and the
    fingerprint of the data it was trained on, where the task has one."""
    found = model_on_mesh.ModelOnMesh.meta(self)
    return {**found, 'data': self.data.fingerprint} if self.data.fingerprint else found

  def global_batch(self, local_batch: dict) -> dict:
    """This host's part of a batch -> the global batch, one array over the mesh."""
    return parallel.global_batch(local_batch, self.mesh)


def setup(config, workdir: str, compile_steps: bool = True, devices=None, choice=None) -> Setup:
  """`devices` (default: this job's) are those the program is built for: `run.py plan
  --topology` passes a TPU slice's, which this host need not have. `choice` (default: made
  for the platform of those devices) says which kernels the program is built from.

  `config` is left as it is: the run works on a copy (Setup.config), which fine-tuning fills
  from its pretrained source and the trainer from the data (vocabulary size, classes)."""
  config = copy.deepcopy(config)
  for line in sizes.resolve(config):   # model.size decides the shape keys left at 0
    if parallel.is_first_host():
      print(f'config: {line}', flush=True)
  # Hosts, mesh, and the kernels for the platform of the mesh's devices. A program built for
  # devices other than this job's (plan's) is compiled to be read, not run: never cached.
  if devices is None:
    compile_cache.enable(config.compile_cache)
  parallel.initialize_hosts()
  mesh = parallel.make_mesh(config.mesh, devices)
  parallel.check_batch(config.train.batch_size, mesh, config.train.grad_accum)
  choice = choice or kernels.choose(config.model, kernels.platform_of(mesh.devices.flat))

  # Fine-tuning takes the shape and tokenizer of its pretrained body; then data and tokenizer
  # (the vocabulary size follows the tokenizer, the number of classes the data, unless set).
  # A failed start (bad data, a model that does not fit it) removes what it wrote there.
  with corpus.kept_only_if_good(workdir):
    task = tasks.get(config.task)
    tuning = finetune.prepare(config, workdir, task)   # before anything is written
    task = tasks.get(config.task, config.model.family, config.data.get('pack', False))  # the family head's objective
    data = task.make_data(config, workdir)
    resolve_from_data(config, data)

    # The model on the mesh, and the optimizer.
    placed = model_on_mesh.build(config, data.tokenizer, mesh, choice)
    if data.tokenizer is not None and config.data.seq_len > placed.model_cfg.max_len:
      raise config_lib.ConfigError(f'data.seq_len={config.data.seq_len} is longer than the model\'s '
                                   f'{placed.model_cfg.max_len} positions (model.max_len)')
  frozen = tuning.frozen if tuning else None
  tx = optim.make(config.train, frozen, choice.kernels)

  # State shapes and shardings, from the logical names the model's parameters carry.
  def init_boxed(rng):
    params = placed.init_params(rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  boxed = jax.eval_shape(init_boxed, jax.random.key(config.seed))
  rules = parallel.logical_rules(choice.platform)
  state_shardings = parallel.divisible(parallel.logical_shardings(nn.get_partition_spec(boxed), mesh, rules),
                                       nn.meta.unbox(boxed))
  abstract_state = checkpoint.abstract(nn.meta.unbox(boxed), state_shardings)

  loss_fn = functools.partial(task.loss_fn, **task.loss_arguments(config, data))
  run = Setup(**{f.name: getattr(placed, f.name) for f in dataclasses.fields(model_on_mesh.ModelOnMesh)},
              workdir=workdir, task=task, data=data, loss_fn=loss_fn, tx=tx, state_shardings=state_shardings,
              abstract_state=abstract_state, train_fn=None, eval_fn=None, compile_s=0.0, tuning=tuning,
              init_fn=jax.jit(lambda rng: nn.meta.unbox(init_boxed(rng)), out_shardings=state_shardings))
  if compile_steps:
    compile_steps_ahead(run)
  return run


def resolve_from_data(config, data) -> None:
  """model.vocab_size from the tokenizer and model.num_classes from the data's classes, where unset."""
  m = config.model
  if data.tokenizer is not None:   # text; images have no vocabulary
    if m.vocab_size <= 0:
      m.vocab_size = data.tokenizer.vocab_size
    if m.vocab_size < data.tokenizer.vocab_size:
      raise config_lib.ConfigError(f'model.vocab_size={m.vocab_size} is smaller than the '
                                   f'tokenizer\'s {data.tokenizer.vocab_size} tokens')
  if m.num_classes <= 0 and data.classes:
    m.num_classes = len(data.classes)


def lower_steps(run: Setup, eval_step_too: bool = True):
  """(train step, eval step or None) jitted and lowered from abstract shapes: nothing is allocated."""
  config = run.config
  bs = parallel.batch_sharding(run.mesh)
  batch_abstract, eval_batch_abstract = (jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct((config.train.batch_size,) + x.shape[1:], x.dtype, sharding=bs), local)
      for local in (run.data.train.batch(0), run.data.eval.eval_batch(0)))
  step = functools.partial(train_step, model=run.model, loss_fn=run.loss_fn, tx=run.tx, seed=config.seed,
                           grad_accum=config.train.grad_accum, frozen=run.tuning.frozen if run.tuning else None,
                           kernels=run.choice.kernels)
  evaluate_step = functools.partial(eval_step, model=run.model, loss_fn=run.loss_fn)
  rep = parallel.replicated(run.mesh)
  with jax.set_mesh(run.mesh), nn.logical_axis_rules(parallel.logical_rules(run.choice.platform)):
    train_lowered = jax.jit(step, in_shardings=(run.state_shardings, bs), out_shardings=(run.state_shardings, rep),
                            donate_argnums=0).lower(run.abstract_state, batch_abstract)
    eval_lowered = jax.jit(evaluate_step, in_shardings=(run.state_shardings.params, bs), out_shardings=rep
                           ).lower(run.abstract_state.params, eval_batch_abstract) if eval_step_too else None
  return train_lowered, eval_lowered


def compile_steps_ahead(run: Setup) -> None:
  """Lowers and compiles the train and eval steps once, from abstract shapes."""
  t = time.perf_counter()
  train_lowered, eval_lowered = lower_steps(run)
  with jax.set_mesh(run.mesh):
    run.train_fn, run.eval_fn = train_lowered.compile(), eval_lowered.compile()
  run.compile_s = time.perf_counter() - t


def init_or_restore(run: Setup, ckpt: checkpoint.Checkpointer):
  """(state, start step): the newest valid checkpoint in the workdir, else a fresh state.

  A fresh state takes its parameters from `init_from` (another run's workdir) when set:
  e.g. BERT's phase 2 at length 512 starting from phase 1; a fine-tuning run takes only its
  body from there (ssl_jax/finetune) and its head fresh. The optimizer starts anew.
  """
  restored = ckpt.restore(run.abstract_state, expect_meta=model_on_mesh.ModelOnMesh.meta(run), set_aside=True)
  if restored is not None:
    state, meta, step = restored
    check_data(run, meta.get('data', ''), step)
    return state, step
  state = run.init_fn(jax.random.key(run.config.seed))
  if run.tuning is not None:
    return state.replace(params=run.tuning.initial_params(run.config, state.params, run.state_shardings.params)), 0
  if run.config.init_from and finetune.sources.has_imported_params(run.config.init_from):
    return finetune.sources.imported_state(run, run.config.init_from), 0
  if run.config.init_from:
    source = checkpoint.Checkpointer(run.config.init_from, create=False)
    found = source.restore(run.abstract_state, expect_meta=run.meta())
    source.close()
    if found is None:
      raise checkpoint.CheckpointError(f'init_from={run.config.init_from}: no checkpoint to start from')
    state = state.replace(params=found[0].params)
  return state, 0


def check_data(run: Setup, saved: str, step: int) -> None:
  """A resume on training data whose content changed since checkpoint `step` was written is a
  CheckpointError (its batches would not be the run's), unless data.resume_on_change asks to
  go on (said on the first lines; later checkpoints record the new data)."""
  now = run.data.fingerprint
  if not saved or not now or saved == now:
    return
  where = run.config.data.path or 'the embedded corpus'
  if not run.config.data.resume_on_change:
    raise checkpoint.CheckpointError(
        f'data.path ({where}) has changed since checkpoint {step} was written (its content {saved}, now {now}): '
        'the batches would not be the run\'s. Restore those files, train in a new workdir, or go on with '
        '--config.data.resume_on_change=true')
  if parallel.is_first_host():
    print(f'data: {where} has changed since checkpoint {step} (content {saved}, now {now}); going on, as '
          'data.resume_on_change asks: the checkpoints from here record the new data', flush=True)


def evaluate(run: Setup, params) -> dict:
  """Held-out metrics over `train.eval_batches` fixed held-out batches (0: all of the split),
  each named `eval_<metric>`.

  Each task metric is averaged over the batches, unless the task sums them itself
  (`summarize`: e.g. accuracy over rows, F1 from a confusion matrix) or evaluates on the
  host (`evaluate`: e.g. decoding answer spans).
  """
  if run.task.evaluate is not None:
    return held_out_names(run.task.evaluate(run, params))
  batches = run.config.train.eval_batches or getattr(run.data.eval, 'num_batches', 0)
  if batches <= 0:
    raise config_lib.ConfigError('train.eval_batches=0 (all) needs held-out data of known size')
  totals = None
  for i in range(batches):
    m = run.eval_fn(params, run.global_batch(run.data.eval.eval_batch(i)))
    totals = m if totals is None else jax.tree_util.tree_map(jnp.add, totals, m)
  totals = jax.device_get(totals)
  if run.task.summarize is not None:
    return held_out_names(run.task.summarize(totals))
  return held_out_names({k: float(v) / batches for k, v in totals.items()})


def held_out_names(metrics: dict) -> dict:
  """`loss` -> `eval_loss`, `accuracy` -> `eval_accuracy`: held-out figures beside `train_*` ones."""
  return {(k if k.startswith('eval_') else f'eval_{k}'): v for k, v in metrics.items()}


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming from the workdir's newest checkpoint), evaluates, samples; returns last metrics."""
  started = time.perf_counter()
  parallel.initialize_hosts()   # before anything asks JAX about processes or devices
  storage.makedirs(workdir)
  workdirs.check_shared(workdir)   # every host must see the workdir, before anything is written there
  lock = workdirs.Lock(workdir)
  if jax.process_index() == 0:
    lock.acquire()
  try:
    return _train_and_evaluate(config, workdir, started)
  finally:
    lock.release()


def _train_and_evaluate(config, workdir: str, started: float) -> dict:
  # Setup and resume (or init): a run already at train.steps neither compiles nor samples.
  run = setup(config, workdir, compile_steps=False)
  config = run.config   # resolved: what is saved and what the run goes on from
  tc = config.train
  ckpt = checkpoint.Checkpointer(workdir, keep=tc.keep_checkpoints, cleanup=True)
  state, start = init_or_restore(run, ckpt)
  if start >= tc.steps:
    ckpt.close()
    print(f'{workdir} is already at step {start} of train.steps={tc.steps}: nothing to train '
          f'(raise --config.train.steps to go on)', file=sys.stderr, flush=True)
    return {'step': start, **next((r for r in reversed(metrics_lib.read(workdir)) if r.get('step') == start), {})}
  compile_steps_ahead(run)
  if jax.process_index() == 0:   # once the checkpoint is known to fit this config
    changes = workdirs.save_config(workdir, config, start)

  # What the run says of itself.
  logger = metrics_lib.MetricLogger(workdir, tc.steps, start, unit=run.data.unit, started=started,
                                    wandb_project=config.log.wandb, config=config)
  logger.print(f'{config.experiment or "run"}: {run.num_params:,} parameters; {progress.describe_target(run)}; '
               f'train and eval steps compiled in {run.compile_s:.1f}s')
  logger.print(progress.describe_start(run, start))
  if jax.process_index() == 0 and changes:
    logger.print(f'config changed since the run saved in {workdir} (history in {workdirs.HISTORY}): '
                 + ', '.join(f'{k} {old!r} -> {new!r}' for k, (old, new) in changes.items()))

  # The loop: step, log, evaluate, checkpoint.
  skipped = progress.SkippedSteps(tc.max_bad_steps)
  records = progress.StepRecords(logger, run.data.unit, tc.batch_size * run.data.units_per_example,
                                 optim.schedule(tc), start, skipped)
  preemption = progress.Preemption()
  meta = run.meta()
  try:
    too_many = False
    for step in range(start, tc.steps):
      state, step_metrics = run.train_fn(state, run.global_batch(run.data.train.batch(step)))
      done = step + 1
      too_many = skipped.count()          # the step before's flag: this one is queued by now
      skipped.flag = step_metrics['skipped']
      if too_many:
        break
      records.write()                     # the step before's record, for the same reason
      if done % tc.log_every == 0 or done == tc.steps:
        records.hold(done, step_metrics)
      if (tc.eval_every and done % tc.eval_every == 0) or done == tc.steps:
        jax.block_until_ready(state)      # the steps queued so far count as training time
        t = time.perf_counter()
        eval_metrics = evaluate(run, state.params)
        if run.tuning is not None:
          run.tuning.after_eval(workdir, done, eval_metrics, state.params, config.model.to_dict())
        records.exclude(time.perf_counter() - t)
        records.write(done, eval_metrics)
      if (tc.checkpoint_every and done % tc.checkpoint_every == 0) or done == tc.steps:
        ckpt.save(done, state, meta)
        logger.flush()                    # the records up to this checkpoint are kept with it
      if preemption.reached(done):
        records.write()
        ckpt.save(done, state, meta)
        logger.flush()
        logger.print(f'SIGTERM: saved the checkpoint of step {done}{preemption.hosts()}; exiting')
        break
    too_many = too_many or skipped.count()
    records.write()
    ckpt.close()
  except BaseException:
    with contextlib.suppress(Exception):
      ckpt.close()       # a save in flight completes: no finished work is lost to the error
    with contextlib.suppress(Exception):
      logger.close()     # the progress bar ends its line before the error's
    raise
  finally:
    preemption.restore()
  if too_many:
    logger.close()
    raise TrainingError(f'{skipped.in_a_row} steps in a row had a non-finite loss or gradient (updates skipped, '
                        f'{skipped.total} in all); stopping at step {done}. Lower train.lr, or raise '
                        f'train.max_bad_steps to wait longer')

  # The end: the task's report (a sample, reconstructions, puzzles), hyperparameters.
  logger.end_progress()
  if run.task.report is not None and not preemption.requested and jax.process_index() == 0:
    text = run.task.report(run, state.params)
    if text:
      print(text, flush=True)
      logger.text('sample', text, done)
  logger.hparams(progress.hparams_of(config), records.last)
  logger.close()
  if jax.process_index() == 0:
    print(f'workdir: {workdir} (metrics.jsonl, loss.png, checkpoints/, TensorBoard events)', flush=True)
  return records.last
