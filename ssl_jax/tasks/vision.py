"""What the vision objectives share: image data for a task, and the linear probe of its encoder."""

import jax

from ssl_jax import probe as probe_lib
from ssl_jax.config import ConfigError
from ssl_jax.data import images as images_lib
from ssl_jax.models.vit import ViT
from ssl_jax.tasks import Data


def make_data(config, workdir: str) -> Data:
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
  pi, pc = jax.process_index(), jax.process_count()
  make = lambda x, y, augment: images_lib.ImageBatches(x, y, config.train.batch_size, config.seed, augment,
                                                       process_index=pi, process_count=pc)
  return Data(make(train_images, train_labels, True), make(eval_images, eval_labels, False), None,
              unit='images', units_per_example=1, classes=tuple(classes))


def probe(setup, params, encode=None) -> dict:
  """Linear-probe accuracy on the held-out images, from frozen features: by default the
  encoder's mean patch features of the whole image. encode: images (B, H, W, 3) -> (B, F)
  replaces them (jigsaw: its encoder was trained on tiles, and sees tiles).

  Every vision model keeps its ViT under params['encoder'].
  """
  model = setup.model
  if encode is None:
    encoder = ViT(model.cfg, model.patch, model.image_size)
    encode = lambda x: encoder.apply({'params': params['encoder']}, x)[:, 1:].mean(1)   # (B, D)
  train, held_out = setup.data.train, setup.data.eval
  accuracy = probe_lib.linear_probe(probe_lib.features(encode, train.images), train.labels,
                                    probe_lib.features(encode, held_out.images), held_out.labels,
                                    max(len(setup.data.classes), int(train.labels.max()) + 1))
  return {'probe_accuracy': accuracy}
