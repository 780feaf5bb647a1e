"""Image data: ImageFolder trees, NumPy arrays, CIFAR-10 Python batches; augmentation by (seed, step, row).

Every source becomes (images uint8 (N, H, W, 3), labels int32 (N,), class names), held in
memory (CIFAR-sized sets are tens of MB). The batch at step s draws its rows and each
row's random resized crop and flip from a generator seeded with (seed, s, row).
"""

import glob
import os
import pickle
from typing import List

import numpy as np
from PIL import Image

from ssl_jax import parallel
from ssl_jax.data.text import DataError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')


def _decode(path: str, size: int) -> np.ndarray:
  try:
    with Image.open(path) as im:
      im = im.convert('RGB')
      if im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
      return np.asarray(im, dtype=np.uint8)
  except (OSError, ValueError) as e:
    raise DataError(f'{path}: not a readable image ({e})') from None


def read_image_folder(root: str, size: int):
  """<root>/<class>/<image>: classes are the sorted sub-folder names."""
  classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if not classes:
    raise DataError(f'{root}: no class folders (expected <root>/<class>/<image>)')
  images, labels = [], []
  for label, name in enumerate(classes):
    files = sorted(f for f in glob.glob(os.path.join(root, name, '*')) if f.lower().endswith(IMAGE_EXTENSIONS))
    images += [_decode(f, size) for f in files]
    labels += [label] * len(files)
  if not images:
    raise DataError(f'{root}: no images under its class folders')
  return np.stack(images), np.asarray(labels, np.int32), classes


def read_arrays(path: str, size: int):
  """.npz with `images` (N, H, W, 3) uint8 and optional `labels`, or a bare .npy of images."""
  if path.endswith('.npz'):
    with np.load(path) as f:
      if 'images' not in f:
        raise DataError(f'{path}: expected an array named images (and labels)')
      images, labels = f['images'], f['labels'] if 'labels' in f else np.zeros(len(f['images']), np.int32)
  else:
    images = np.load(path)
    labels = np.zeros(len(images), np.int32)
  return _check(images, size, path), np.asarray(labels, np.int32), [str(i) for i in range(int(labels.max()) + 1)]


def read_cifar_batches(paths: List[str], size: int):
  """CIFAR-10's Python pickles (data_batch_1..5, test_batch): 3072 bytes a row, planes R, G, B."""
  images, labels = [], []
  for path in paths:
    with open(path, 'rb') as f:
      batch = pickle.load(f, encoding='bytes')
    images.append(np.asarray(batch[b'data'], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    labels.extend(batch[b'labels'])
  names = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
  return _check(np.concatenate(images), size, paths[0]), np.asarray(labels, np.int32), names


def _check(images: np.ndarray, size: int, where: str) -> np.ndarray:
  if images.ndim != 4 or images.shape[-1] != 3:
    raise DataError(f'{where}: expected images of shape (N, H, W, 3), got {images.shape}')
  if images.shape[1:3] != (size, size):
    images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images])
  return images.astype(np.uint8)


def embedded_images(size: int, count: int = 2048, seed: int = 0):
  """The offline default: crops of the photographs matplotlib ships, labelled by photograph."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  root = os.path.join(os.path.dirname(matplotlib.__file__), 'mpl-data', 'sample_data')
  names = ['grace_hopper.jpg', 'Minduka_Present_Blue_Pack.png']
  rng = np.random.default_rng(seed)
  images, labels = [], []
  for label, name in enumerate(names):
    with Image.open(os.path.join(root, name)) as im:
      photo = im.convert('RGB')
    w, h = photo.size
    for _ in range(count // len(names)):
      side = int(rng.integers(min(w, h) // 8, min(w, h) // 2))
      x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
      images.append(np.asarray(photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC)))
      labels.append(label)
  order = rng.permutation(len(images))   # mixed, so a held-out tail holds every photograph
  return (np.stack(images)[order].astype(np.uint8), np.asarray(labels, np.int32)[order],
          [n.split('.')[0] for n in names])


def load(path: str, size: int):
  """(images, labels, classes) from a folder tree, an array file, CIFAR batches, or '' (embedded)."""
  if not path:
    return embedded_images(size)
  if os.path.isdir(path):
    batches = sorted(glob.glob(os.path.join(path, 'data_batch_*')) or glob.glob(os.path.join(path, 'test_batch')))
    return read_cifar_batches(batches, size) if batches else read_image_folder(path, size)
  if not os.path.exists(path):
    raise DataError(f'image data {path!r} does not exist')
  if path.endswith(('.npz', '.npy')):
    return read_arrays(path, size)
  return read_cifar_batches([path], size)


class ImageBatches:
  """Batches of augmented images (float32 in [0, 1]) with labels and each row's global index."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, global_batch, seed: int, augment: bool = True,
               min_scale: float = 0.35):
    """global_batch: the global batch size, or this host's parallel.HostShare of it."""
    if len(images) == 0:
      raise DataError('no images')
    self.share = parallel.host_share(global_batch)
    self.images, self.labels = images, labels
    self.global_batch, self.seed, self.augment, self.min_scale = self.share.size, seed, augment, min_scale
    self.rows = self.share.within

  def _crop(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random resized crop (area min_scale..1, aspect 3/4..4/3) and a horizontal flip half the time."""
    h, w, _ = image.shape
    for _ in range(10):
      area = h * w * rng.uniform(self.min_scale, 1.0)
      aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
      ch, cw = int(round(np.sqrt(area / aspect))), int(round(np.sqrt(area * aspect)))
      if 0 < ch <= h and 0 < cw <= w:
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        image = np.asarray(Image.fromarray(image[y:y + ch, x:x + cw]).resize((w, h), Image.BILINEAR))
        break
    return image[:, ::-1] if rng.random() < 0.5 else image

  def _batch(self, step: int, stream: int, sequential: bool) -> dict:
    if sequential:   # held-out passes walk the set in order
      index = self.share.rows(step) % len(self.images)
    else:
      index = np.random.default_rng([self.seed, step, stream]).integers(0, len(self.images), self.global_batch)
      index = index[self.rows]
    images = self.images[index]
    if self.augment and not sequential:
      images = np.stack([self._crop(im, np.random.default_rng([self.seed, step, int(r), stream]))
                         for im, r in zip(images, self.rows)])
    return {'images': images.astype(np.float32) / 255.0, 'labels': self.labels[index],
            'index': self.share.rows(step).astype(np.int32)}

  def batch(self, step: int) -> dict:
    return self._batch(step, 0, sequential=False)

  def eval_batch(self, i: int) -> dict:
    return self._batch(i, 1, sequential=True)
