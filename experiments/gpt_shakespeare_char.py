"""nanoGPT's shakespeare_char recipe: a character-level GPT on tinyshakespeare (first 90% train, last 10% eval).

  python run.py train --config experiments/gpt_shakespeare_char.py           # 6x384, block 256 (GPU-sized)
  python run.py train --config experiments/gpt_shakespeare_char.py:baby      # nanoGPT's CPU "baby GPT"
  python run.py bench --config experiments/gpt_shakespeare_char.py:baby --steps 50

The corpus is read from ../shared/data/tinyshakespeare/input.txt beside the repository
unless --config.data.path says otherwise.
"""

import os

from ssl_jax.config import base_config

CORPUS = os.path.normpath(os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data',
                                       'tinyshakespeare', 'input.txt'))


def get_config(arg=None):
  c = base_config()
  c.experiment = 'gpt_shakespeare_char' + (f'_{arg}' if arg else '')
  c.task = 'clm'
  c.model.family = 'gpt'
  c.data.path = CORPUS
  c.data.tokenizer = 'char'
  c.data.eval_fraction = 0.1
  c.train.lr = 1e-3
  c.train.min_lr = 1e-4
  c.train.warmup_steps = 100
  c.train.b2 = 0.99
  c.train.weight_decay = 0.1
  c.train.grad_clip = 1.0
  c.train.sample_prompt = '\n'
  c.model.bias = False             # nanoGPT's default: no biases in Linear or LayerNorm
  c.model.activation = 'gelu'      # nn.GELU(): the exact (erf) form
  c.train.sample_tokens = 300
  if arg in (None, '', 'full'):
    c.model.size = 'gpt:small'
    c.model.dropout = 0.2
    c.data.seq_len = 256
    c.train.batch_size = 64
    c.train.steps = 5000
    c.train.eval_every = 250
    c.train.eval_batches = 200
  elif arg == 'baby':
    c.model.size = 'gpt:baby'
    c.model.dropout = 0.0
    c.data.seq_len = 64
    c.train.batch_size = 12
    c.train.steps = 2000
    c.train.eval_every = 250
    c.train.eval_batches = 50
  else:
    raise ValueError(f'gpt_shakespeare_char: unknown variant {arg!r} (full, baby)')
  c.train.checkpoint_every = c.train.eval_every
  return c
