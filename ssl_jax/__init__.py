"""ssl_jax: self-supervised pretraining of transformers in JAX/Flax, and transfer.

`ssl_jax.load(workdir)` and `ssl_jax.train(config, workdir)` are the Python API (ssl_jax/api.py);
importing the package alone loads no JAX, so the command line can set JAX's flags first.
"""

__all__ = ['load', 'train']


def __getattr__(name):
  if name in __all__:
    from ssl_jax import api  # pylint: disable=import-outside-toplevel
    return getattr(api, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
