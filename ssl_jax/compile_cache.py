"""JAX's persistent compilation cache: a second start of the same program loads it from disk.

`compile_cache` names the folder: 'auto' (the default) is ssl_jax/jax_compile under the
user's cache directory ($XDG_CACHE_HOME, else ~/.cache); '' turns it off. The cache is keyed
by the program, the devices and the jax/XLA versions, so a stale entry is never used.
"""

import os

import jax

_enabled = None   # the folder this process caches in, once set


def folder(setting: str) -> str:
  if setting != 'auto':
    return os.path.expanduser(setting)
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'ssl_jax', 'jax_compile')


def enable(setting: str) -> str:
  """Turns the cache on for this process (once: JAX reads the setting at its first compile)."""
  global _enabled
  if not setting or _enabled is not None:
    return _enabled or ''
  path = folder(setting)
  os.makedirs(path, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)   # eval and sampling programs too
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  _enabled = path
  return path
