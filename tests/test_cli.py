"""One tiny end-to-end run of each command through run.py."""

import os

from conftest import TINY, last_json_line, read_metrics, run_cli


def test_train_then_eval_then_generate(tmp_path, corpus):
  workdir = str(tmp_path / 'run')
  proc = run_cli('train', '--config.data.path=' + corpus, *TINY, '--config.train.steps=12',
                 '--config.train.eval_every=6', '--config.train.checkpoint_every=6', '--workdir', workdir)
  assert '--- sample' in proc.stdout                       # a decoder prints a sample at the end
  # stderr is a pipe here, as in a cluster's log: a plain line a logged step, no bar redraws
  assert 'step 12/12  loss ' in proc.stderr and '\r' not in proc.stderr
  assert 'backend cpu, 1 cpu device (mesh data=1 fsdp=1 tensor=1); kernels cpu' in proc.stderr
  assert 'fresh start (random init, seed 0)' in proc.stderr
  for name in ('metrics.jsonl', 'loss.png', 'config.json', 'tokenizer.json'):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['12', '6']
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))
  records = read_metrics(workdir)
  assert [r['step'] for r in records] == list(range(1, 13))
  assert all('train_loss' in r for r in records)
  evals = [r for r in records if 'eval_loss' in r]
  assert [r['step'] for r in evals] == [6, 12]
  assert records[-1]['train_loss'] < records[0]['train_loss']
  times = [r['time'] for r in records]   # seconds since the run began
  assert times == sorted(times) and 0 < times[0] < times[-1]

  result = last_json_line(run_cli('eval', '--workdir', workdir).stdout)
  assert result['step'] == 12 and abs(result['eval_loss'] - evals[-1]['eval_loss']) < 1e-5

  out = run_cli('generate', '--workdir', workdir, '--prompt', 'KING', '--max_new_tokens', '10',
                '--temperature', '0').stdout
  # The greedy continuation the Python API decodes from the same checkpoint, 10 characters.
  import ssl_jax  # pylint: disable=import-outside-toplevel
  continuation = ssl_jax.load(workdir).generate('KING', max_new_tokens=10, temperature=0.0)
  assert len(continuation) == 10 and 'KING' + continuation in out


def test_bench_prints_the_contract_json_line(corpus, tmp_path):
  proc = run_cli('bench', '--config.data.path=' + corpus, *TINY, '--steps', '3', '--profile', str(tmp_path / 'p'))
  result = last_json_line(proc.stdout)
  for key in ('model', 'params', 'devices', 'batch', 'seq_len', 'tokens_per_sec', 'step_ms', 'compile_s',
              'flops_per_step', 'peak_flops', 'mfu'):
    assert key in result, key
  assert result['batch'] == 8 and result['seq_len'] == 32 and result['devices'] == 1
  assert result['tokens_per_sec'] > 0 and 0 < result['mfu'] < 1
  assert result['flops_per_step'] > 6 * result['params'] * 8 * 32 * 0.5
  assert result['input_batches_per_sec'] > 0 and result['input_headroom'] > 0
  traces = [f for _, _, files in os.walk(tmp_path / 'p') for f in files if f.endswith('.xplane.pb')]
  assert traces and result['profile'] == str(tmp_path / 'p')                  # a trace TensorBoard opens


def test_named_size_experiment_runs_on_the_embedded_corpus(tmp_path):
  proc = run_cli('bench', '--config', 'experiments/gpt.py:gpt:nano', '--config.train.batch_size=4',
                 '--config.data.seq_len=32', '--steps', '2', '--workdir', str(tmp_path))
  result = last_json_line(proc.stdout)
  assert result['model'] == 'gpt:nano' and result['seq_len'] == 32


def test_missing_corpus_is_a_one_line_error(tmp_path):
  proc = run_cli('train', '--config.data.path=' + str(tmp_path / 'nope.txt'), '--workdir', str(tmp_path / 'w'),
                 check=False)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith('error: data.path: no file matches')
  assert 'Traceback' not in proc.stderr


def test_each_command_takes_only_its_own_flags():
  proc = run_cli('train', '--steps', '5', check=False)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == ('error: --steps is a flag of bench, not of train; '
                                                  'for train use --config.train.steps=N')
  proc = run_cli('eval', '--prompt', 'x', check=False)
  assert proc.returncode == 1 and 'error: --prompt is a flag of generate, not of eval' in proc.stderr
  proc = run_cli('generate', '--promt', 'x', check=False)
  assert proc.returncode == 1 and "unrecognized argument '--promt' for generate" in proc.stderr
  train_help, bench_help = run_cli('train', '--help').stdout, run_cli('bench', '--help').stdout
  assert '--steps' in bench_help and '--steps' not in train_help
  assert 'e.g. --steps 50' in bench_help and train_help.startswith('usage: run.py train')
  plan_help = run_cli('plan', '--help').stdout
  assert all(f in plan_help for f in ('--topology', '--slices', '--devices', '--accelerator'))
  assert '--prompt' not in plan_help
