"""Does self-pretraining transfer? Pretrain on a labelled TSV's own text (labels removed), fine-tune
on its first labelled rows, and compare with the same model from random initialisation.

Run from the repository root:

    python benchmarks/transfer_gain.py --family bert --train ../shared/data/sst2/train.tsv
    python benchmarks/transfer_gain.py --family gpt --train ../shared/data/sst2/train.tsv --curve 1000,4000,8000

The training TSV (`text, label` with a header, as run.py finetune reads it) is split by row:
its last --held-out share (3%: SST-2's 2,021 of 67,349, as experiments/finetune_sst2.py holds
out) is the held-out set neither step sees, unless --eval FILE names another; the rest,
labels removed, is the pretraining text (WORKDIR/pretrain.txt, one sentence per line, a blank
line every 64); its first --labelled rows the fine-tuning rows. Pretraining is
experiments/selfpretrain.py:FAMILY in WORKDIR/pretrain (reused when it holds a checkpoint at
its final step; resumed when it holds an earlier one). Each seed fine-tunes twice with
experiments/finetune_sst2.py, the same budget, shape, tokenizer and --finetune-lr (1e-3,
chosen on a dev split; benchmarks/PERFORMANCE.md), a BERT's classifier on the mean of its
hidden states (--pool; MLM without NSP trains nothing on its [CLS] output): from the pretrained body,
and with --config.init=random (init_from's shape and tokenizer, fresh weights); a GPT with
GPT-1's auxiliary LM loss. The figure is held-out accuracy after the last step (no checkpoint
is chosen on the held-out set). Ends with one JSON line: family, pretrained and random_init
(means over seeds), gain (points), per-seed figures, pretrain_s; with --curve, the same at
each number of labelled rows and a PNG. The JSON is also WORKDIR/transfer_gain.json;
`--plot BERT_WORKDIR/transfer_gain.json GPT_WORKDIR/transfer_gain.json --out PNG` draws several
runs' curves side by side (the README's figure).
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES_PER_DOCUMENT = 64


def read_tsv(path):
  """(header, rows) of a TSV with a header; rows are lists of fields."""
  with open(path, newline='') as f:
    rows = list(csv.reader(f, delimiter='\t', quoting=csv.QUOTE_NONE))
  if len(rows) < 2:
    sys.exit(f'{path}: a header and at least one row expected')
  return rows[0], rows[1:]


def split_rows(rows, labelled: int, held_out_fraction: float, eval_rows=None):
  """(pretraining rows, labelled rows, held-out rows) of the training TSV's rows: the tail
  (held_out_fraction of them) is held out unless `eval_rows` are given; pretraining takes
  every other row, fine-tuning the first `labelled` of those."""
  if eval_rows is not None:
    pretrain, held_out = list(rows), list(eval_rows)
  else:
    cut = max(1, int(len(rows) * (1 - held_out_fraction)))
    pretrain, held_out = rows[:cut], rows[cut:]
  if not held_out:
    sys.exit('no held-out rows: give --eval FILE or a larger --held-out share')
  return pretrain, pretrain[:labelled], held_out


def write_files(workdir, header, pretrain, labelled, held_out):
  """WORKDIR/pretrain.txt (texts only), labelled.tsv and held_out.tsv; returns their paths."""
  os.makedirs(workdir, exist_ok=True)
  text_col = next(i for i, h in enumerate(header) if h.strip().lower() in ('text', 'sentence', 'sentence1', 'text_a'))
  paths = {name: os.path.join(workdir, name) for name in ('pretrain.txt', 'labelled.tsv', 'held_out.tsv')}
  lines = []
  for i, row in enumerate(pretrain):
    if i and i % SENTENCES_PER_DOCUMENT == 0:
      lines.append('')
    lines.append(' '.join(row[text_col].split()))
  write_if_changed(paths['pretrain.txt'], '\n'.join(lines) + '\n')
  for name, part in (('labelled.tsv', labelled), ('held_out.tsv', held_out)):
    write_if_changed(paths[name], '\n'.join('\t'.join(r) for r in [header] + part) + '\n')
  return paths


def write_if_changed(path, text):
  """Leaves an identical file alone, so a reused pretraining's corpus fingerprint holds."""
  if os.path.exists(path):
    with open(path) as f:
      if f.read() == text:
        return
  with open(path, 'w') as f:
    f.write(text)


def final_checkpoint(workdir, steps: int) -> bool:
  """Whether `workdir` holds a complete checkpoint at step `steps` (Orbax names a finished
  save by its step alone; one being written carries a temporary suffix)."""
  directory = os.path.join(workdir, 'checkpoints')
  return os.path.isdir(directory) and any(n.isdigit() and int(n) >= steps for n in os.listdir(directory))


def run(cmd, log_path):
  """Runs a run.py command from the repository root, its output to log_path; exits on failure."""
  with open(log_path, 'a') as log:
    log.write('$ ' + ' '.join(cmd) + '\n')
    log.flush()
    proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  if proc.returncode != 0:
    with open(log_path) as f:
      tail = f.read()[-3000:]
    sys.exit(f'failed (exit {proc.returncode}): {" ".join(cmd)}\n{tail}')


def pretrain(args, text_path):
  """(workdir, seconds): experiments/selfpretrain.py:FAMILY on text_path, or the finished one
  already in WORKDIR/pretrain (its recorded time)."""
  workdir = os.path.join(args.workdir, 'pretrain')
  record = os.path.join(workdir, 'pretrain.json')
  cmd = [sys.executable, 'run.py', 'train', '--config', f'experiments/selfpretrain.py:{args.family}',
         f'--config.data.path={text_path}', '--workdir', workdir] + [f'--config.{kv}' for kv in args.pretrain_config]
  if args.pretrain_steps:
    cmd.append(f'--config.train.steps={args.pretrain_steps}')
  steps = args.pretrain_steps or pretrain_steps(args.family)
  if final_checkpoint(workdir, steps) and os.path.exists(record):
    with open(record) as f:
      done = json.load(f)
    print(f'pretraining: reusing {workdir} (step {steps}, {done["pretrain_s"]:.0f} s)', flush=True)
    return workdir, done['pretrain_s']
  earlier = 0.0
  if os.path.exists(record):          # a resumed run: add the time already spent
    with open(record) as f:
      earlier = json.load(f).get('pretrain_s', 0.0)
  print(f'pretraining: {" ".join(cmd)}', flush=True)
  t = time.perf_counter()
  run(cmd, os.path.join(args.workdir, 'pretrain.log'))
  seconds = earlier + time.perf_counter() - t
  with open(record, 'w') as f:
    json.dump({'pretrain_s': seconds, 'steps': steps, 'command': cmd[1:]}, f)
  return workdir, seconds


def pretrain_steps(family: str) -> int:
  sys.path.insert(0, REPO)
  from ssl_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  return config_lib.load(os.path.join(REPO, 'experiments', 'selfpretrain.py') + f':{family}').train.steps


def finetune(args, body, paths, rows: int, seed: int, init: str) -> float:
  """Held-out accuracy after fine-tuning (init 'pretrained' or 'random') on the first `rows`."""
  workdir = os.path.join(args.workdir, f'finetune_{init}_{rows}_seed{seed}')
  subprocess.run(['rm', '-rf', workdir], check=True)
  cmd = [sys.executable, 'run.py', 'finetune', '--config', 'experiments/finetune_sst2.py',
         f'--config.init_from={body}', f'--config.data.path={paths["labelled.tsv"]}',
         f'--config.data.eval_path={paths["held_out.tsv"]}', f'--config.data.max_examples={rows}',
         f'--config.seed={seed}', '--config.train.eval_every=0', '--workdir', workdir]
  if init == 'random':
    cmd.append('--config.init=random')
  if args.finetune_steps:
    cmd += [f'--config.train.steps={args.finetune_steps}',
            f'--config.train.warmup_steps={max(1, args.finetune_steps // 10)}']
  cmd.append(f'--config.train.lr={args.finetune_lr}')
  if args.family == 'bert':
    cmd.append(f'--config.finetune.pool={args.pool}')
  cmd += [f'--config.{kv}' for kv in args.finetune_config]
  t = time.perf_counter()
  run(cmd, os.path.join(args.workdir, 'finetune.log'))
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f if line.strip()]
  accuracy = [r['eval_accuracy'] for r in records if 'eval_accuracy' in r][-1]
  print(f'fine-tuned {init:>10} rows {rows:>5} seed {seed}: held-out accuracy {accuracy:.4f} '
        f'({time.perf_counter() - t:.0f} s)', flush=True)
  return accuracy


def compare(args, body, paths, rows: int) -> dict:
  seeds = []
  for seed in range(args.seeds):
    seeds.append({'seed': seed, 'pretrained': finetune(args, body, paths, rows, seed, 'pretrained'),
                  'random_init': finetune(args, body, paths, rows, seed, 'random')})
  pretrained = statistics.mean(s['pretrained'] for s in seeds)
  random_init = statistics.mean(s['random_init'] for s in seeds)
  return {'labelled': rows, 'pretrained': pretrained, 'random_init': random_init,
          'gain': 100 * (pretrained - random_init), 'seeds': seeds}


def plot(curve, family, path):
  """One family's learning curve (held-out accuracy against labelled rows) as a PNG."""
  plot_families([{'family': family, 'curve': curve}], path)


def plot_families(results, path):
  """A panel per result (transfer_gain.json's), its curve or its one point, side by side."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.5), squeeze=False, sharey=True)
  for ax, result in zip(axes[0], results):
    curve = result.get('curve') or [result]
    x = [c['labelled'] for c in curve]
    for key, label, colour in (('pretrained', f'self-pretrained {result["family"].upper()}', 'C0'),
                               ('random_init', 'random init', 'C1')):
      ax.plot(x, [c[key] for c in curve], 'o-', color=colour, label=f'{label} (mean)')
      for c in curve:    # each seed
        ax.scatter([c['labelled']] * len(c['seeds']), [s[key] for s in c['seeds']], s=10, color=colour, alpha=0.4)
    ax.set_xscale('log')
    ax.minorticks_off()
    ax.set_xticks(x, [f'{v:,}' for v in x])
    ax.set_xlabel('labelled rows')
    ax.set_title(result['family'].upper())
    ax.legend()
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel('held-out accuracy')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--family', choices=('bert', 'gpt'))
  parser.add_argument('--train', help='labelled TSV (text, label) with a header')
  parser.add_argument('--eval', default='', help='held-out TSV (default: the tail of --train)')
  parser.add_argument('--held-out', type=float, default=0.03, help='share of --train held out without --eval')
  parser.add_argument('--labelled', type=int, default=8000, help='fine-tuning rows, from the front')
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--workdir', default='')
  parser.add_argument('--pretrain-steps', type=int, default=0, help='0: the experiment\'s')
  parser.add_argument('--finetune-steps', type=int, default=0, help='0: experiments/finetune_sst2.py\'s')
  parser.add_argument('--finetune-lr', type=float, default=1e-3,
                      help='both fine-tunings\' peak lr: 1e-3 was best for random init on a dev split '
                      '(benchmarks/PERFORMANCE.md); experiments/finetune_sst2.py\'s 1e-4 suits MiniLM')
  parser.add_argument('--pool', choices=('cls', 'mean'), default='mean',
                      help='BERT\'s classifier input, both fine-tunings: mean of the hidden states (a dev split '
                      'gave the MLM body 0.80 with it, 0.70 with [CLS], whose output MLM without NSP never trains) or cls')
  parser.add_argument('--pretrain-config', action='append', default=[], metavar='KEY=VALUE',
                      help='a config override of the pretraining (repeatable), e.g. model.vocab_size=500')
  parser.add_argument('--finetune-config', action='append', default=[], metavar='KEY=VALUE',
                      help='a config override of both fine-tunings (repeatable)')
  parser.add_argument('--curve', default='', help='also fine-tune at these numbers of labelled rows, e.g. '
                      '1000,4000,8000, and plot them (WORKDIR/transfer_curve.png)')
  parser.add_argument('--plot', nargs='+', default=[], metavar='RESULT.json',
                      help='instead of running: draw these runs\' WORKDIR/transfer_gain.json side by side '
                      '(--out PNG)')
  parser.add_argument('--out', default='transfer_curve.png', help='--plot\'s PNG')
  args = parser.parse_args(argv)
  if not args.plot and not (args.family and args.train):
    parser.error('--family and --train are required (or --plot RESULT.json ...)')
  args.workdir = os.path.abspath(args.workdir or os.path.join(REPO, 'runs', f'transfer_gain_{args.family}'))
  return args


def main(argv=None):
  args = parse_args(argv)
  if args.plot:
    results = []
    for path in args.plot:
      with open(path) as f:
        results.append(json.load(f))
    plot_families(results, args.out)
    print(args.out)
    return results
  header, rows = read_tsv(args.train)
  eval_rows = read_tsv(args.eval)[1] if args.eval else None
  pretrain_rows, labelled, held_out = split_rows(rows, args.labelled, args.held_out, eval_rows)
  paths = write_files(args.workdir, header, pretrain_rows, labelled, held_out)
  print(f'{len(pretrain_rows)} pretraining sentences, {len(labelled)} labelled rows, {len(held_out)} held out',
        flush=True)
  body, pretrain_s = pretrain(args, paths['pretrain.txt'])
  result = {'family': args.family, **compare(args, body, paths, len(labelled))}
  if args.curve:
    sizes = sorted({int(n) for n in args.curve.split(',')})
    curve = [result if n == len(labelled) else compare(args, body, paths, min(n, len(pretrain_rows))) for n in sizes]
    result['curve'] = [{k: c[k] for k in ('labelled', 'pretrained', 'random_init', 'gain', 'seeds')} for c in curve]
    result['curve_png'] = os.path.join(args.workdir, 'transfer_curve.png')
    plot(curve, args.family, result['curve_png'])
  result.update({'pretrain_s': pretrain_s, 'held_out': len(held_out), 'pretraining_sentences': len(pretrain_rows),
                 'workdir': args.workdir})
  with open(os.path.join(args.workdir, 'transfer_gain.json'), 'w') as f:
    json.dump(result, f)
  print(json.dumps(result), flush=True)
  return result


if __name__ == '__main__':
  main()
