"""Self-pretraining (Krishna et al. 2022): pretrain on a downstream task's own training text,
labels removed, then fine-tune on its labels. `bert` (masked LM) and `gpt` (next-token
prediction), of about the same parameter count, sized for ~40 minutes on 2 CPU cores.

  python benchmarks/transfer_gain.py --family bert --train ../shared/data/sst2/train.tsv   # the whole comparison
  python run.py train --config experiments/selfpretrain.py:bert --config.data.path=TEXT --workdir runs/sp_bert
  python run.py finetune --config experiments/finetune_sst2.py --config.init_from=runs/sp_bert \
      --config.train.lr=1e-3 --config.finetune.pool=mean \
      --config.data.path=LABELLED.tsv --config.data.eval_path=HELD_OUT.tsv --workdir runs/sp_bert_sst2

(transfer_gain.py fine-tunes so: at lr 1e-3, the best for random init on a dev split, and a
BERT on the mean of its hidden states, since MLM without NSP trains nothing on [CLS]'s output.)

TEXT is plain text, one sentence per line (benchmarks/transfer_gain.py writes SST-2's training
sentences so, a blank line every 64 of them, leaving out its held-out tail); the last 2% of
its documents are the pretraining's own held-out text.

Next-sentence prediction is off (mlm_nsp.nsp=false): SST-2's rows are unrelated single
sentences and phrases, so no sentence has a "next" one; an IsNext pair would be two random
rows, exactly as a NotNext pair, and the head would learn nothing but noise. An example is
`[CLS] sentences [SEP]`, consecutive rows up to data.seq_len (RoBERTa's FULL-SENTENCES,
which also found NSP unnecessary).

Shape: 4 layers of width 128, 4 heads, MLP 512, 8,000 sentencepiece pieces (the shape
experiments/finetune_sst2.py trains from scratch), both families: 1.83M parameters for GPT,
1.87M for BERT (its pooler, MLM transform and segment embeddings). Length 64 (SST-2's rows
are ~12 pieces; fine-tuning reads 64), batch 64. Steps: ~37 minutes each at the step times
measured on a 2-core CPU (benchmarks/PERFORMANCE.md); GPT's are fewer, its 8,000-way softmax
at every position costing more than its blocks.
"""

from ssl_jax.config import base_config

STEPS = {'bert': 3600, 'gpt': 2000}


def get_config(arg=None):
  family = arg or 'bert'
  if family not in STEPS:
    raise ValueError(f'experiments/selfpretrain.py:{family}: expected bert or gpt')
  c = base_config()
  c.experiment = f'selfpretrain_{family}'
  c.model.family = family
  c.model.num_layers, c.model.num_heads, c.model.d_model, c.model.d_ff = 4, 4, 128, 512
  c.model.vocab_size = 8000
  c.model.dropout = 0.1
  c.data.tokenizer = 'sentencepiece'
  c.data.seq_len = 64
  c.data.eval_fraction = 0.02
  c.train.batch_size = 64
  c.train.steps = STEPS[family]
  c.train.warmup_steps = 200
  c.train.weight_decay = 0.01
  c.train.grad_clip = 1.0
  c.train.eval_every = 500
  c.train.eval_batches = 10
  c.train.checkpoint_every = 500
  c.train.log_every = 10
  c.train.sample_tokens = 0
  if family == 'bert':
    c.task = 'mlm_nsp'
    c.mlm_nsp.nsp = False
    c.model.activation = 'gelu'
    c.data.max_predictions = 10          # 15% of 64
    c.data.short_seq_prob = 0.1
    c.train.lr = 1e-3
    c.train.schedule = 'linear'
    c.train.min_lr = 0.0
    c.train.b1, c.train.b2, c.train.eps = 0.9, 0.999, 1e-6
  else:
    c.task = 'clm'
    c.train.lr = 1e-3
    c.train.min_lr = 1e-4
    c.train.b2 = 0.95
  return c
