"""The config every experiment starts from.

An experiment file (`experiments/*.py`) calls `base_config()`, sets what it needs and
returns the whole experiment. Every key exists here with a typed default, so an override
of an unknown key or with a value of the wrong type is refused by ml_collections with the
key's name (`override` checks every key against the locked config).
"""

import ast
import difflib
import importlib.util
import os
import sys

import ml_collections
from ml_collections import config_dict

from ssl_jax import tasks
from ssl_jax.errors import ConfigError


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = ''             # name; the default workdir is runs/<experiment>
  c.seed = 0                    # seed of every random draw: initialisation, data order, masks, dropout
  c.task = 'clm'                # objective: a task of ssl_jax/tasks (run.py config lists them)
  c.init_from = ''              # a workdir (or Hugging Face directory) to start the body from
  c.init = ''                   # 'random': eval scores the random initialisation; finetune takes init_from's shape and tokenizer, not its weights
  c.compile_cache = 'auto'      # JAX's persistent compilation cache: auto (under ~/.cache/ssl_jax) | a folder | '' (off)

  c.model = ml_collections.ConfigDict()
  c.model.family = 'gpt'        # a family of ssl_jax/models/families.py (run.py config lists them)
  c.model.size = ''             # a named size (ssl_jax/models/sizes.py: gpt2:124M, bert:base, vit:S/4, ...): sets every shape key left at 0
  c.model.num_layers = 0        # transformer blocks; 0: model.size's
  c.model.num_heads = 0         # attention heads per block; 0: model.size's
  c.model.d_model = 0           # width of the residual stream; 0: model.size's
  c.model.d_ff = 0              # hidden width of each block's MLP; 0: model.size's
  c.model.vocab_size = 0        # 0: model.size's if it names one, else the tokenizer's
  c.model.max_len = 0           # learned positions; 0: model.size's (at least data.seq_len), else data.seq_len
  c.model.dropout = 0.0         # dropout rate on the embeddings and residual branches (not attention weights); 0 = off
  c.model.bias = True           # biases in the linear layers and norms (GPT-2, BERT: true)
  c.model.activation = 'gelu_tanh'  # gelu_tanh (GPT-2) | gelu (exact erf, BERT)
  c.model.dtype = 'auto'        # compute dtype (auto: bfloat16 on TPU/GPU, float32 on CPU); parameters stay float32
  c.model.kernels = 'auto'      # auto (from the mesh's devices) | xla (plain, every backend) | cpu (XLA:CPU's)
  c.model.attention = 'auto'    # auto | xla | splash (TPU Pallas) | cudnn (GPU flash) | cpu (blocked causal einsums)
  c.model.scan_layers = False   # scan one block over the layers: compile time independent of depth
  c.model.remat = 'none'        # none | dots (keep weight-matmul outputs) | full: recompute in the backward pass
  c.model.ln_eps = 0.0          # the norms' epsilon; 0: the family's (an import records its checkpoint's)
  c.model.num_kv_heads = 0      # llama: key/value heads (grouped-query attention; 1 = multi-query); 0: model.size's, else num_heads
  c.model.rope_theta = 0.0      # llama: rotary base; 0: model.size's, else 10,000
  c.model.rope_scaling = 0.0    # llama: Llama-3.1's rotary frequency scaling factor (e.g. 8, 32); 0: model.size's, else none
  c.model.tie_embeddings = True  # llama: the output projection is the input embedding (false: its own lm_head)
  c.model.patch = 0             # vision: patch size in pixels; 0: model.size's
  c.model.decoder_layers = 2    # MAE decoder
  c.model.decoder_heads = 4     # MAE decoder: attention heads
  c.model.decoder_d_model = 128  # MAE decoder: width
  c.model.num_classes = 0       # classifier heads (rotation: 4); 0: from the data (labels, colour bins)

  c.data = ml_collections.ConfigDict()
  c.data.path = ''              # file, glob or comma-separated list; '' = embedded corpus
  c.data.eval_path = ''         # held-out split; '' = last data.eval_fraction of data.path
  c.data.eval_fraction = 0.1    # share of data.path held out when data.eval_path is ''
  c.data.seq_len = 128          # tokens per training sequence (decoder window, BERT pair)
  c.data.tokenizer = 'char'     # char | sentencepiece (also spm, unigram; bpe: its BPE model) trained on a streamed sample of the corpus | a path: sentencepiece .model, Hugging Face tokenizer.json, .tiktoken file
  c.data.tokenizer_sample_mb = 16.0  # sentencepiece: MB of text streamed from the corpus (spread over its files) to train it on
  c.data.tiktoken_pattern = 'gpt2'  # a .tiktoken tokenizer's split regex: gpt2 (GPT-2's, as r50k/p50k) or the regex itself
  c.data.tiktoken_special_tokens = ''  # a .tiktoken tokenizer's special tokens, 'NAME:ID,...'; '' = <|endoftext|> right after the last rank
  c.data.format = ''            # '' = by extension (.txt, .jsonl, .parquet, .arrow, each optionally .gz/.zst; a datasets save_to_disk folder) | text | jsonl | parquet | arrow
  c.data.text_field = 'text'    # jsonl, parquet, arrow and datasets sources: the field (column) holding a document's text
  c.data.tokenize_workers = 0   # token cache: processes tokenising in parallel; 0 = one per core
  c.data.shard_mb = 64.0         # token cache: MB of source text a shard holds (the unit a killed build resumes from)
  c.data.cache_dir = ''         # gs:// workdir: where each host keeps its local copy of the token cache (memory-mapped); '' = ~/.cache/ssl_jax/tokens ($XDG_CACHE_HOME)
  c.data.mask_prob = 0.15       # masked LM: share of a sequence's pieces masked (BERT's 15%; Wettig et al. 2022 argue 40%)
  c.data.max_predictions = 20   # masked LM: most masked positions per sequence (a cap on data.mask_prob's count)
  c.data.short_seq_prob = 0.1   # masked LM: chance of a shorter target length
  c.data.whole_word_masking = False  # masked LM: mask every piece of a chosen word together
  c.data.image_size = 32        # vision: images are resized to this square
  c.data.max_examples = 0       # fine-tuning: use the first N training rows (0: all)
  c.data.pack = False           # clm: segment ids keep each window's documents apart (attention, positions, no cross-document target); classify_text: several examples a row, each its own [CLS]
  c.data.pack_examples = 0      # classify_text with data.pack: most examples a row (K, the labels' width); 0 = data.seq_len // 4
  c.data.resume_on_change = False  # train: resume on a corpus whose content changed since the checkpoint (default: an error)
  c.data.prepare = ml_collections.ConfigDict()   # corpus cleaning before tokenisation (run.py prepare)
  c.data.prepare.enabled = False      # train: clean data.path first (cached in WORKDIR/prepared)
  c.data.prepare.documents = 'paragraphs'  # paragraphs (blank-line separated) | files
  c.data.prepare.quality = True  # drop documents failing the quality heuristics below
  c.data.prepare.min_words = 3      # a speaker and one word ('LUCIO: Ay.') is too little to learn from
  c.data.prepare.max_words = 100_000  # quality: longest document kept, in words
  c.data.prepare.min_mean_word_length = 2.0  # quality: shortest mean word length kept
  c.data.prepare.max_mean_word_length = 12.0  # quality: longest mean word length kept
  c.data.prepare.min_alpha_fraction = 0.6  # quality: least share of alphabetic characters (spaces aside)
  c.data.prepare.min_punctuated_lines = 0.2   # verse and dialogue end lines in , ; : as well as . ! ?
  c.data.prepare.max_repeated_3grams = 0.3  # quality: most share of word 3-grams that occur more than once
  c.data.prepare.exact = True   # drop exact duplicate documents (whitespace-normalised)
  c.data.prepare.lines = True   # drop documents whose every line repeats lines kept already
  c.data.prepare.min_line_chars = 40   # shorter lines (a play's speaker names) are never deduplicated
  c.data.prepare.near = True    # drop near duplicates (MinHash LSH over word 5-shingles)
  c.data.prepare.near_threshold = 0.7  # estimated Jaccard similarity of word 5-shingles
  c.data.prepare.num_perm = 128  # near: MinHash permutations (more: a finer similarity estimate)

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 16       # global batch, over all hosts and devices
  c.train.grad_accum = 1        # micro-batches per step (the batch is split this many ways)
  c.train.steps = 1000          # optimizer steps in all (a resume continues to this step)
  c.train.lr = 1e-3             # peak learning rate (AdamW)
  c.train.warmup_steps = 100    # linear warm-up from 0 to train.lr
  c.train.min_lr = 1e-4         # learning rate at the end of the decay
  c.train.decay_steps = 0       # cosine reaches min_lr here; 0 = train.steps
  c.train.schedule = 'cosine'   # cosine | linear | constant
  c.train.weight_decay = 0.1    # AdamW decoupled weight decay, on matrices and embeddings (not biases or norm scales)
  c.train.b1 = 0.9              # AdamW first-moment decay
  c.train.b2 = 0.95             # AdamW second-moment decay
  c.train.eps = 1e-8            # AdamW epsilon
  c.train.grad_clip = 1.0       # global-norm clipping; 0 = off
  c.train.eval_every = 250      # steps between held-out evaluations (0 = only at the end)
  c.train.eval_batches = 20     # held-out batches an eval; 0 = the whole split (decoders, labelled data)
  c.train.log_every = 1         # steps between metrics.jsonl records (and plain progress lines off a terminal)
  c.train.checkpoint_every = 250  # steps between checkpoints (0 = only at the end)
  c.train.keep_checkpoints = 2  # newest checkpoints kept
  c.train.max_bad_steps = 10    # stop after this many non-finite steps in a row (their updates are skipped); 0 = never
  c.train.sample_tokens = 200   # tokens sampled at the end of a decoder run, within the model's context; 0 = none
  c.train.sample_prompt = ''    # prompt of the end-of-run sample ('' = a newline)

  c.finetune = ml_collections.ConfigDict()
  c.finetune.freeze = 0         # -1: the whole body (a linear probe); k > 0: embeddings + the lowest k blocks
  c.finetune.pool = 'cls'       # BERT classifiers: cls (the pooled [CLS] vector, BERT's) | mean (the mean of the text's hidden states)

  c.log = ml_collections.ConfigDict()
  c.log.wandb = ''              # a Weights & Biases project to log to as well ('' = off; WANDB_MODE=offline works)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1              # -1: whatever the other axes leave of the devices
  c.mesh.fsdp = 1               # devices each parameter and optimizer moment is sharded over (ZeRO-3 style)
  c.mesh.tensor = 1             # devices each layer's matrices are split over (Megatron-style tensor parallelism)

  c.bench = ml_collections.ConfigDict()
  c.bench.steps = 20            # bench: timed steps (after warm-up)
  c.bench.warmup = 3            # bench: untimed steps after compiling
  c.bench.peak_flops = 0.0      # per device; 0 = measured (CPU) or the datasheet table

  for task in tasks.every():    # each task's own settings: jigsaw.tile_size, mae.mask_ratio, ...
    if task.group:
      c[task.group] = ml_collections.ConfigDict({key: default for key, (default, _) in task.settings.items()})
  return c


# Keys that moved, as saved configs and old command lines still name them: read, with a notice.
RENAMED = {
    'model.mask_ratio': 'mae.mask_ratio', 'model.hole': 'inpaint.hole', 'model.overlap': 'inpaint.overlap',
    'model.overlap_weight': 'inpaint.overlap_weight', 'model.all_turns': 'rotation.all_turns',
    'model.tile_size': 'jigsaw.tile_size', 'model.num_permutations': 'jigsaw.num_permutations',
    'model.jigsaw_hidden': 'jigsaw.hidden', 'finetune.lm_weight': 'classify.lm_weight',
    'finetune.doc_stride': 'span_qa.doc_stride', 'finetune.max_query_len': 'span_qa.max_query_len',
    'finetune.max_answer_len': 'span_qa.max_answer_len',
}


def renamed(key: str, notice: bool = True) -> str:
  """The current name of `key`, saying so on stderr (unless `notice` is off) when it is an old one."""
  if key not in RENAMED:
    return key
  if notice:
    print(f'config: {key} is now {RENAMED[key]}; read as that', file=sys.stderr, flush=True)
  return RENAMED[key]


def move_renamed(config: ml_collections.ConfigDict, where: str) -> None:
  """Moves the values of old keys that `config` (unlocked) holds to their new places, with one notice."""
  moved = []
  for old, new in RENAMED.items():
    group, key = old.split('.')
    if group in config and key in config[group]:
      new_group, new_key = new.split('.')
      config[new_group][new_key] = config[group][key]
      del config[group][key]
      moved.append(f'{old} -> {new}')
  if moved:
    print(f'config: {where} names keys that have moved; read as {", ".join(moved)}', file=sys.stderr, flush=True)


def flatten(config) -> dict:
  """{'train.lr': 0.001, ...}: the leaves of a ConfigDict (or of a nested dict)."""
  items = config.items() if isinstance(config, (dict, ml_collections.ConfigDict)) else ()
  flat = {}
  for key, value in items:
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      flat.update({f'{key}.{k}': v for k, v in flatten(value).items()})
    else:
      flat[key] = value
  return flat


def docs() -> dict:
  """{'train.lr': 'what it does', ...}: the comment beside each key in `base_config()`."""
  import inspect  # pylint: disable=import-outside-toplevel
  import io  # pylint: disable=import-outside-toplevel
  import tokenize  # pylint: disable=import-outside-toplevel
  found, key = {}, None
  for token in tokenize.generate_tokens(io.StringIO(inspect.getsource(base_config)).readline):
    if token.type == tokenize.NAME and token.string == 'c' and token.start[1] == 2:
      key = token.line.split('=', 1)[0].strip()[2:]   # 'c.train.lr = ...' -> 'train.lr'
    elif token.type == tokenize.COMMENT and key is not None:
      found[key] = token.string[1:].strip()
      key = None
    elif token.type == tokenize.NEWLINE:
      key = None
  for task in tasks.every():
    found.update({f'{task.group}.{key}': f'{task.name}: {doc}' for key, (_, doc) in task.settings.items()})
  # The choices of these two are the registries' own names, not a second list kept by hand.
  from ssl_jax.models import families  # pylint: disable=import-outside-toplevel
  found['task'] = 'objective: ' + ' | '.join(task.name for task in tasks.every())
  found['model.family'] = ' | '.join(families.FAMILIES)
  return found


def describe(config) -> str:
  """The resolved config, one `key = value  # what it does` line per leaf."""
  notes = docs()
  flat = flatten(config)
  width = max(len(f'{k} = {v!r}') for k, v in flat.items())
  return '\n'.join(f'{f"{k} = {v!r}":<{width}}  # {notes.get(k, "(undocumented)")}' for k, v in flat.items())


def experiments_dir() -> str:
  """The experiment files: installed beside the package by `pip install .`, else the
  repository's `experiments/` folder."""
  package = os.path.dirname(os.path.abspath(__file__))
  installed = os.path.join(package, 'experiments')
  return installed if os.path.isdir(installed) else os.path.join(os.path.dirname(package), 'experiments')


def load(spec: str) -> ml_collections.ConfigDict:
  """The config of `experiments/FILE.py[:ARG]`: FILE's get_config(ARG), locked. A path
  `experiments/...` that is not under the current folder is looked up among ours."""
  path, _, arg = spec.partition('.py:')
  path = path if path.endswith('.py') else path + '.py'
  head, _, rest = path.partition('/')
  if not os.path.isfile(path) and head == 'experiments' and os.path.isfile(os.path.join(experiments_dir(), rest)):
    path = os.path.join(experiments_dir(), rest)
  if not os.path.isfile(path):
    raise ConfigError(f'--config: no experiment file {path!r}')
  module_spec = importlib.util.spec_from_file_location(f'experiment_{os.path.basename(path)[:-3]}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'--config: {path} has no get_config(arg)')
  config = module.get_config(arg or None)
  move_renamed(config, path)   # an experiment written before a key moved
  config.lock()
  return config


def parse_value(text: str, current):
  """`text` read as the type of the value it replaces (bool, int, float, str, tuple, list)."""
  if isinstance(current, bool):
    if text.lower() in ('true', '1', 'yes'):
      return True
    if text.lower() in ('false', '0', 'no'):
      return False
    raise ValueError(f'expected true or false, got {text!r}')
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, (tuple, list)):
    value = ast.literal_eval(text)
    if not isinstance(value, (tuple, list)):
      raise ValueError(f'expected a sequence, got {text!r}')
    return type(current)(value)
  return text


def override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  """Sets config.KEY from its text, refusing unknown keys and values of the wrong type."""
  key = renamed(key)
  node = config
  *parents, leaf = key.split('.')
  for i, part in enumerate(parents + [leaf]):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      where = '.'.join((parents + [leaf])[:i]) or 'the config'
      choices = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(part, choices, n=1)
      hint = f'; did you mean {".".join((parents + [leaf])[:i] + close)!r}?' if close else ''
      raise ConfigError(f'unknown config key {key!r}: {where} has no {part!r}{hint}')
    if i < len(parents):
      node = node[part]
  if isinstance(node[leaf], ml_collections.ConfigDict):
    raise ConfigError(f'--config.{key}={text}: {key!r} is a group of keys; set its keys, e.g. '
                      f'--config.{key}.{next(iter(node[leaf].keys()), "KEY")}=...')
  try:
    value = parse_value(text, node[leaf])
  except (ValueError, SyntaxError) as e:
    raise ConfigError(f'--config.{key}={text}: {e}') from None
  with config.unlocked():
    node[leaf] = value


__all__ = ['base_config', 'RENAMED', 'renamed', 'move_renamed', 'experiments_dir', 'load', 'override', 'flatten', 'docs', 'describe', 'ConfigError', 'config_dict']
