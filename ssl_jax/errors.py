"""The errors a bad experiment, override or input raises; in a module of its own so that what
the config is built from (the tasks' settings) can raise them without importing the config,
and the command line can tell them apart without importing JAX."""


class ConfigError(ValueError):
  """A bad experiment spec or override; the message names the key or file."""


class DataError(ValueError):
  """Bad input data: the message names the thing and where it is."""
