"""Named model sizes, one table per family, decoded in one place: `model.size` decides every
shape key the config leaves at 0; a key set explicitly wins, and `resolve` says so.

GPT sizes are named after their papers: GPT-1 (Radford et al. 2018), GPT-2 (2019) and the
GPT-3 family (Brown et al. 2020, Table 2.1), plus small sizes that train on a CPU; the
large ones bring GPT-2's vocabulary (50,257 padded to 50,304, a multiple of 128 that divides
a tensor-parallel mesh). BERT's from the paper and google-research/bert's smaller models
(Turc et al. 2019). ViT's from Dosovitskiy et al. (Ti from DeiT), plus CPU sizes, with the
patch after a slash: `vit:S/4`. Llama's from the released models' configs (SmolLM-135M,
Llama-3.2 1B, Llama-3 8B and 70B), plus CPU sizes whose parameters match GPT's of the same
name (gpt:nano, gpt:baby) for a like-for-like comparison.
"""

from ssl_jax.errors import ConfigError

# name: (layers, heads, d_model, positions, vocabulary or 0 = the tokenizer's). d_ff = 4 * d_model.
GPT = {
    'gpt:nano': (2, 2, 64, 128, 0),
    'gpt:baby': (4, 4, 128, 64, 0),        # nanoGPT's CPU "baby GPT"
    'gpt:small': (6, 6, 384, 256, 0),      # nanoGPT's shakespeare_char model
    'gpt1': (12, 12, 768, 512, 50304),
    'gpt2:124M': (12, 12, 768, 1024, 50304),
    'gpt2:350M': (24, 16, 1024, 1024, 50304),
    'gpt2:774M': (36, 20, 1280, 1024, 50304),
    'gpt2:1.5B': (48, 25, 1600, 1024, 50304),
    'gpt3:125M': (12, 12, 768, 2048, 50304),
    'gpt3:350M': (24, 16, 1024, 2048, 50304),
    'gpt3:760M': (24, 16, 1536, 2048, 50304),
    'gpt3:1.3B': (24, 16, 2048, 2048, 50304),   # the paper prints 24 heads of 128; 2048 = 16 x 128
    'gpt3:2.7B': (32, 32, 2560, 2048, 50304),
    'gpt3:6.7B': (32, 32, 4096, 2048, 50304),
    'gpt3:13B': (40, 40, 5120, 2048, 50304),    # the paper prints 5140; 40 heads x 128 = 5120
    'gpt3:175B': (96, 96, 12288, 2048, 50304),
}

# name: (layers, heads, d_model). d_ff = 4 * d_model, 512 positions.
BERT = {
    'bert:tiny': (2, 2, 128),
    'bert:mini': (4, 4, 256),
    'bert:small': (4, 8, 512),
    'bert:medium': (8, 8, 512),
    'bert:base': (12, 12, 768),
    'bert:large': (24, 16, 1024),
}

# width: (layers, heads, d_model). d_ff = 4 * d_model; the patch follows the slash.
VIT = {
    'nano': (2, 2, 64),       # CPU: jigsaw's encoder (it reads nine tiles an image)
    'micro': (4, 4, 128),     # CPU: rotation's
    'mini': (4, 3, 192),      # CPU: Ti's width at 4 layers (MAE, inpainting, colorization)
    'Ti': (12, 3, 192),
    'S': (12, 6, 384),
    'B': (12, 12, 768),
    'L': (24, 16, 1024),
}

# name: (layers, heads, kv heads, d_model, d_ff, positions, vocabulary or 0 = the tokenizer's,
#        rotary theta, rotary scaling factor (Llama 3.1's; 0 = none), tied output embedding).
LLAMA = {
    'llama:nano': (2, 2, 1, 64, 192, 128, 0, 10000.0, 0.0, True),       # gpt:nano's parameters
    'llama:baby': (4, 4, 2, 128, 384, 64, 0, 10000.0, 0.0, True),       # gpt:baby's parameters
    'smollm:135M': (30, 9, 3, 576, 1536, 2048, 49152, 10000.0, 0.0, True),
    'llama3.2:1B': (16, 32, 8, 2048, 8192, 8192, 128256, 500000.0, 32.0, True),
    'llama3:8B': (32, 32, 8, 4096, 14336, 8192, 128256, 500000.0, 0.0, False),
    'llama3:70B': (80, 64, 8, 8192, 28672, 8192, 128256, 500000.0, 0.0, False),
}


def known() -> list:
  return list(GPT) + list(BERT) + list(LLAMA) + [f'vit:{w}/<patch>' for w in VIT]


def decode(name: str) -> dict:
  """The model keys a named size sets; an unknown name fails with the known ones."""
  if name in GPT:
    layers, heads, d_model, positions, vocab = GPT[name]
    return dict(num_layers=layers, num_heads=heads, d_model=d_model, d_ff=4 * d_model, max_len=positions,
                **({'vocab_size': vocab} if vocab else {}))
  if name in LLAMA:
    layers, heads, kv_heads, d_model, d_ff, positions, vocab, theta, scaling, _ = LLAMA[name]
    return dict(num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, d_model=d_model, d_ff=d_ff,
                max_len=positions, rope_theta=theta, rope_scaling=scaling, **({'vocab_size': vocab} if vocab else {}))
  if name in BERT:
    layers, heads, d_model = BERT[name]
    return dict(num_layers=layers, num_heads=heads, d_model=d_model, d_ff=4 * d_model, max_len=512)
  width, slash, patch = name.removeprefix('vit:').partition('/')
  if name.startswith('vit:') and width in VIT and slash and patch.isdigit() and int(patch) > 0:
    layers, heads, d_model = VIT[width]
    return dict(num_layers=layers, num_heads=heads, d_model=d_model, d_ff=4 * d_model, patch=int(patch))
  raise ConfigError(f'unknown model.size {name!r}; known: {", ".join(known())} (a ViT names its patch: vit:S/4)')


def tied(name: str) -> bool:
  """Whether a Llama size ties its output projection to its embedding (the experiment's
  default for model.tie_embeddings, a switch rather than a shape key)."""
  return LLAMA[name][-1]


def resolve(config) -> list:
  """Sets each shape key left at 0 from `model.size` (the config unlocked and locked back);
  returns a line for each key set explicitly to another value than the size's. Positions:
  at least data.seq_len (a size's context grows to the windows it is given, with a line).
  Without a size the keys stay as they are (`check_shape` refuses a shape left at 0)."""
  m = config.model
  lines = []
  if not m.size:
    return lines
  with config.unlocked():
    from_size = set()
    for key, value in decode(m.size).items():
      if not m[key]:
        m[key] = value
        from_size.add(key)
      elif m[key] != value:
        lines.append(f'model.{key}={m[key]} (set explicitly; {m.size} has {value})')
    if 'max_len' in from_size and m.max_len < config.data.seq_len:
      lines.append(f'model.max_len={config.data.seq_len}: {m.size} has {m.max_len} positions, '
                   f'data.seq_len={config.data.seq_len} needs more')
      m.max_len = config.data.seq_len
  return lines


def check_shape(model_config) -> None:
  """A ConfigError when a shape key is still 0 (no model.size set it)."""
  unset = [k for k in ('num_layers', 'num_heads', 'd_model', 'd_ff') if not model_config[k]]
  if unset:
    raise ConfigError(f'model.{unset[0]} is 0 and model.size {model_config.size!r} sets no shape: set model.size '
                      f'(e.g. gpt:baby, bert:tiny, vit:mini/4) or model.{", model.".join(unset)}')
