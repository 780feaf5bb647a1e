"""Sentiment classification (SST-2) fine-tuned from a pretrained encoder or decoder, on a CPU.

  python run.py convert --from_hf DIR_OF_MINILM --workdir runs/minilm     # or name DIR directly below
  python run.py finetune --config experiments/finetune_sst2.py --config.init_from=runs/minilm \
      --config.data.path=../shared/data/sst2/train.tsv --workdir runs/sst2

The body comes from `init_from` (a Hugging Face BERT directory, a `convert` output, or one
of our workdirs: a BERT gets a classifier on its pooled [CLS] vector, a GPT GPT-1's head on
its last token plus an auxiliary LM loss). Without data.eval_path the last 3% of data.path
(2,021 rows of SST-2's 67,349) is held out; training uses the first data.max_examples rows.
--config.finetune.freeze=-1 trains the head alone (a linear probe).
"""

from ssl_jax.config import base_config


def get_config(arg=None):
  del arg
  c = base_config()
  c.experiment = 'finetune_sst2'
  c.task = 'classify'
  c.model.family = 'bert_classifier'    # set from init_from's family when given
  c.model.dropout = 0.1
  c.model.activation = 'gelu'
  c.model.num_layers, c.model.num_heads, c.model.d_model, c.model.d_ff = 4, 4, 128, 512   # from scratch only
  c.model.vocab_size = 8000             # from scratch only: the sentencepiece vocabulary
  c.model.max_len = 128
  c.data.tokenizer = 'sentencepiece'    # from scratch only; a pretrained body brings its own
  c.data.seq_len = 64
  c.data.eval_fraction = 0.03
  c.data.max_examples = 8000
  c.train.batch_size = 32
  c.train.steps = 500                   # 2 epochs of 8,000 rows
  c.train.lr = 1e-4
  c.train.min_lr = 0.0
  c.train.schedule = 'linear'
  c.train.warmup_steps = 50
  c.train.weight_decay = 0.01
  c.train.b2 = 0.999
  c.train.grad_clip = 1.0
  c.train.eval_every = 125
  c.train.eval_batches = 0              # the whole held-out split
  c.train.checkpoint_every = 250
  c.train.keep_checkpoints = 1
  c.train.sample_tokens = 0
  c.train.log_every = 10
  return c
