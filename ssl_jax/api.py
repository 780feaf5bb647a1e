"""The Python API: a trained (or imported) workdir as an object, and training from a config.

    import ssl_jax
    model = ssl_jax.load('runs/default')
    ids = model.encode('def ')
    model.logits(ids)                      # numpy (positions, vocabulary)
    model.generate('def ', max_new_tokens=50, temperature=0.8, top_k=200, top_p=1.0)
    ssl_jax.train(config, 'runs/mine')     # config: an experiment's get_config(...) or config.load(...)

`load` reads the workdir as `run.py generate` does (ssl_jax/model_on_mesh.py): its saved
config, its tokenizer and its newest checkpoint's parameters, restored onto this host's
devices; the corpus it was trained on is not read and nothing is written.
"""

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import generate as generation, model_on_mesh, trainer


@dataclasses.dataclass
class Model:
  """A workdir's model, restored: `config`, `params` (a pytree), `tokenizer`, `step`."""
  config: Any
  params: Any
  tokenizer: Any
  step: int
  setup: Any          # model_on_mesh.ModelOnMesh: the model module, mesh and kernels it was built with

  @property
  def family(self) -> str:
    return self.config.model.family

  def encode(self, text: str) -> list:
    return list(self.tokenizer.encode(text))

  def decode(self, ids: Sequence[int]) -> str:
    return self.tokenizer.decode([int(i) for i in ids])

  def logits(self, token_ids: Sequence[int]) -> np.ndarray:
    """Next-token logits of a decoder, or the masked-LM head's of an encoder, at every
    position: a float32 array of shape (len(token_ids), vocabulary)."""
    tokens = jnp.asarray(np.asarray(token_ids, np.int32)[None])       # (1, T)
    out = self.setup.model.apply({'params': self.params}, tokens, deterministic=True)
    if isinstance(out, dict):
      if 'mlm_logits' not in out:
        raise ValueError(f'a {self.family} model has no language-model head to give logits')
      out = out['mlm_logits']
    return np.asarray(jax.device_get(out[0]), np.float32)

  def generate(self, prompt: str, max_new_tokens: int = 100, temperature: float = 0.8, top_k: int = 200,
               top_p: float = 1.0, stop: Sequence[str] = (), seed: int = 0) -> str:
    """The text a decoder continues `prompt` with (temperature 0: greedy)."""
    if self.family not in ('gpt', 'llama'):
      raise ValueError(f'generate needs a decoder (model.family gpt or llama), not {self.family}')
    [text] = generation.complete(self.setup.model, self.params, self.tokenizer, [prompt], max_new_tokens, stop,
                                 temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    return text


def load(workdir: str) -> Model:
  """The model of a training workdir (any family) or of a `run.py convert --from_hf` output."""
  placed, params, step = model_on_mesh.load(workdir)
  return Model(config=placed.config, params=params, tokenizer=placed.tokenizer, step=int(step), setup=placed)


def train(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming from its newest checkpoint) as `run.py train`
  does; returns the last logged metrics."""
  return trainer.train_and_evaluate(config, workdir)
