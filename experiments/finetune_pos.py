"""Part-of-speech tagging (17 universal tags) fine-tuned from a pretrained encoder, on a CPU.

  python run.py finetune --config experiments/finetune_pos.py --config.init_from=runs/minilm \
      --config.data.path=../shared/data/ud_ewt/en_ewt-ud-dev.conllu --workdir runs/pos

Without data.eval_path the last 20% of the sentences are held out. Each word's tag is
predicted on its first sub-word; metrics: token_accuracy (over words) and macro f1.
"""

from experiments import finetune_sst2


def get_config(arg=None):
  c = finetune_sst2.get_config(arg)
  c.experiment = 'finetune_pos'
  c.task = 'tag'
  c.model.family = 'bert_tagger'
  c.data.seq_len = 128
  c.data.eval_fraction = 0.2
  c.data.max_examples = 0
  c.train.batch_size = 16
  c.train.steps = 500                   # 5 epochs of 1,600 sentences
  c.train.lr = 1e-4
  c.train.eval_every = 100
  return c
