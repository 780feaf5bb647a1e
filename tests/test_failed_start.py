"""A run that fails at its start (data too short, a model that does not fit it) leaves its
workdir as it was: the next run with the right data starts clean."""

import os

from conftest import TINY, run_cli


def test_a_failed_start_does_not_poison_the_workdir(corpus, tmp_path):
  short = tmp_path / 'short.txt'
  short.write_text('abcdefg\n')
  workdir = str(tmp_path / 'w')
  args = ['train', *TINY, '--config.train.steps=1', '--config.train.sample_tokens=0', '--workdir', workdir]
  failed = run_cli(*args, f'--config.data.path={short}', check=False)
  assert failed.returncode == 1 and 'shorter than one sequence' in failed.stderr, failed.stderr[-2000:]
  assert not {'tokenizer.json', 'cache', 'config.json'} & set(os.listdir(workdir))
  # The run with the corpus it was meant to have: its own tokenizer, not the short file's.
  run_cli(*args, f'--config.data.path={corpus}')
  assert 'checkpoints' in os.listdir(workdir)
