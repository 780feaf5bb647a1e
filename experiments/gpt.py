"""GPT at a named size: gpt:nano|baby|small, gpt1, gpt2:124M|350M|774M|1.5B, gpt3:125M ... gpt3:175B.

  python run.py train --config experiments/gpt.py:gpt:nano
  python run.py train --config experiments/gpt.py:gpt2:124M --config.data.path='corpus/*.txt' \
      --config.data.tokenizer=sentencepiece --config.model.vocab_size=50304
  python run.py bench --config experiments/gpt.py:gpt2:124M --steps 5

The vocabulary is 50,304 (GPT-2's 50,257 padded to a multiple of 128, so it divides a
tensor-parallel mesh); the context is the size's own. Without data.path the run trains
on the embedded corpus, character level (ids fit in the larger vocabulary).
"""

from ssl_jax.config import base_config
from ssl_jax.models import sizes


def get_config(arg=None):
  name = arg or 'gpt2:124M'
  c = base_config()
  c.experiment = 'gpt_' + name.replace(':', '_').replace('.', 'p')
  c.task = 'clm'
  c.model.family = 'gpt'
  c.model.size = name                  # the shape, its context and (past the CPU sizes) its vocabulary
  shape = sizes.decode(name)
  small = name.startswith('gpt:')
  c.model.dropout = 0.0 if small else 0.1
  c.model.scan_layers = shape['num_layers'] >= 32   # GPT-3 2.7B and up: compile one block, not dozens
  c.data.seq_len = shape['max_len']
  c.data.tokenizer = 'char'
  c.train.batch_size = 16 if small else 512
  c.train.steps = 2000 if small else 600_000
  c.train.lr = 1e-3 if small else 6e-4
  c.train.min_lr = c.train.lr / 10
  c.train.warmup_steps = 100 if small else 2000
  c.train.weight_decay = 0.1
  c.train.b2 = 0.95
  c.train.eval_every = 250 if small else 1000
  c.train.checkpoint_every = c.train.eval_every
  return c
