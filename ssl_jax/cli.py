"""The commands of run.py in one table: each command's flags, where its config comes from, and
the function it runs. `command_line.py` parses the arguments against this table and `run`
looks the command up. Importing this module loads no JAX: each command imports what it
needs when it runs, after the command line has set JAX's flags.
"""

import dataclasses
import json
import os
import sys
from typing import Any, Callable, Optional, Tuple

from ssl_jax import config as config_lib, storage, workdirs
from ssl_jax.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class Flag:
  """A command's own flag: `--name`, read by its function as `flags.<dest>`."""
  name: str
  help: str
  example: str
  default: Any = None
  type: Optional[Callable] = None   # int, float; None: text
  repeat: bool = False              # may be given several times: a list
  dest: str = ''                    # the attribute it is read as ('' = the name without dashes)
  as_config: str = ''               # how another command spells it as a config key, if it can

  @property
  def key(self) -> str:
    return self.dest or self.name[2:]

  def add_to(self, parser) -> None:
    kwargs = dict(dest=self.key, default=[] if self.repeat else self.default,
                  help=f'{self.help} (e.g. {self.example})')
    if self.repeat:
      kwargs['action'] = 'append'
    elif self.type is not None:
      kwargs['type'] = self.type
    parser.add_argument(self.name, **kwargs)


@dataclasses.dataclass(frozen=True)
class Command:
  """`about` is its help; `config` where its config comes from: `experiment` (--config, else
  the default experiment), `resume` (as experiment, but a workdir's saved config when it has
  one and no --config is given), `saved` (the workdir's saved config unless --config is
  given), `none` (convert: the files say what they hold); `default_workdir` whether it writes
  under runs/<experiment> when no --workdir is given."""
  name: str
  about: str
  run: Callable                     # (config, workdir, flags) -> None
  flags: Tuple[Flag, ...] = ()
  config: str = 'experiment'
  default_workdir: bool = True


def is_user_error(e: Exception) -> bool:
  """Errors that a one-line message explains (bad input, config, data, checkpoint)."""
  from ssl_jax import checkpoint  # pylint: disable=import-outside-toplevel
  return isinstance(e, (DataError, checkpoint.CheckpointError, ConfigError, FileNotFoundError,
                        workdirs.TrainingError, storage.StorageError))


def default_workdir(config) -> str:
  return os.path.join('runs', config.experiment or 'default')


# What each command runs: (config, workdir, flags).

def _train(config, workdir, flags) -> None:
  del flags
  from ssl_jax import trainer  # pylint: disable=import-outside-toplevel
  trainer.train_and_evaluate(config, workdir)


def _finetune(config, workdir, flags) -> None:
  from ssl_jax import tasks  # pylint: disable=import-outside-toplevel
  if not tasks.get(config.task).fine_tuning:
    raise ConfigError(f'task {config.task!r} is not a fine-tuning task; finetune takes '
                      'experiments/finetune_*.py (or use train)')
  _train(config, workdir, flags)
  best = storage.join(workdir, 'best', 'best.json')
  if storage.exists(best):
    print(f'best: {storage.read_text(best).strip()} (parameters in {storage.dirname(best)})', flush=True)


def _prepare(config, workdir, flags) -> dict:
  """Cleans data.path into WORKDIR/prepared (this host's shard on several hosts)."""
  del flags
  from ssl_jax import parallel  # pylint: disable=import-outside-toplevel
  from ssl_jax.data import prepare, sources  # pylint: disable=import-outside-toplevel
  parallel.initialize_hosts()
  paths = sources.resolve(config.data.path, 'data.path')
  path, report = prepare.prepared_corpus(paths, workdir, config.data.prepare, *parallel.this_host())
  print(prepare.table(report), flush=True)
  print(json.dumps({k: report[k] for k in ('documents_in', 'documents_out', 'words_in', 'words_out', 'removed',
                                           'mb_per_sec')} | {'corpus': path}), flush=True)
  return report


def _eval(config, workdir, flags) -> None:
  del flags
  from ssl_jax import inference  # pylint: disable=import-outside-toplevel
  inference.eval_command(config, workdir)


def _bench(config, workdir, flags) -> None:
  from ssl_jax import bench  # pylint: disable=import-outside-toplevel
  if flags.steps:
    config.bench.steps = flags.steps
  bench.main(config, workdir or '', flags.profile or '')


def _plan(config, workdir, flags) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  from ssl_jax import plan  # pylint: disable=import-outside-toplevel
  plan.plan_command(config, flags.devices or jax.device_count(), flags.accelerator, workdir or '', flags.topology,
                    flags.slices)


def _generate(config, workdir, flags) -> None:
  from ssl_jax import generate, model_on_mesh  # pylint: disable=import-outside-toplevel
  placed, params, _ = model_on_mesh.load(workdir, config)
  prompts = [flags.prompt]
  if flags.prompt_file:
    with open(flags.prompt_file) as f:
      prompts = [line.rstrip('\n').replace('\\n', '\n') for line in f if line.strip()]
  stop = [s.replace('\\n', '\n') for s in flags.stop]
  texts = generate.complete(placed.model, params, placed.tokenizer, prompts, flags.max_new_tokens, stop,
                            temperature=flags.temperature, top_k=flags.top_k, top_p=flags.top_p, seed=config.seed)
  for p, text in zip(prompts, texts):
    print(p + text, flush=True)


def _fewshot(config, workdir, flags) -> None:
  from ssl_jax import evaluate, model_on_mesh  # pylint: disable=import-outside-toplevel
  placed, params, _ = model_on_mesh.load(workdir, config)
  evaluate.fewshot_command(placed, params, flags.task_file, flags.train_file, flags.shots, workdir)


def _summarize(config, workdir, flags) -> None:
  from ssl_jax import model_on_mesh, summarize  # pylint: disable=import-outside-toplevel
  placed, params, _ = model_on_mesh.load(workdir, config)
  summarize.summarize_command(placed, params, flags.input_file, workdir)


def _convert(config, workdir, flags) -> None:
  del config
  from ssl_jax.convert import command  # pylint: disable=import-outside-toplevel
  command.convert_command(flags.from_hf, flags.to_hf, workdir)


def _print_config(config, workdir, flags) -> None:
  del workdir, flags
  from ssl_jax.models import sizes  # pylint: disable=import-outside-toplevel
  for line in sizes.resolve(config):   # the shape model.size gives, as a run takes it
    print(f'config: {line}', file=sys.stderr, flush=True)
  print(config_lib.describe(config), flush=True)


COMMANDS = {c.name: c for c in (
    Command('train', 'train (resuming from the workdir\'s newest checkpoint), evaluate, sample', _train,
            config='resume'),
    Command('finetune', 'train a fine-tuning experiment (experiments/finetune_*.py) from --config.init_from=DIR '
            '(our workdir, a `convert --from_hf` output or a Hugging Face BERT directory); the best held-out '
            'checkpoint is kept in WORKDIR/best', _finetune, config='resume'),
    Command('prepare', 'clean and de-duplicate data.path into WORKDIR/prepared, with prepare_report.json (train does '
            'it first, cached, with --config.data.prepare.enabled=true)', _prepare),
    Command('eval', 'evaluate the workdir\'s newest checkpoint on the held-out split', _eval, config='saved'),
    Command('bench', 'time the train step: one JSON line (tokens/s, step_ms, compile_s, MFU, ...)', _bench, (
        Flag('--steps', 'timed steps', '--steps 50', type=int, as_config='--config.train.steps=N'),
        Flag('--profile', 'write a jax.profiler trace of 3 steps to this folder', '--profile runs/trace'),
    ), default_workdir=False),
    Command('plan', 'compile the train step ahead of time for a TPU slice (--topology v5p:2x2x1, libtpu\'s compiler) '
            'or --devices N (virtual) and report per-device memory, FLOPs, HBM traffic, collectives, a roofline, '
            'and whether it fits --accelerator (H100, TPU v5p, ...)', _plan, (
        Flag('--devices', 'virtual devices to plan for (default: those present)', '--devices 1024', type=int),
        Flag('--accelerator', 'the device whose memory it must fit (H100, H200, B200, A100, A100-40GB, L4, TPU v4, '
             'TPU v5e, TPU v5p, TPU v6e, or e.g. 24GB; case-insensitive; default: the topology\'s chip, else H100)',
             '--accelerator h100', default=''),
        Flag('--topology', 'compile for this TPU slice with libtpu\'s compiler (needs pip install "jax[tpu]")',
             '--topology v5p:2x2x1', default=''),
        Flag('--slices', '--topology slices joined over DCN', '--slices 2', default=1, type=int),
    ), default_workdir=False),
    Command('generate', 'sample from the workdir\'s newest checkpoint: --prompt "..." [--max_new_tokens N] [--stop S]',
            _generate, (
        Flag('--prompt', 'the prompt', '--prompt "ROMEO:"', default='\n'),
        Flag('--prompt_file', 'a file of prompts, one a line', '--prompt_file prompts.txt'),
        Flag('--max_new_tokens', 'tokens to sample', '--max_new_tokens 300', default=200, type=int),
        Flag('--temperature', '0 = greedy', '--temperature 0', default=0.8, type=float),
        Flag('--top_k', 'sample among the k likeliest', '--top_k 40', default=200, type=int),
        Flag('--top_p', 'sample among the likeliest tokens holding this much probability (1 = all)', '--top_p 0.9',
             default=1.0, type=float),
        Flag('--stop', 'cut the text at this string (repeatable; \\n for a newline)', '--stop "\\n\\n"', repeat=True),
    ), config='saved'),
    Command('convert', 'Hugging Face BERT or GPT-2 in or out: --from_hf DIR (into --workdir) or --to_hf DIR (from '
            '--workdir)', _convert, (
        Flag('--from_hf', 'a Hugging Face BERT or GPT-2 directory to import', '--from_hf path/to/hf_bert'),
        Flag('--to_hf', 'a directory to export the workdir\'s BERT or GPT to', '--to_hf out/hf_bert'),
    ), config='none', default_workdir=False),
    Command('fewshot', 'few-shot accuracy against K: --task TEST.jsonl --train TRAIN.jsonl --shots 0,1,4', _fewshot, (
        Flag('--task', 'the test JSONL (context, choices + label, or target)', '--task data/sst2_test.jsonl',
             dest='task_file'),
        Flag('--train', 'the JSONL the K examples are drawn from', '--train data/sst2_train.jsonl', dest='train_file'),
        Flag('--shots', 'the values of K, comma-separated', '--shots 0,1,4,8', default='0,1,4'),
    ), config='saved'),
    Command('summarize', 'TL;DR summaries (and ROUGE against references): --input FILE.jsonl', _summarize, (
        Flag('--input', 'JSONL of article (and reference)', '--input articles.jsonl', dest='input_file'),
    ), config='saved'),
    Command('config', 'print the resolved config, one `key = value  # what it does` line per key', _print_config,
            default_workdir=False),
)}


def config_of(command: Command, config_spec: str, config_given: bool, workdir: Optional[str]):
  """The config `command` starts from (before overrides), as its `config` field says."""
  if command.config == 'saved' and not config_given:
    if not workdir:
      raise ConfigError(f'{command.name} needs --workdir (a trained run) or --config')
    return workdirs.saved_config(workdir)
  if command.config == 'resume' and not config_given and workdir and storage.exists(
      storage.join(workdir, workdirs.CONFIG)):
    print(f'config: the one saved in {workdir} (give --config to start from an experiment)', flush=True)
    return workdirs.saved_config(workdir)   # go on with the run saved there, not the default experiment
  return config_lib.load(config_spec)


def run(name: str, config_spec: str, overrides, *, config_given: bool, workdir: Optional[str], **values) -> None:
  """Runs command `name`: its config (then the --config.KEY=VALUE overrides), its workdir, and
  its flags' values by name (`values`; the rest at their defaults)."""
  command = COMMANDS[name]
  flags = argparse_namespace(command, values)
  config = None
  if command.config != 'none':
    config = config_of(command, config_spec, config_given, workdir)
    for key, text in overrides:
      config_lib.override(config, key, text)
    if not workdir and command.default_workdir:
      workdir = default_workdir(config)
      print(f'workdir: {workdir} (set --workdir to choose)', flush=True)
  command.run(config, workdir, flags)


def argparse_namespace(command: Command, values: dict):
  """The command's flags as attributes: `values` where given, else each flag's default."""
  import argparse  # pylint: disable=import-outside-toplevel
  known = {f.key: f for f in command.flags}
  unknown = set(values) - set(known)
  if unknown:
    raise TypeError(f'{command.name} has no flag {", ".join(sorted(unknown))}')
  return argparse.Namespace(**{key: values.get(key, [] if f.repeat else f.default) for key, f in known.items()})
