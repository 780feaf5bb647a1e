"""What run.py calls: one function per command, and which errors are the user's to fix."""

import json
import os

import ml_collections

from ssl_jax import bench, checkpoint, config as config_lib, generate, inference, storage, tasks, trainer, workdirs
from ssl_jax.data.text import DataError


def is_user_error(e: Exception) -> bool:
  """Errors that a one-line message explains (bad input, config, data, checkpoint)."""
  return isinstance(e, (DataError, checkpoint.CheckpointError, config_lib.ConfigError, FileNotFoundError,
                        workdirs.TrainingError, storage.StorageError))


def default_workdir(config) -> str:
  return os.path.join('runs', config.experiment or 'default')


def run(command: str, config_spec: str, overrides, *, config_given: bool, workdir, steps=None, prompt='\n',
        prompt_file=None, max_new_tokens=200, temperature=0.8, top_k=200, from_hf=None, to_hf=None, top_p=1.0,
        stop=(), task_file=None, train_file=None, shots='0,1,4', input_file=None, devices=None,
        accelerator='', profile=None, topology='', slices=1):
  if command == 'convert':  # needs no experiment: the shapes come from the files
    from ssl_jax.convert import command  # pylint: disable=import-outside-toplevel
    command.convert_command(from_hf, to_hf, workdir)
    return
  if command in ('eval', 'generate', 'fewshot', 'summarize') and not config_given:
    if not workdir:
      raise config_lib.ConfigError(f'{command} needs --workdir (a trained run) or --config')
    config = saved_config(workdir)
  elif command in ('train', 'finetune') and not config_given and workdir and storage.exists(
      storage.join(workdir, 'config.json')):
    config = saved_config(workdir)   # go on with the run saved there, not the default experiment
    print(f'config: the one saved in {workdir} (give --config to start from an experiment)', flush=True)
  else:
    config = config_lib.load(config_spec)
  for key, text in overrides:
    config_lib.override(config, key, text)
  if command == 'config':
    print(config_lib.describe(config), flush=True)
    return
  if command == 'plan':
    import jax  # pylint: disable=import-outside-toplevel
    from ssl_jax import plan  # pylint: disable=import-outside-toplevel
    plan.plan_command(config, devices or jax.device_count(), accelerator, workdir or '', topology, slices)
    return
  if not workdir and command != 'bench':
    workdir = default_workdir(config)
    print(f'workdir: {workdir} (set --workdir to choose)', flush=True)
  if command == 'train':
    trainer.train_and_evaluate(config, workdir)
  elif command == 'prepare':
    prepare_command(config, workdir)
  elif command == 'finetune':
    if not tasks.get(config.task).fine_tuning:
      raise config_lib.ConfigError(f'task {config.task!r} is not a fine-tuning task; finetune takes '
                                   'experiments/finetune_*.py (or use train)')
    trainer.train_and_evaluate(config, workdir)
    best = storage.join(workdir, 'best', 'best.json')
    if storage.exists(best):
      print(f'best: {storage.read_text(best).strip()} (parameters in {storage.dirname(best)})', flush=True)
  elif command == 'eval':
    inference.eval_command(config, workdir)
  elif command == 'bench':
    if steps:
      config.bench.steps = steps
    bench.main(config, workdir or '', profile or '')
  elif command == 'generate':
    restored, state, _ = inference.restore_for_inference(config, workdir, compile_steps=False)
    prompts = [prompt]
    if prompt_file:
      with open(prompt_file) as f:
        prompts = [line.rstrip('\n').replace('\\n', '\n') for line in f if line.strip()]
    texts = generate.complete(restored.model, state.params, restored.data.tokenizer, prompts, max_new_tokens, stop,
                              temperature=temperature, top_k=top_k, top_p=top_p, seed=config.seed)
    for p, text in zip(prompts, texts):
      print(p + text, flush=True)
  elif command == 'fewshot':
    from ssl_jax import evaluate  # pylint: disable=import-outside-toplevel
    restored, state, _ = inference.restore_for_inference(config, workdir, compile_steps=False)
    evaluate.fewshot_command(restored, state.params, task_file, train_file, shots, workdir)
  elif command == 'summarize':
    from ssl_jax import summarize  # pylint: disable=import-outside-toplevel
    restored, state, _ = inference.restore_for_inference(config, workdir, compile_steps=False)
    summarize.summarize_command(restored, state.params, input_file, workdir)


def prepare_command(config, workdir: str) -> dict:
  """`run.py prepare`: cleans data.path into WORKDIR/prepared (this host's shard on several hosts)."""
  import jax  # pylint: disable=import-outside-toplevel
  from ssl_jax.data import prepare, text  # pylint: disable=import-outside-toplevel
  from ssl_jax import parallel  # pylint: disable=import-outside-toplevel
  parallel.initialize_hosts()
  paths = text.resolve_paths(config.data.path, 'data.path')
  path, report = prepare.prepared_corpus(paths, workdir, config.data.prepare, jax.process_index(), jax.process_count())
  print(prepare.table(report), flush=True)
  print(json.dumps({k: report[k] for k in ('documents_in', 'documents_out', 'words_in', 'words_out', 'removed',
                                           'mb_per_sec')} | {'corpus': path}), flush=True)
  return report


def saved_config(workdir: str):
  """The config a workdir (a folder or a URL) saved, with keys added since at their defaults."""
  path = storage.join(workdir, 'config.json')
  if not storage.exists(path):
    raise config_lib.ConfigError(f'{path} does not exist: is {workdir} a training workdir?')
  try:
    saved = json.loads(storage.read_text(path))
  except json.JSONDecodeError as e:
    raise config_lib.ConfigError(f'{path} is not valid JSON ({e})') from None
  config = config_lib.base_config()   # keys added since the run was saved keep their defaults
  for key, value in config_lib.flatten(saved).items():
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      if part not in node:
        node[part] = ml_collections.ConfigDict()
      node = node[part]
    if leaf == 'remat' and isinstance(value, bool):   # saved before remat named a policy
      value = 'full' if value else 'none'
    node[leaf] = value
  config_lib.move_renamed(config, path)   # keys that moved since it was saved
  config.lock()
  return config
