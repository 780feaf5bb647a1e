"""Context-encoder (centre inpainting) pretraining of a small ViT on CIFAR-sized images, on a CPU.

  python run.py train --config experiments/vit_inpaint.py --config.data.path=../shared/data/cifar10/train \
      --config.data.eval_path=../shared/data/cifar10/test --workdir runs/vit_inpaint
  python run.py eval --workdir runs/vit_inpaint                 # linear probe (probe_accuracy)

The central half of each image's side is filled with the mean pixel; the encoder sees the
rest, MAE's light decoder repaints the centre and a 2-pixel border around it (weighted 10x).
"""

from experiments import vit_mae


def get_config(arg=None):
  c = vit_mae.get_config(arg)
  c.experiment = 'vit_inpaint' + (f'_{arg.replace("/", "_")}' if arg else '')
  c.task = 'inpaint'
  c.inpaint.hole = 0.5        # no patch is dropped: the encoder sees the whole image, its centre filled
  c.inpaint.overlap = 2
  c.inpaint.overlap_weight = 10.0
  c.train.batch_size = 64     # the encoder reads all 64 patches (MAE's: 16), so half MAE's batch
  c.train.steps = 700         # and fewer steps: 15 minutes on a 2-core CPU
  return c
