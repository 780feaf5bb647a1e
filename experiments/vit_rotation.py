"""Rotation prediction pretraining of a small ViT on CIFAR-sized images, on a CPU.

  python run.py train --config experiments/vit_rotation.py --config.data.path=../shared/data/cifar10/train \
      --config.data.eval_path=../shared/data/cifar10/test
  python run.py eval --workdir runs/vit_rotation        # linear probe (probe_accuracy) on data.eval_path

Each image is turned by 0, 90, 180 or 270 degrees; the encoder's class token predicts which.
"""

from experiments import vit_mae


def get_config(arg=None):
  c = vit_mae.get_config(arg)
  c.experiment = 'vit_rotation' + (f'_{arg.replace("/", "_")}' if arg else '')
  c.task = 'rotation'
  c.model.family = 'vit_classifier'
  c.model.num_classes = 4
  c.train.lr = 1e-3
  c.train.weight_decay = 0.05
  c.train.grad_clip = 1.0
  return c
