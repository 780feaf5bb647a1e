"""Colorization pretraining of a small ViT on CIFAR-sized images, on a CPU.

  python run.py train --config experiments/vit_colorize.py --config.data.path=../shared/data/cifar10/train \
      --config.data.eval_path=../shared/data/cifar10/test --workdir runs/vit_colorize
  python run.py eval --workdir runs/vit_colorize        # linear probe (probe_accuracy) on the grey images

The encoder (vit_mae's: 4 layers, 192 wide, patches of 4) sees each image in grey; a linear
head on every patch scores the 268 colour bins for each of the patch's four 2x2-pixel cells.
The run ends by writing colorizations.png (held-out images, in grey, and coloured by the model).
"""

from experiments import vit_mae


def get_config(arg=None):
  c = vit_mae.get_config(arg)
  c.experiment = 'vit_colorize' + (f'_{arg.replace("/", "_")}' if arg else '')
  c.task = 'colorize'
  c.model.family = 'colorizer'
  c.colorize.grid = 10.0
  c.colorize.sigma = 5.0
  c.colorize.rebalance = 0.5
  c.train.batch_size = 64     # the encoder reads all 64 patches (MAE's: 16), as vit_inpaint's
  c.train.steps = 700
  c.train.grad_clip = 1.0
  return c
