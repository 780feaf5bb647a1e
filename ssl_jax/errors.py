"""The error a bad experiment or override raises; in a module of its own so that what the
config is built from (the tasks' settings) can raise it without importing the config."""


class ConfigError(ValueError):
  """A bad experiment spec or override; the message names the key or file."""
