"""Llama at a named size: llama:nano|baby (CPU), smollm:135M, llama3.2:1B, llama3:8B, llama3:70B.

  python run.py train --config experiments/llama.py:llama:baby
  python run.py plan --config experiments/llama.py:llama3:8B --topology v5p:2x2x2
  python run.py train --config experiments/llama.py:smollm:135M --config.data.path='corpus/*.txt' \
      --config.data.tokenizer=sentencepiece --config.model.vocab_size=49152

`model.size` decides the shape (layers, heads, kv heads, widths, vocabulary, rotary theta and
scaling); the shape keys stay 0 here. Without data.path the CPU sizes train on the embedded
corpus, character level, with GPT's CPU settings (experiments/gpt.py) so the two compare.
"""

from ssl_jax.config import base_config
from ssl_jax.models import sizes


def get_config(arg=None):
  name = arg or 'llama:baby'
  c = base_config()
  c.experiment = 'llama_' + name.replace(':', '_').replace('.', 'p')
  c.task = 'clm'
  c.model.family = 'llama'
  c.model.size = name                  # the shape, its context, vocabulary and rotary settings
  shape = sizes.decode(name)
  small = name.startswith('llama:')
  c.model.tie_embeddings = sizes.tied(name)
  c.model.bias = False                 # no biases (model.bias=true: q, k, v biases, Qwen2's)
  c.model.dropout = 0.0
  c.model.scan_layers = not small      # one compiled block, however deep
  c.model.remat = 'none' if small else 'full'
  c.data.seq_len = shape['max_len']
  c.data.tokenizer = 'char'
  c.train.batch_size = 16 if small else 512
  c.train.steps = 2000 if small else 500_000
  c.train.lr = 1e-3 if small else 3e-4
  c.train.min_lr = c.train.lr / 10
  c.train.warmup_steps = 100 if small else 2000
  c.train.weight_decay = 0.1
  c.train.b2 = 0.95
  c.train.eval_every = 250 if small else 1000
  c.train.checkpoint_every = c.train.eval_every
  return c
