"""BERT pretraining (masked LM + next-sentence prediction) at a named size: bert:tiny|mini|small|medium|base|large.

  python run.py train --config experiments/bert.py:tiny --config.data.path=../shared/data/ud_ewt/en_ewt-ud-dev.conllu
  python run.py train --config experiments/bert.py:base --config.data.path='corpus/*.txt'          # phase 1: length 128
  python run.py train --config experiments/bert.py:base,phase2 --config.init_from=runs/bert_base \
      --config.data.path='corpus/*.txt'                                                              # phase 2: length 512
  python run.py bench --config experiments/bert.py:mini --steps 10

Corpora: plain text (one sentence per line, a blank line between documents) or CoNLL-U
(`# newdoc`, `# text =`). The sentencepiece vocabulary ([UNK] [PAD] [CLS] [SEP] [MASK]
first) is trained on the corpus. The paper's optimiser: AdamW lr 1e-4, betas 0.9/0.999,
eps 1e-6, weight decay 0.01 (not on LayerNorm or biases), 10k warm-up steps then linear
decay, clipping at 1.0; 90% of steps at length 128, then 10% at 512 (phase2).
"""

from ssl_jax.config import base_config


def get_config(arg=None):
  name, _, phase = (arg or 'tiny').partition(',')
  size = name if name.startswith('bert:') else f'bert:{name}'
  c = base_config()
  c.experiment = 'bert_' + size.split(':')[1] + (f'_{phase}' if phase else '')
  c.task = 'mlm_nsp'
  c.model.family = 'bert'
  c.model.size = size                  # the shape, and 512 positions
  c.model.activation = 'gelu'
  c.model.dropout = 0.1
  c.data.tokenizer = 'sentencepiece'
  c.data.short_seq_prob = 0.1
  c.train.b1, c.train.b2, c.train.eps = 0.9, 0.999, 1e-6
  c.train.weight_decay = 0.01
  c.train.grad_clip = 1.0
  c.train.schedule = 'linear'
  c.train.min_lr = 0.0
  big = size in ('bert:base', 'bert:large')
  if big:                       # the paper's recipe
    c.model.vocab_size = 30522
    c.data.seq_len, c.data.max_predictions = (512, 80) if phase == 'phase2' else (128, 20)
    c.train.batch_size = 256
    c.train.steps = 100_000 if phase == 'phase2' else 900_000
    c.train.lr = 1e-4
    c.train.warmup_steps = 10_000
    c.train.eval_every = 10_000
  else:                         # small models on small corpora: a CPU in minutes
    c.model.vocab_size = 2000
    c.data.seq_len, c.data.max_predictions = (512, 80) if phase == 'phase2' else (128, 20)
    c.train.batch_size = 32
    c.train.steps = 2000
    c.train.lr = 1e-3
    c.train.warmup_steps = 200
    c.train.eval_every = 250
    c.train.eval_batches = 20
  c.train.checkpoint_every = c.train.eval_every
  c.train.sample_tokens = 0
  return c
