"""Extractive question answering (SQuAD v1.1 or v2.0 JSON) fine-tuned from a pretrained encoder.

  python run.py finetune --config experiments/finetune_qa.py --config.init_from=runs/minilm \
      --config.data.path=train-v1.1.json --config.data.eval_path=dev-v1.1.json --workdir runs/qa

Long contexts are cut into windows of data.seq_len tokens, span_qa.doc_stride apart;
answers are decoded as the best span of at most span_qa.max_answer_len tokens over all of
a question's windows, mapped back to the context's characters; metrics exact_match and f1.
"""

from experiments import finetune_sst2


def get_config(arg=None):
  c = finetune_sst2.get_config(arg)
  c.experiment = 'finetune_qa'
  c.task = 'span_qa'
  c.model.family = 'bert_qa'
  c.data.seq_len = 256
  c.data.eval_fraction = 0.1
  c.data.max_examples = 0
  c.train.batch_size = 16
  c.train.steps = 1000
  c.train.lr = 5e-5
  c.train.warmup_steps = 100
  c.train.eval_every = 250
  return c
