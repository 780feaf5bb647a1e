"""Image classification fine-tuned from a pretrained ViT (MAE, rotation or jigsaw), on a CPU.

  python run.py train --config experiments/vit_mae.py --config.data.path=../shared/data/cifar10/train --workdir runs/mae
  python run.py finetune --config experiments/finetune_images.py --config.init_from=runs/mae \
      --config.data.path=../shared/data/cifar10/train --config.data.eval_path=../shared/data/cifar10/test

The encoder (and its patch size and image size) comes from `init_from`; a fresh linear
head reads its class token. --config.finetune.freeze=-1 trains the head alone. Metric:
`accuracy` over every held-out image.
"""

from ssl_jax.config import base_config


def get_config(arg=None):
  del arg
  c = base_config()
  c.experiment = 'finetune_images'
  c.task = 'classify'
  c.model.family = 'vit_classifier'
  c.model.size = 'vit:mini/4'          # from scratch only: a pretrained encoder brings its own shape
  c.model.dropout = 0.1
  c.data.image_size = 32
  c.data.eval_fraction = 0.1
  c.train.batch_size = 128
  c.train.steps = 500
  c.train.lr = 1e-3
  c.train.min_lr = 1e-5
  c.train.warmup_steps = 50
  c.train.weight_decay = 0.05
  c.train.b2 = 0.999
  c.train.eval_every = 100
  c.train.eval_batches = 0              # every held-out image
  c.train.checkpoint_every = 250
  c.train.keep_checkpoints = 1
  c.train.sample_tokens = 0
  c.train.log_every = 10
  return c
