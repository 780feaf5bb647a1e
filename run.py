"""ssl_jax command line: python run.py COMMAND [--config experiments/FILE.py[:ARG]] [--config.KEY=VALUE ...] [--workdir DIR]

Commands:
  train     train (resuming from the workdir's newest checkpoint), evaluate, sample
  eval      evaluate the workdir's newest checkpoint on the held-out split
  bench     time the train step: one JSON line (tokens/s, step_ms, compile_s, MFU, ...)
  generate  sample from the workdir's newest checkpoint: --prompt "..." [--max_new_tokens N]

Without --config, `train` and `bench` use experiments/default.py (a small GPT on the
embedded corpus); `eval` and `generate` use the config saved in the workdir.
Without --workdir a run writes to runs/<experiment> under the current folder.
"""

import os
import sys

from absl import app, flags, logging as absl_logging
from ml_collections import config_flags

HERE = os.path.dirname(os.path.abspath(__file__))
COMMANDS = ('train', 'eval', 'bench', 'generate')

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(HERE, 'experiments', 'default.py'), 'experiment file[:arg]', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'where checkpoints, metrics and plots go')
_STEPS = flags.DEFINE_integer('steps', None, 'bench: timed steps (bench.steps)')
_PROMPT = flags.DEFINE_string('prompt', '\n', 'generate: the prompt')
_PROMPT_FILE = flags.DEFINE_string('prompt_file', None, 'generate: a file of prompts, one a line')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 200, 'generate: tokens to sample')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.8, 'generate: 0 = greedy')
_TOP_K = flags.DEFINE_integer('top_k', 200, 'generate: sample among the k likeliest')
_DEBUG = flags.DEFINE_bool('debug', False, 'show full tracebacks')


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f'usage: run.py {{{",".join(COMMANDS)}}} [--config FILE[:ARG]] [--workdir DIR]; got {argv[1:]}')
  command = argv[1]
  absl_logging.set_verbosity(absl_logging.WARNING)
  from ssl_jax import cli  # after flag parsing: importing jax is slow
  try:
    cli.run(command, _CONFIG.value, config_given=flags.FLAGS['config'].present, workdir=_WORKDIR.value,
            steps=_STEPS.value, prompt=_PROMPT.value, prompt_file=_PROMPT_FILE.value,
            max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value)
  except Exception as e:  # pylint: disable=broad-except
    if _DEBUG.value or not cli.is_user_error(e):
      raise
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
