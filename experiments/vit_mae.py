"""Masked-patch inpainting (MAE) pretraining of a small ViT on CIFAR-sized images, on a CPU.

  python run.py train --config experiments/vit_mae.py --config.data.path=../shared/data/cifar10/train \
      --config.data.eval_path=../shared/data/cifar10/test
  python run.py train --config experiments/vit_mae.py:S/4        # a named encoder size (vit:S/4)
  python run.py bench --config experiments/vit_mae.py --steps 10

Without data.path it trains on crops of the photographs matplotlib ships (offline).
data.path / data.eval_path take an ImageFolder tree (<split>/<class>/<image>), a .npz of
images (and labels), or CIFAR-10's Python batch files. 75% of the patches of each image
hide; the encoder sees the rest; the loss is on the hidden patches' normalised pixels.
"""

from ssl_jax.config import base_config


def get_config(arg=None):
  c = base_config()
  c.experiment = 'vit_mae' + (f'_{arg.replace("/", "_")}' if arg else '')
  c.task = 'masked_image'
  c.model.family = 'mae'
  # A named encoder size; without one, a CPU-sized encoder: 4 layers, 192 wide, patches of 4 on 32x32 images.
  c.model.size = f'vit:{arg}' if arg else 'vit:mini/4'
  c.model.decoder_layers, c.model.decoder_heads, c.model.decoder_d_model = 2, 4, 128
  c.model.dropout = 0.0
  c.data.image_size = 32
  c.data.path = ''
  c.data.eval_fraction = 0.1
  c.train.batch_size = 128
  c.train.steps = 1000
  c.train.lr = 1.5e-3
  c.train.min_lr = 1e-5
  c.train.warmup_steps = 100
  c.train.b1, c.train.b2 = 0.9, 0.95
  c.train.weight_decay = 0.05
  c.train.grad_clip = 0.0
  c.train.eval_every = 250
  c.train.eval_batches = 4
  c.train.checkpoint_every = 250
  c.train.sample_tokens = 0
  return c
