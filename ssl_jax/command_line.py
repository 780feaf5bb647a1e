"""ssl_jax command line: python run.py COMMAND [--config experiments/FILE.py[:ARG]] [--config.KEY=VALUE ...] [--workdir DIR]
(or `ssl-jax COMMAND ...` once installed with pip)

Commands (`COMMAND --help` lists a command's own flags):
{commands}

Without --config, `train` and `bench` use experiments/default.py (a small GPT on the
embedded corpus), or `train --workdir W` the config saved in W; `eval` and `generate` use
the config saved in the workdir.
Without --workdir a run writes to runs/<experiment> under the current folder.
"""

import argparse
import logging
import os
import sys
import textwrap

from ssl_jax import cli, config as config_lib   # the commands' table and experiments (neither loads JAX)

# The name help and errors call the program by: `ssl-jax` when run as the console script.
PROG = 'ssl-jax' if os.path.basename(sys.argv[0]) == 'ssl-jax' else 'run.py'

def _usage() -> str:
  """The module docstring with the table's commands filled in."""
  lines = [textwrap.fill(c.about, 100, initial_indent=f'  {c.name:<9} ', subsequent_indent=' ' * 12,
                         break_on_hyphens=False) for c in cli.COMMANDS.values()]
  return __doc__.format(commands='\n'.join(lines))


def command_parser(command: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=f'{PROG} {command}', description=cli.COMMANDS[command].about,
                                   epilog='Any config key: --config.KEY=VALUE (e.g. --config.train.steps=500).')
  parser.add_argument('--config', default=None, help='experiments/FILE.py[:ARG] (e.g. --config experiments/bert.py:tiny)')
  parser.add_argument('--workdir', default=None, help='where checkpoints, metrics and plots go (e.g. --workdir runs/x)')
  parser.add_argument('--debug', action='store_true', help='show full tracebacks')
  for flag in cli.COMMANDS[command].flags:
    flag.add_to(parser)
  return parser


def parse(argv):
  """(flags, [(key, text), ...]): the command's flags, and the --config.KEY=VALUE overrides in order.

  Each command takes only its own flags: another command's is an error that names where it
  belongs (and the config key to use instead, where there is one)."""
  usage = _usage()
  top = argparse.ArgumentParser(prog=PROG, description=usage.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=usage.split('\n', 2)[2])
  top.add_argument('command', choices=cli.COMMANDS)
  args = list(argv)
  if not args or args[0] not in cli.COMMANDS:
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
    owners = {c.name: f for c in cli.COMMANDS.values() for f in c.flags if f.name == name}
    if owners:
      spelled = [f.as_config for f in owners.values() if f.as_config]
      instead = f'; for {command} use {spelled[0]}' if spelled else ''
      message = f'{name} is a flag of {" and ".join(owners)}, not of {command}{instead}'
    else:
      message = f'unrecognized argument {token!r} for {command} ({PROG} {command} --help lists its flags)'
    print(f'error: {message}', file=sys.stderr)
    sys.exit(1)
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
  if not flags.debug:
    _no_tracebacks_but_ours()
  try:
    cli.run(flags.command, flags.config or os.path.join(config_lib.experiments_dir(), 'default.py'), overrides,
            config_given=flags.config is not None, workdir=flags.workdir,
            **{f.key: getattr(flags, f.key) for f in cli.COMMANDS[flags.command].flags})
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
