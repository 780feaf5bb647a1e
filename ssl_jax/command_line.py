"""ssl_jax command line: python run.py COMMAND [--config experiments/FILE.py[:ARG]] [--config.KEY=VALUE ...] [--workdir DIR]
(or `ssl-jax COMMAND ...` once installed with pip)

Commands:
  train     train (resuming from the workdir's newest checkpoint), evaluate, sample
  finetune  train a fine-tuning experiment (experiments/finetune_*.py) from --config.init_from=DIR
            (our workdir, a `convert --from_hf` output or a Hugging Face BERT directory);
            the best held-out checkpoint is kept in WORKDIR/best
  prepare   clean and de-duplicate data.path into WORKDIR/prepared, with prepare_report.json
            (train does it first, cached, with --config.data.prepare.enabled=true)
  eval      evaluate the workdir's newest checkpoint on the held-out split
  bench     time the train step: one JSON line (tokens/s, step_ms, compile_s, MFU, ...)
  plan      compile the train step ahead of time for a TPU slice (--topology v5p:2x2x1, libtpu's
            compiler) or --devices N (virtual) and report per-device memory, FLOPs, HBM traffic,
            collectives, a roofline, and whether it fits --accelerator (H100, TPU v5p, ...)
  generate  sample from the workdir's newest checkpoint: --prompt "..." [--max_new_tokens N] [--stop S]
  fewshot   few-shot accuracy against K: --task TEST.jsonl --train TRAIN.jsonl --shots 0,1,4
  summarize TL;DR summaries (and ROUGE against references): --input FILE.jsonl
  convert   Hugging Face BERT or GPT-2 in or out: --from_hf DIR (into --workdir) or --to_hf DIR (from --workdir)
  config    print the resolved config, one `key = value  # what it does` line per key

Without --config, `train` and `bench` use experiments/default.py (a small GPT on the
embedded corpus), or `train --workdir W` the config saved in W; `eval` and `generate` use
the config saved in the workdir.
Without --workdir a run writes to runs/<experiment> under the current folder.
"""

import argparse
import logging
import os
import sys

# The name help and errors call the program by: `ssl-jax` when run as the console script.
PROG = 'ssl-jax' if os.path.basename(sys.argv[0]) == 'ssl-jax' else 'run.py'

COMMANDS = ('train', 'finetune', 'prepare', 'eval', 'bench', 'plan', 'generate', 'convert', 'fewshot', 'summarize',
            'config')


# flag: (the commands that take it, argparse keywords, an example). --config, --workdir and
# --debug belong to every command; --config.KEY=VALUE overrides are read before argparse.
FLAGS = {
    '--steps': (('bench',), dict(type=int, default=None, help='timed steps'), '--steps 50'),
    '--profile': (('bench',), dict(default=None, help='write a jax.profiler trace of 3 steps to this folder'),
                  '--profile runs/trace'),
    '--prompt': (('generate',), dict(default='\n', help='the prompt'), '--prompt "ROMEO:"'),
    '--prompt_file': (('generate',), dict(default=None, help='a file of prompts, one a line'),
                      '--prompt_file prompts.txt'),
    '--max_new_tokens': (('generate',), dict(type=int, default=200, help='tokens to sample'), '--max_new_tokens 300'),
    '--temperature': (('generate',), dict(type=float, default=0.8, help='0 = greedy'), '--temperature 0'),
    '--top_k': (('generate',), dict(type=int, default=200, help='sample among the k likeliest'), '--top_k 40'),
    '--top_p': (('generate',), dict(type=float, default=1.0, help='sample among the likeliest tokens holding this '
                                    'much probability (1 = all)'), '--top_p 0.9'),
    '--stop': (('generate',), dict(action='append', default=[], help='cut the text at this string (repeatable; '
                                   '\\n for a newline)'), '--stop "\\n\\n"'),
    '--task': (('fewshot',), dict(default=None, help='the test JSONL (context, choices + label, or target)'),
               '--task data/sst2_test.jsonl'),
    '--train': (('fewshot',), dict(default=None, help='the JSONL the K examples are drawn from'),
                '--train data/sst2_train.jsonl'),
    '--shots': (('fewshot',), dict(default='0,1,4', help='the values of K, comma-separated'), '--shots 0,1,4,8'),
    '--input': (('summarize',), dict(default=None, help='JSONL of article (and reference)'), '--input articles.jsonl'),
    '--from_hf': (('convert',), dict(default=None, help='a Hugging Face BERT or GPT-2 directory to import'),
                  '--from_hf path/to/hf_bert'),
    '--to_hf': (('convert',), dict(default=None, help='a directory to export the workdir\'s BERT or GPT to'),
                '--to_hf out/hf_bert'),
    '--devices': (('plan',), dict(type=int, default=None, help='virtual devices to plan for (default: those present)'),
                  '--devices 1024'),
    '--accelerator': (('plan',), dict(default='', help='the device whose memory it must fit (H100, H200, B200, A100, '
                                      'A100-40GB, L4, TPU v4, TPU v5e, TPU v5p, TPU v6e, or e.g. 24GB; '
                                      'case-insensitive; default: the topology\'s chip, else H100)'),
                      '--accelerator h100'),
    '--topology': (('plan',), dict(default='', help='compile for this TPU slice with libtpu\'s compiler (needs pip '
                                   'install "jax[tpu]")'), '--topology v5p:2x2x1'),
    '--slices': (('plan',), dict(type=int, default=1, help='--topology slices joined over DCN'), '--slices 2'),
}
# What a flag of another command is spelled as here, where there is such a spelling.
AS_CONFIG = {'--steps': '--config.train.steps=N'}


def _description(command: str) -> str:
  """The command's lines of the module docstring."""
  lines = __doc__.split('\n')
  start = next(i for i, line in enumerate(lines) if line.startswith(f'  {command} '))
  text = [lines[start][len(command) + 2:].strip()]
  for line in lines[start + 1:]:
    if not line.startswith('            '):
      break
    text.append(line.strip())
  return ' '.join(text)


def command_parser(command: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=f'{PROG} {command}', description=_description(command),
                                   epilog='Any config key: --config.KEY=VALUE (e.g. --config.train.steps=500).')
  parser.add_argument('--config', default=None, help='experiments/FILE.py[:ARG] (e.g. --config experiments/bert.py:tiny)')
  parser.add_argument('--workdir', default=None, help='where checkpoints, metrics and plots go (e.g. --workdir runs/x)')
  parser.add_argument('--debug', action='store_true', help='show full tracebacks')
  for flag, (commands, kwargs, example) in FLAGS.items():
    if command in commands:
      parser.add_argument(flag, **{**kwargs, 'help': f'{kwargs["help"]} (e.g. {example})'})
  return parser


def parse(argv):
  """(flags, [(key, text), ...]): the command's flags, and the --config.KEY=VALUE overrides in order.

  Each command takes only its own flags: another command's is an error that names where it
  belongs (and the config key to use instead, where there is one)."""
  top = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n', 2)[2])
  top.add_argument('command', choices=COMMANDS)
  args = list(argv)
  if not args or args[0] not in COMMANDS:
    top.parse_args(args[:1] or ['--help'])      # --help, or the list of commands in an error
  command, args = args[0], args[1:]
  parser = command_parser(command)
  overrides, rest = [], []
  while args:
    a = args.pop(0)
    if a.startswith('--config.'):
      key, eq, value = a[len('--config.'):].partition('=')
      if not eq:
        if not args:
          parser.error(f'{a} needs a value')
        value = args.pop(0)
      overrides.append((key, value))
    else:
      rest.append(a)
  flags, unknown = parser.parse_known_args(rest)
  for token in unknown:
    name = token.split('=', 1)[0]
    owners = [c for c in COMMANDS if name in FLAGS and c in FLAGS[name][0]]
    if owners:
      instead = f'; for {command} use {AS_CONFIG[name]}' if name in AS_CONFIG and command != 'bench' else ''
      message = f'{name} is a flag of {" and ".join(owners)}, not of {command}{instead}'
    else:
      message = f'unrecognized argument {token!r} for {command} ({PROG} {command} --help lists its flags)'
    print(f'error: {message}', file=sys.stderr)
    sys.exit(1)
  for flag, (_, kwargs, _) in FLAGS.items():   # what cli.run reads for every command
    name = flag[2:]
    if not hasattr(flags, name):
      setattr(flags, name, kwargs['default'])
  flags.command = command
  return flags, overrides


def cpu_matmuls_through_onednn() -> None:
  """XLA:CPU flags measured to speed up our train steps (only the CPU backend reads them;
  set before JAX starts). Matrix products go to oneDNN instead of YNNPACK, which was faster
  for our steps (benchmarks/PERFORMANCE.md). XLA_FLAGS that already choose either library are kept."""
  flags = os.environ.get('XLA_FLAGS', '')
  if 'onednn_fusion_type' in flags or 'ynn_fusion_type' in flags:
    return
  os.environ['XLA_FLAGS'] = ' '.join(
      [flags, '--xla_cpu_experimental_onednn_fusion_type=dot', '--xla_cpu_experimental_ynn_fusion_type=']).strip()


def main(argv):
  flags, overrides = parse(argv)
  cpu_matmuls_through_onednn()
  if flags.command == 'plan' and flags.topology:   # libtpu compiles for the slice; this host runs on CPU
    os.environ['JAX_PLATFORMS'] = 'cpu'
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')   # else a second process fails on libtpu's lockfile
  elif flags.command == 'plan' and flags.devices:   # virtual CPU devices: set before JAX starts
    os.environ['JAX_PLATFORMS'] = 'cpu'
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               f' --xla_force_host_platform_device_count={flags.devices}').strip()
  from ssl_jax import cli, config as config_lib  # after parsing: importing jax is slow
  if not flags.debug:
    _no_tracebacks_but_ours()
  try:
    cli.run(flags.command, flags.config or os.path.join(config_lib.experiments_dir(), 'default.py'), overrides,
            config_given=flags.config is not None, workdir=flags.workdir, steps=flags.steps,
            prompt=flags.prompt, prompt_file=flags.prompt_file, max_new_tokens=flags.max_new_tokens,
            temperature=flags.temperature, top_k=flags.top_k, from_hf=flags.from_hf, to_hf=flags.to_hf,
            top_p=flags.top_p, stop=[s.replace('\\n', '\n') for s in flags.stop], task_file=flags.task,
            train_file=flags.train, shots=flags.shots, input_file=flags.input, devices=flags.devices,
            accelerator=flags.accelerator, profile=flags.profile, topology=flags.topology, slices=flags.slices)
  except Exception as e:  # pylint: disable=broad-except
    if flags.debug or not cli.is_user_error(e):
      raise
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


def _no_tracebacks_but_ours():
  """Without --debug, what library threads and loggers report (e.g. a checkpoint writer that
  failed, which the main thread then reports as an error) takes one line, not a traceback."""
  import threading  # pylint: disable=import-outside-toplevel

  def line(kind, value) -> str:
    text = str(value).strip().splitlines()
    return f'{kind.__name__}: {text[0] if text else ""}'[:300]

  main_hook = sys.excepthook

  def excepthook(kind, value, tb):
    if threading.current_thread() is threading.main_thread():
      main_hook(kind, value, tb)
    else:
      print(f'background thread: {line(kind, value)}', file=sys.stderr)

  class OneLine(logging.Filter):
    def filter(self, record):
      if record.exc_info and record.exc_info[0] is not None:
        record.msg, record.args = f'{record.getMessage()} ({line(*record.exc_info[:2])})', ()
        record.exc_info = record.exc_text = None
      return True

  sys.excepthook = excepthook
  threading.excepthook = lambda a: print(f'background thread: {line(a.exc_type, a.exc_value)}', file=sys.stderr)
  seen = set()

  def unraisablehook(u):   # once per kind of message: library callbacks repeat themselves
    if u.exc_type is not None and line(u.exc_type, u.exc_value) not in seen:
      seen.add(line(u.exc_type, u.exc_value))
      print(f'ignored: {line(u.exc_type, u.exc_value)}', file=sys.stderr)

  sys.unraisablehook = unraisablehook
  logging.basicConfig(format='%(levelname)s:%(name)s:%(message)s')
  for handler in logging.getLogger().handlers:
    handler.addFilter(OneLine())
  logging.getLogger('asyncio').setLevel(logging.CRITICAL)   # "exception was never retrieved": we did
  # gcsfs and google-auth warn on every new filesystem of a gs:// workdir that they tried the
  # metadata server or the bucket type first; a real failure still reaches us as an error.
  for name in ('gcsfs', 'google.auth', 'google.auth._default'):
    logging.getLogger(name).setLevel(logging.ERROR)



def entry() -> None:
  """`python run.py ...` and the `ssl-jax` console script."""
  try:
    main(sys.argv[1:])
  except SystemExit as e:
    if e.code == 1:   # a user error, reported: exit before library threads print at shutdown
      sys.stdout.flush()
      sys.stderr.flush()
      _leave_together()
      os._exit(1)
    raise


def _leave_together(timeout_s: int = 10) -> None:
  """On a multi-host job the hosts wait (briefly) for each other before a user error's exit:
  host 0 runs the coordination service, and its exit would end a host that has not yet
  printed why it stops (the same error, e.g. a workdir not shared)."""
  if 'jax' not in sys.modules:
    return
  try:
    from jax._src import distributed  # pylint: disable=import-outside-toplevel
    client = distributed.global_state.client
    if client is not None:
      client.wait_at_barrier('ssl_jax exit after an error', timeout_s * 1000)
  except Exception:  # pylint: disable=broad-except
    pass          # a host that is elsewhere (still training, or gone): leave anyway
