"""ssl_jax command line: python run.py COMMAND [--config experiments/FILE.py[:ARG]] [--config.KEY=VALUE ...] [--workdir DIR]

`python run.py COMMAND --help` lists a command's flags; the commands and their flags live in
ssl_jax/command_line.py (the `ssl-jax` console script of `pip install .` is the same program).
"""

from ssl_jax.command_line import cpu_matmuls_through_onednn, entry, main, parse  # pylint: disable=unused-import

if __name__ == '__main__':
  entry()
