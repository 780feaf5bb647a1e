"""Rotation prediction pretraining of a small ViT on CIFAR-sized images, on a CPU.

  python run.py train --config experiments/vit_rotation.py --config.data.path=../shared/data/cifar10/train \
      --config.data.eval_path=../shared/data/cifar10/test
  python run.py eval --workdir runs/vit_rotation        # linear probe (probe_accuracy) on data.eval_path

Every image of a batch of 16 is shown in all four turns (0, 90, 180, 270 degrees: 64 examples
a step, Gidaris et al.'s setting); the encoder's class token predicts the turn. The encoder is
narrower than vit_mae's (4 layers, 128 wide) so that 1,600 steps fit 15 minutes on a CPU.
"""

from experiments import vit_mae


def get_config(arg=None):
  c = vit_mae.get_config(arg)
  c.experiment = 'vit_rotation' + (f'_{arg.replace("/", "_")}' if arg else '')
  c.task = 'rotation'
  c.model.family = 'vit_classifier'
  c.model.num_classes = 4
  c.rotation.all_turns = True
  if not arg:
    c.model.size = 'vit:micro/4'
  c.train.batch_size = 16     # images; the step sees each in four turns
  c.train.steps = 1600
  c.train.eval_every = 400
  c.train.lr = 1e-3
  c.train.weight_decay = 0.05
  c.train.grad_clip = 1.0
  return c
