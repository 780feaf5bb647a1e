"""Backend-specific implementations, chosen once per run for the chip the program is compiled for.

Model code is plain math; where a backend is faster with another formulation of the same
math, the two live side by side here (`ops.py`: products, biases, norms, the QKV split, the
tied output projection, the gradient norm, the non-finite skip; `attention.py`: XLA's
attention, XLA:CPU's blocked causal einsums, cuDNN's flash attention, TPU splash attention).
Layers receive the choice as plain strings in their config (`kernels`, `attention`, `dtype`)
and never ask which backend they run on.

`choose` makes the choice from the platform of the mesh's devices (for `run.py plan
--topology`, the target TPU's), unless the config names one:
  model.kernels    auto | xla (the plain formulation, every backend) | cpu (XLA:CPU's)
  model.attention  auto | xla | splash (TPU) | cudnn (GPU) | cpu
  model.dtype      auto (bfloat16 on TPU/GPU, float32 on CPU) | float32 | bfloat16
"""

import dataclasses

from ssl_jax.errors import ConfigError

KERNELS = ('auto', 'xla', 'cpu')
ATTENTION = ('auto', 'xla', 'splash', 'cudnn', 'cpu')
DTYPES = ('auto', 'float32', 'bfloat16', 'float16')


@dataclasses.dataclass(frozen=True)
class Choice:
  """What a run's program is built from; every field resolved (no 'auto')."""
  platform: str      # cpu | gpu | tpu: of the mesh's devices
  kernels: str       # xla | cpu
  attention: str     # xla | splash | splash_interpret (off a TPU) | cudnn | cpu
  dtype: str         # compute dtype of activations and products

  def describe(self) -> str:
    return f'kernels {self.kernels}, attention {self.attention}, {self.dtype} on {self.platform}'


def platform_of(devices) -> str:
  """'cpu', 'gpu' or 'tpu' for a list of devices (CUDA and ROCm devices are 'gpu')."""
  platform = devices[0].platform.lower()
  return 'gpu' if platform in ('cuda', 'rocm', 'gpu') else platform


def choose(model_config, platform: str) -> Choice:
  """Resolves model.kernels, model.attention and model.dtype for `platform`."""
  kernels, attention, dtype = (str(model_config.get(k, 'auto')) for k in ('kernels', 'attention', 'dtype'))
  for key, value, known in (('kernels', kernels, KERNELS), ('attention', attention, ATTENTION),
                            ('dtype', dtype, DTYPES)):
    if value not in known:
      raise ConfigError(f'model.{key}={value!r}: expected one of {", ".join(known)}')
  if kernels == 'auto':
    kernels = 'cpu' if platform == 'cpu' else 'xla'
  if dtype == 'auto':
    dtype = 'float32' if platform == 'cpu' else 'bfloat16'
  if attention == 'auto':
    if platform == 'tpu':
      attention = 'splash'
    elif platform == 'gpu':
      attention = 'cudnn' if dtype in ('bfloat16', 'float16') else 'xla'
    else:
      attention = 'cpu' if kernels == 'cpu' else 'xla'
  if attention == 'cudnn' and platform != 'gpu':
    raise ConfigError(f'model.attention=cudnn needs a GPU; this run\'s devices are {platform}')
  if attention == 'splash' and platform != 'tpu':
    attention = 'splash_interpret'     # the Pallas interpreter: for tests, slowly
  return Choice(platform=platform, kernels=kernels, attention=attention, dtype=dtype)
