"""The best held-out checkpoint of a fine-tuning run, kept in WORKDIR/best/ (a folder, or
under a gs:// workdir, objects: each file written whole through ssl_jax.storage)."""

import json

import jax
import numpy as np

from ssl_jax import storage
from ssl_jax.convert import files as convert_files


def keep_best(workdir: str, step: int, metrics: dict, metric: str, params, model_config: dict) -> bool:
  """Writes workdir/best/ (params.safetensors, model.json, best.json) when `metric` improves."""
  if metric not in metrics:
    return False
  path = storage.join(workdir, 'best')
  record_path = storage.join(path, 'best.json')
  if storage.exists(record_path):
    if json.loads(storage.read_text(record_path))['value'] >= metrics[metric]:
      return False
  host = jax.tree_util.tree_map(np.asarray, _gather(params))
  if jax.process_index() == 0:
    convert_files.save_params(host, model_config, path)
    # written last: best.json names only a complete save
    storage.write_text(record_path, json.dumps({'step': step, 'metric': metric, 'value': metrics[metric], **metrics}))
  return True


def _gather(params):
  if jax.process_count() == 1:
    return jax.device_get(params)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return multihost_utils.process_allgather(params, tiled=True)
