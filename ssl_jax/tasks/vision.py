"""What the vision objectives share: image data for a task, and the linear probe of its encoder."""

import numpy as np

from ssl_jax import probe as probe_lib, storage
from ssl_jax.errors import ConfigError
from ssl_jax.data import images as images_lib
from ssl_jax.models.vit import ViT
from ssl_jax.tasks import Data


def make_data(config, workdir: str, labelled: bool = False) -> Data:
  """The images of data.path (held out: data.eval_path, else its last data.eval_fraction),
  their labels kept for the probes. `labelled` (classification): the label names are the
  classes the model predicts; a pretext task's model predicts other things."""
  del workdir
  size, d = config.data.image_size, config.data
  if config.model.patch <= 0 or size % config.model.patch:   # before any image is read
    raise ConfigError(f'data.image_size={size} is not a multiple of model.patch={config.model.patch}')
  train_images, train_labels, classes = images_lib.load(d.path, size)
  if d.eval_path:
    eval_images, eval_labels, _ = images_lib.load(d.eval_path, size)
  else:
    split = int(len(train_images) * (1 - d.eval_fraction))
    train_images, eval_images = train_images[:split], train_images[split:]
    train_labels, eval_labels = train_labels[:split], train_labels[split:]
  make = lambda x, y, augment: images_lib.ImageBatches(x, y, config.train.batch_size, config.seed, augment)
  return Data(make(train_images, train_labels, True), make(eval_images, eval_labels, False), None,
              unit='images', units_per_example=1, classes=tuple(classes) if labelled else ())


def probe(setup, params, encode=None) -> dict:
  """Linear-probe accuracy on the held-out images, from frozen features (its C chosen on part
  of the training images, `probe.py`): by default the
  encoder's mean patch features of the whole image. encode: images (B, H, W, 3) -> (B, F)
  replaces them (jigsaw: its encoder was trained on tiles, and sees tiles).

  Every vision model keeps its ViT under params['encoder']. The images' labels say how many
  classes there are (a task's data.classes may be what its model predicts instead).
  """
  encode = encode or mean_patch_features(setup, params)
  train, held_out = setup.data.train, setup.data.eval
  result = probe_lib.linear_probe(probe_lib.features(encode, train.images), train.labels,
                                  probe_lib.features(encode, held_out.images), held_out.labels,
                                  int(max(train.labels.max(), held_out.labels.max())) + 1, seed=setup.config.seed)
  # The sweep: held-out accuracy (20% of the training images) of each C tried.
  return {'probe_accuracy': result['accuracy'], 'probe_C': result['C'],
          'probe_sweep': {f'{c:g}': a for c, a in result['sweep'].items()}}


def mean_patch_features(setup, params):
  """images (B, H, W, 3) -> (B, D): the mean of the encoder's patch states (the probe's features)."""
  model = setup.model
  encoder = ViT(model.cfg, model.patch, model.image_size)
  return lambda x: encoder.apply({'params': params['encoder']}, x)[:, 1:].mean(1)


def held_out_images(setup, count: int = 8) -> np.ndarray:
  """`count` held-out images spread evenly over the split (so over its classes), (B, H, W, 3)
  float in [0, 1]."""
  images = setup.data.eval.images
  return images[np.linspace(0, len(images) - 1, count).astype(int)].astype(np.float32) / 255.0


def save_grid(path: str, rows, title: str = '') -> str:
  """A PNG of images: rows is a list of (label, images (B, H, W, 3) in [0, 1]), one row each.
  Drawn into a buffer, then written whole: `path` may be in a gs:// workdir."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  cols = max(len(images) for _, images in rows)
  fig, axes = plt.subplots(len(rows), cols, figsize=(1.2 * cols + 1, 1.25 * len(rows) + 0.4), dpi=100,
                           squeeze=False)
  for r, (label, images) in enumerate(rows):
    for c in range(cols):
      ax = axes[r, c]
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_visible(False)
      if c < len(images):
        ax.imshow(np.clip(np.asarray(images[c], np.float32), 0, 1), interpolation='nearest')
    axes[r, 0].set_ylabel(label, rotation=0, ha='right', va='center', fontsize=9)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  buffer = storage.buffer()
  fig.savefig(buffer, format='png')
  plt.close(fig)
  storage.write_bytes(path, buffer.getvalue())
  return path
