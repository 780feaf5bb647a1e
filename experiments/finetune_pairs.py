"""Sentence-pair classification (`[CLS] A [SEP] B [SEP]`, e.g. entailment or paraphrase) from a
pretrained encoder, on a CPU.

  python run.py finetune --config experiments/finetune_pairs.py --config.init_from=runs/minilm \
      --config.data.path=pairs_train.tsv --config.data.eval_path=pairs_dev.tsv --workdir runs/pairs

data.path is a TSV whose header names `text`, `text_b` and `label` columns (GLUE's
`sentence1`/`sentence2` are read too); the longer of a pair is truncated first.
"""

from experiments import finetune_sst2


def get_config(arg=None):
  c = finetune_sst2.get_config(arg)
  c.experiment = 'finetune_pairs'
  c.data.seq_len = 128
  c.data.eval_fraction = 0.1
  c.data.max_examples = 0
  c.train.batch_size = 16
  c.train.steps = 1000
  c.train.lr = 5e-5
  c.train.warmup_steps = 100
  c.train.eval_every = 250
  return c
