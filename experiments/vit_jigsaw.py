"""Jigsaw-puzzle pretraining of a small ViT on CIFAR-sized images, on a CPU.

  python run.py train --config experiments/vit_jigsaw.py --config.data.path=../shared/data/cifar10/train \
      --config.data.eval_path=../shared/data/cifar10/test --workdir runs/vit_jigsaw
  python run.py eval --workdir runs/vit_jigsaw                  # linear probe (probe_accuracy)
  python run.py eval --workdir runs/vit_jigsaw --config experiments/vit_jigsaw.py \
      --config.data.path=../shared/data/cifar10/train --config.data.eval_path=../shared/data/cifar10/test \
      --config.init=random                                      # the same probe, untrained encoder

Each image is cut into a 3x3 grid of 8x8 tiles (each at a random spot in its 10x10 cell),
shuffled by one of jigsaw.num_permutations orders; one encoder reads every tile, an MLP on the
nine features names the order. jigsaw.png in the workdir shows puzzles and the model's solutions.
"""

from experiments import vit_mae
from ssl_jax.models import sizes


def get_config(arg=None):
  c = vit_mae.get_config(arg)
  c.experiment = 'vit_jigsaw' + (f'_{arg.replace("/", "_")}' if arg else '')
  c.task = 'jigsaw'
  c.model.family = 'jigsaw'
  if not arg:   # narrower and shallower than vit_mae's: nine tiles per image, and 15 minutes on a CPU
    c.model.size = 'vit:nano/4'
  c.jigsaw.tile_size = 2 * sizes.decode(c.model.size)['patch']
  c.jigsaw.num_permutations = 100
  c.jigsaw.hidden = 1024
  c.train.steps = 2500
  c.train.warmup_steps = 100
  c.train.lr = 1e-3
  c.train.weight_decay = 0.05
  c.train.grad_clip = 1.0
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  return c
