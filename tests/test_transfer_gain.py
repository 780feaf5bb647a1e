"""benchmarks/transfer_gain.py on a tiny budget: the split keeps the held-out rows out of both
steps, the command ends with its JSON line, and a finished pretraining is reused."""

import importlib.util
import json
import os
import random
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = os.path.join(ROOT, 'benchmarks', 'transfer_gain.py')
TINY_PRETRAIN = ['model.num_layers=1', 'model.num_heads=2', 'model.d_model=32', 'model.d_ff=64',
                 'model.vocab_size=400', 'data.seq_len=32', 'data.max_predictions=5', 'train.batch_size=8',
                 'train.warmup_steps=1', 'train.eval_batches=2', 'train.log_every=1']
TINY_FINETUNE = ['data.seq_len=32', 'train.batch_size=8']


def load_script():
  spec = importlib.util.spec_from_file_location('transfer_gain', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def tiny_tsv(tmp_path_factory):
  """400 distinct labelled rows: a sentiment word decides the label."""
  rng = random.Random(0)
  good, bad = 'good fine great lovely moving'.split(), 'bad dull awful tedious flat'.split()
  filler = 'the film a story its cast plot and with this one was is very quite rather'.split()
  rows, seen = [], set()
  while len(rows) < 400:
    label = rng.randrange(2)
    words = rng.sample(filler, 5) + [rng.choice(good if label else bad)]
    rng.shuffle(words)
    text = ' '.join(words)
    if text not in seen:
      seen.add(text)
      rows.append(f'{text}\t{label}')
  path = tmp_path_factory.mktemp('tsv') / 'train.tsv'
  path.write_text('sentence\tlabel\n' + '\n'.join(rows) + '\n')
  return str(path)


def test_split_holds_out_the_tail_from_both_steps():
  tg = load_script()
  rows = [[f'sentence {i}', str(i % 2)] for i in range(200)]
  pretrain, labelled, held_out = tg.split_rows(rows, 50, 0.1)
  assert len(held_out) == 20 and held_out == rows[180:]
  assert labelled == rows[:50] and pretrain == rows[:180]
  texts = lambda part: {r[0] for r in part}
  assert not texts(held_out) & texts(pretrain) and not texts(held_out) & texts(labelled)
  eval_rows = [[f'other {i}', '0'] for i in range(5)]
  pretrain, labelled, held_out = tg.split_rows(rows, 50, 0.1, eval_rows)
  assert pretrain == rows and held_out == eval_rows and labelled == rows[:50]


def test_transfer_gain_end_to_end_and_reuse(tiny_tsv, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'tg')
  argv = ['--family', 'bert', '--train', tiny_tsv, '--labelled', '100', '--seeds', '1', '--pretrain-steps', '3',
          '--finetune-steps', '3', '--workdir', workdir]
  argv += [a for kv in TINY_PRETRAIN for a in ('--pretrain-config', kv)]
  argv += [a for kv in TINY_FINETUNE for a in ('--finetune-config', kv)]
  proc = subprocess.run([sys.executable, SCRIPT, *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result['family'] == 'bert' and result['labelled'] == 100 and result['held_out'] == 12
  for key in ('pretrained', 'random_init'):
    assert 0.0 <= result[key] <= 1.0
  assert result['gain'] == pytest.approx(100 * (result['pretrained'] - result['random_init']))
  assert [s['seed'] for s in result['seeds']] == [0] and result['pretrain_s'] > 0
  with open(os.path.join(workdir, 'transfer_gain.json')) as f:
    assert json.load(f) == result
  # What each step read: the held-out rows are in neither the pretraining text nor the labelled rows.
  with open(os.path.join(workdir, 'pretrain.txt')) as f:
    pretrain_text = set(f.read().splitlines())
  held_out = [line.split('\t')[0] for line in open(os.path.join(workdir, 'held_out.tsv')).read().splitlines()[1:]]
  labelled = [line.split('\t')[0] for line in open(os.path.join(workdir, 'labelled.tsv')).read().splitlines()[1:]]
  assert len(held_out) == 12 and len(labelled) == 100 and len(pretrain_text - {''}) == 388
  assert not set(held_out) & pretrain_text and not set(held_out) & set(labelled)
  # The random-init run started from nothing of the pretrained body, in its shape.
  log = open(os.path.join(workdir, 'finetune.log')).read()
  assert 'random init (seed 0) in the shape and tokenizer of init_from=' in log
  assert log.count('--config.train.lr=0.001') == 2, 'both fine-tunings at --finetune-lr'
  assert log.count('--config.finetune.pool=mean') == 2, 'both BERT fine-tunings on the mean'

  # A finished pretraining is reused: nothing is run again.
  tg = load_script()
  monkeypatch.setattr(tg, 'run', lambda *a, **k: pytest.fail('the finished pretraining ran again'))
  args = tg.parse_args(argv)
  body, seconds = tg.pretrain(args, os.path.join(workdir, 'pretrain.txt'))
  assert body == os.path.join(workdir, 'pretrain') and seconds == pytest.approx(result['pretrain_s'])


def test_the_learning_curve_is_a_png(tmp_path):
  tg = load_script()
  curve = [{'labelled': n, 'pretrained': 0.7 + n / 1e5, 'random_init': 0.6 + n / 1e5,
            'seeds': [{'seed': s, 'pretrained': 0.7 + s / 100, 'random_init': 0.6 - s / 100} for s in range(3)]}
           for n in (1000, 4000, 8000)]
  path = tmp_path / 'curve.png'
  tg.plot(curve, 'bert', str(path))
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  # --plot: several runs' transfer_gain.json side by side, a panel each (twice as wide).
  results = []
  for family in ('bert', 'gpt'):
    results.append(str(tmp_path / f'{family}.json'))
    with open(results[-1], 'w') as f:
      json.dump({'family': family, 'curve': curve}, f)
  both = tmp_path / 'both.png'
  proc = subprocess.run([sys.executable, SCRIPT, '--plot', *results, '--out', str(both)], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  width = lambda p: int.from_bytes(p.read_bytes()[16:20], 'big')     # the PNG header's width
  assert width(both) == 2 * width(path)
