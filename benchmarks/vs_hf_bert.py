"""Side-by-side CPU pretraining throughput: our BERT train step vs Hugging Face's BertForPreTraining.

Run from the repository root (needs `pip install torch==2.13.0 'transformers>=4.57,<5'`):

    python benchmarks/vs_hf_bert.py --shape mini --rounds 3 --steps 5
    python benchmarks/vs_hf_bert.py --shape small --rounds 3 --steps 5

Shapes (the BERT issue's): 4 layers x 256 wide, 4 heads (`mini`) and 4 x 512, 8 heads
(`small`); batch 32 x 128 tokens, vocabulary 30,522, 20 masked positions a sequence,
dropout 0 on both sides, AdamW with clipping at 1.0. Ours computes the MLM head at the
masked positions only; BertForPreTraining projects every position onto the vocabulary.
Our side trains on real pairs from --data (UD English EWT by default); the peer on random
ids of the same shapes (its speed does not depend on the values).
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from side_by_side import alternate, report

REPO = Path(__file__).resolve().parent.parent
CORES = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
SHAPES = {'mini': dict(layers=4, heads=4, width=256), 'small': dict(layers=4, heads=8, width=512)}
BATCH, SEQ_LEN, VOCAB, PREDICTIONS = 32, 128, 30522, 20
DEFAULT_DATA = REPO.parent / 'shared' / 'data' / 'ud_ewt' / 'en_ewt-ud-dev.conllu'


def work_per_step(shape: str) -> dict:
  """FLOPs of one training step on each side, by the same count (ssl_jax/flops.py): both run
  the same body; our MLM head projects the 20 masked positions onto the vocabulary, theirs
  all 128."""
  sys.path.insert(0, str(REPO))
  from ssl_jax import config as config_lib, flops  # pylint: disable=import-outside-toplevel
  config = config_lib.load(f'experiments/bert.py:{shape}')
  config_lib.override(config, 'model.vocab_size', str(VOCAB))
  return {'ours': flops.encoder_train_flops(config, BATCH, SEQ_LEN, PREDICTIONS)[0],
          'transformers': flops.encoder_train_flops(config, BATCH, SEQ_LEN, SEQ_LEN)[0]}


def ours_command(args):
  return [sys.executable, 'run.py', 'bench', '--config', f'experiments/bert.py:{args.shape}',
          f'--config.data.path={args.data}', f'--config.model.vocab_size={VOCAB}', '--config.model.dropout=0.0',
          f'--config.train.batch_size={BATCH}', f'--config.data.seq_len={SEQ_LEN}',
          f'--config.data.max_predictions={PREDICTIONS}', '--config.data.short_seq_prob=0.0',
          '--steps', str(args.steps)]


def worker(args):
  """Times transformers' BertForPreTraining; prints one JSON line. Runs in its own process."""
  import torch
  from transformers import BertConfig, BertForPreTraining
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  s = SHAPES[args.shape]
  model = BertForPreTraining(BertConfig(
      vocab_size=VOCAB, hidden_size=s['width'], num_hidden_layers=s['layers'], num_attention_heads=s['heads'],
      intermediate_size=4 * s['width'], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
  ids = torch.randint(5, VOCAB, (BATCH, SEQ_LEN))
  labels = torch.full((BATCH, SEQ_LEN), -100)
  for row in range(BATCH):
    where = torch.randperm(SEQ_LEN - 2)[:PREDICTIONS] + 1
    labels[row, where] = ids[row, where]
  segments = (torch.arange(SEQ_LEN) >= SEQ_LEN // 2).long().expand(BATCH, -1)
  nsp = torch.randint(0, 2, (BATCH,))

  def step():
    out = model(input_ids=ids, token_type_ids=segments, attention_mask=torch.ones_like(ids), labels=labels,
                next_sentence_label=nsp)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out.loss

  for _ in range(args.warmup):
    step()
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - t0)
  total = sum(times)
  print(json.dumps({'model': 'transformers BertForPreTraining', 'params': sum(p.numel() for p in model.parameters()),
                    'threads': torch.get_num_threads(), 'batch': BATCH, 'seq_len': SEQ_LEN,
                    'tokens_per_sec': args.steps * BATCH * SEQ_LEN / total, 'step_ms': 1000 * total / args.steps,
                    'step_ms_median': 1000 * statistics.median(times), 'loss': loss.item()}))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--shape', choices=sorted(SHAPES), default='mini')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--steps', type=int, default=5, help='timed steps per run, both sides')
  p.add_argument('--warmup', type=int, default=2, help='untimed peer steps before the timed ones')
  p.add_argument('--threads', type=int, default=CORES)
  p.add_argument('--data', default=str(DEFAULT_DATA), help='our side\'s corpus (text or CoNLL-U)')
  p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main():
  args = parse_args()
  if args.worker:
    return worker(args)
  peer = [sys.executable, str(Path(__file__).resolve()), '--worker', '--shape', args.shape, '--steps',
          str(args.steps), '--warmup', str(args.warmup), '--threads', str(args.threads)]
  env = {**os.environ, 'JAX_PLATFORMS': os.environ.get('JAX_PLATFORMS', 'cpu')}
  print(f'shape {args.shape}: {SHAPES[args.shape]}, batch {BATCH} x {SEQ_LEN}, vocab {VOCAB}\n'
        f'ours: {" ".join(ours_command(args))}\npeer: {" ".join(peer)}', flush=True)
  med = alternate({'ours': (ours_command(args), env), 'transformers': (peer, None)}, args.rounds, str(REPO))
  report(med, 'transformers', args, work=work_per_step(args.shape))


if __name__ == '__main__':
  main()
