"""The default experiment: a small character-level GPT on the embedded corpus (offline, CPU, minutes).

  python run.py train
  python run.py train --config experiments/default.py --config.train.steps=200 --workdir runs/try
"""

from ssl_jax.config import base_config


def get_config(arg=None):
  del arg
  c = base_config()
  c.experiment = 'default'
  c.task = 'clm'
  c.model.family = 'gpt'
  c.model.size = 'gpt:baby'        # 4 x 128; its 64 positions grow to data.seq_len
  c.data.path = ''                 # the embedded corpus: the Python standard library's modules
  c.data.tokenizer = 'char'
  c.data.seq_len = 128
  c.train.batch_size = 16
  c.train.steps = 1500
  c.train.lr = 1e-3
  c.train.min_lr = 1e-4
  c.train.warmup_steps = 100
  c.train.b2 = 0.99
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  c.train.sample_prompt = 'def '
  return c
