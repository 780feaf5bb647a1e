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


def test_a_resume_on_an_edited_corpus_is_refused_unless_asked(corpus, tmp_path):
  own = tmp_path / 'corpus.txt'
  own.write_text(open(corpus).read())
  workdir = str(tmp_path / 'w')
  args = ['train', *TINY, f'--config.data.path={own}', '--config.train.sample_tokens=0', '--workdir', workdir]
  run_cli(*args, '--config.train.steps=2')
  # A copy or a touch changes the cache's key but not one token: the run goes on.
  os.utime(own, (1_000_000_000, 1_000_000_000))
  run_cli(*args, '--config.train.steps=3')
  with open(own, 'a') as f:
    f.write('\nA line added between the restarts changes the batches the resumed run would see.\n')
  refused = run_cli(*args, '--config.train.steps=4', check=False)
  assert refused.returncode == 1, refused.stderr[-2000:]
  line = refused.stderr.strip().splitlines()[-1]
  assert line.startswith('error: data.path') and 'has changed since checkpoint 3' in line, line
  went_on = run_cli(*args, '--config.train.steps=4', '--config.data.resume_on_change=true')
  assert 'has changed since checkpoint 3' in went_on.stdout and 'going on' in went_on.stdout
