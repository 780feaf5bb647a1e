"""The best held-out checkpoint of a fine-tuning run, kept in WORKDIR/best/."""

import json
import os

import jax
import numpy as np

from ssl_jax.convert import files as convert_files


def keep_best(workdir: str, step: int, metrics: dict, metric: str, params, model_config: dict) -> bool:
  """Writes workdir/best/ (params.safetensors, model.json, best.json) when `metric` improves."""
  if metric not in metrics:
    return False
  path = os.path.join(workdir, 'best')
  record_path = os.path.join(path, 'best.json')
  if os.path.exists(record_path):
    with open(record_path) as f:
      if json.load(f)['value'] >= metrics[metric]:
        return False
  host = jax.tree_util.tree_map(np.asarray, _gather(params))
  if jax.process_index() == 0:
    convert_files.save_params(host, model_config, path)
    tmp = record_path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump({'step': step, 'metric': metric, 'value': metrics[metric], **metrics}, f)
    os.replace(tmp, record_path)     # written last: best.json names only a complete save
  return True


def _gather(params):
  if jax.process_count() == 1:
    return jax.device_get(params)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return multihost_utils.process_allgather(params, tiled=True)
