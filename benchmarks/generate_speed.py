"""Generation speed: the KV-cache decoder against the recompute-the-window reference.

Run from the repository root:

    python benchmarks/generate_speed.py                        # the Shakespeare model (6x384, block 256), 256 tokens
    python benchmarks/generate_speed.py --variant baby --new_tokens 64

Both paths decode greedily from the same parameters (a random initialisation of
experiments/gpt_shakespeare_char.py's model: speed does not depend on training) and a
one-token prompt. Each is run once to compile, then timed over --rounds calls; the median
is reported. The two outputs are also compared token for token. Prints tokens/s of each,
the ratio, and one JSON line.
"""
import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ssl_jax import config as config_lib, generate, kernels, models  # noqa: E402

VOCAB = 65   # tinyshakespeare's characters


def timed(fn, rounds):
  fn()   # compile
  times = []
  for _ in range(rounds):
    t = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t)
  return out, statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--variant', default='full', help='experiments/gpt_shakespeare_char.py variant (full, baby)')
  parser.add_argument('--new_tokens', type=int, default=256)
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()

  config = config_lib.load(os.path.join(REPO, 'experiments', f'gpt_shakespeare_char.py:{args.variant}'))
  config.unlock()
  config.model.vocab_size = VOCAB
  model, cfg = models.build(config, kernels.choose(config.model, kernels.platform_of(jax.devices())))
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params'])
  prompt = [0]
  n = args.new_tokens

  reference, reference_s = timed(lambda: generate.sample(model, params, prompt, n, temperature=0.0), args.rounds)
  cached, cached_s = timed(lambda: generate.generate(model, params, [prompt], n, temperature=0.0)[0], args.rounds)
  same = int((np.asarray(reference[len(prompt):]) == cached).sum())
  result = {'model': f'L{cfg.num_layers} H{cfg.num_heads} D{cfg.d_model} block {cfg.max_len}',
            'device': jax.devices()[0].device_kind, 'new_tokens': n,
            'recompute_tokens_per_sec': n / reference_s, 'cached_tokens_per_sec': n / cached_s,
            'speedup': reference_s / cached_s, 'identical_tokens': f'{same}/{n}'}
  print(f'{"path":<22}{"seconds":>10}{"tokens/s":>12}')
  print(f'{"recompute the window":<22}{reference_s:>10.3f}{n / reference_s:>12.1f}')
  print(f'{"KV cache":<22}{cached_s:>10.3f}{n / cached_s:>12.1f}')
  print(f'speedup {reference_s / cached_s:.1f}x; greedy outputs agree on {same}/{n} tokens')
  print(json.dumps(result))


if __name__ == '__main__':
  main()
