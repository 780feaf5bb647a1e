"""`run.py convert`: a Hugging Face BERT or GPT-2 directory into a workdir every command
takes, or a workdir's model out to a Hugging Face directory.

  python run.py convert --from_hf DIR --workdir OUT   # -> OUT/params.safetensors, model.json, tokenizer, config.json
  python run.py convert --to_hf DIR --workdir W       # W's params (as above, or its newest checkpoint) -> DIR

The family comes from the files: config.json's model_type (bert, gpt2) on the way in, our
model.json's (or the training config's) family (bert, gpt) on the way out. The workdir may
be a gs:// URL (read and written through ssl_jax.storage); the Hugging Face DIR is local.
"""

import json
import os
from typing import List, Optional, Tuple

from ssl_jax import checkpoint, storage
from ssl_jax.config import base_config
from ssl_jax.convert import bert, gpt2, llama
from ssl_jax.convert.files import (HF_CONFIG, MODEL_FILE, PARAMS_FILE, VOCAB_FILE, ConversionError, has_params,
                                   load_params, read_json, save_params, write_json, write_text)
from ssl_jax.data import tokenizer as tokenizers
from ssl_jax.data.text import DataError
from ssl_jax.data.tokenizer import read_vocab
from ssl_jax.models import families

CONVERTIBLE = ('bert', 'gpt', 'llama')   # the families with a Hugging Face counterpart
DECODERS = ('gpt', 'llama')
LLAMA_KEYS = ('num_kv_heads', 'rope_theta', 'rope_scaling', 'tie_embeddings')


def load_workdir_params(workdir: str) -> Tuple[dict, dict, Optional[List[str]]]:
  """(params, model_config, vocab) of a workdir: its params.safetensors, else its newest checkpoint.

  A training workdir's model shape comes from its config.json; its checkpoint is read
  without the trainer (the parameters only, onto this host's default device).
  """
  if has_params(workdir):
    return load_params(workdir)
  config_path = storage.join(workdir, 'config.json')
  if not storage.exists(config_path):
    raise ConversionError(f'{workdir} has neither {PARAMS_FILE} nor a training config.json')
  run_config = read_json(config_path)
  model = run_config.get('model', {})
  if model.get('family') not in CONVERTIBLE:
    raise ConversionError(f'{config_path}: model.family is {model.get("family")!r}; only '
                          f'{", ".join(CONVERTIBLE)} convert')
  if model.get('scan_layers'):
    raise ConversionError(f'{config_path}: the run scanned its layers (model.scan_layers); export reads '
                          'one block per layer: train with model.scan_layers=false to export')
  seq_len = run_config.get('data', {}).get('seq_len', 0)
  model_config = dict(family=model['family'], num_layers=model['num_layers'], num_heads=model['num_heads'],
                      d_model=model['d_model'], d_ff=model['d_ff'], vocab_size=model['vocab_size'],
                      max_len=model.get('max_len') or seq_len, activation=model['activation'],
                      ln_eps=model.get('ln_eps') or families.get(model['family']).ln_eps,
                      dropout=model.get('dropout', 0.0), bias=model.get('bias', True),
                      **{k: model[k] for k in LLAMA_KEYS if k in model and (model[k] or k == 'tie_embeddings')})
  try:
    params = checkpoint.read_params(workdir)
  except checkpoint.CheckpointError as e:
    raise ConversionError(str(e)) from None
  vocab_path = storage.join(workdir, VOCAB_FILE)
  return params, model_config, read_vocab(vocab_path) if storage.exists(vocab_path) else None


def convert_command(from_hf: Optional[str], to_hf: Optional[str], workdir: str) -> dict:
  """`run.py convert`: exactly one of from_hf (HF dir -> workdir) and to_hf (workdir -> HF dir).

  The family comes from the files: config.json's model_type (bert, gpt2) on the way in, our
  model.json's (or the training config's) family (bert, gpt) on the way out."""
  if bool(from_hf) == bool(to_hf):
    raise ConversionError('convert needs exactly one of --from_hf DIR and --to_hf DIR')
  if not workdir:
    raise ConversionError('convert needs --workdir')
  if from_hf:
    report = import_hf(from_hf, workdir)
  else:
    params, model_config, vocab = load_workdir_params(workdir)
    if model_config.get('family') == 'gpt':
      report = {'from': workdir, 'to': to_hf, 'files': gpt2.save_hf_gpt2(params, model_config, to_hf),
                'note': 'weights only: our char or sentencepiece tokenizer is not GPT-2\'s byte-level BPE'}
    elif model_config.get('family') == 'llama':
      report = {'from': workdir, 'to': to_hf, 'files': llama.save_hf_llama(params, model_config, to_hf),
                'note': 'weights only: a char or sentencepiece tokenizer has no tokenizer.json'}
    else:
      report = {'from': workdir, 'to': to_hf, 'files': bert.save_hf_bert(params, model_config, to_hf, vocab)}
    if vocab is None and model_config.get('family') not in DECODERS:
      report['note'] = f'no {VOCAB_FILE} in {workdir}: the run\'s tokenizer is not WordPiece, so none was written'
    tok = tokenizers.load(workdir)
    if tok is not None and tok.kind == 'huggingface':   # transformers reads it as it is
      write_text(storage.join(to_hf, 'tokenizer.json'), tok.json_text)
      report['files'].append('tokenizer.json')
      report.pop('note', None)
  print(json.dumps(report), flush=True)
  return report


def import_hf(from_hf: str, workdir: str) -> dict:
  """`convert --from_hf`: a Hugging Face BERT or GPT-2 directory into a workdir that every
  command takes (eval, generate, fewshot, summarize, and init_from of train and finetune):
  params.safetensors + model.json, the tokenizer (tokenizers.load: vocab.txt, tokenizer.json
  or vocab.json + merges.txt) and config.json, the run config those commands read.

  Everything is read and checked before anything is written; each file is written atomically."""
  if storage.listdir(storage.join(workdir, 'checkpoints')):
    raise ConversionError(f'{workdir} holds a training run\'s checkpoints: convert into a new --workdir')
  model_type = read_json(os.path.join(from_hf, HF_CONFIG)).get('model_type')
  if model_type == 'gpt2':
    params, model_config = gpt2.load_hf_gpt2(from_hf)
    model_config['fresh_init'] = []
  elif model_type in llama.MODEL_TYPES:
    params, model_config = llama.load_hf_llama(from_hf)
    model_config['fresh_init'] = []
  elif model_type in ('bert', None):
    params, model_config, _ = bert.load_hf_bert(from_hf)
  else:
    raise ConversionError(f'{os.path.join(from_hf, HF_CONFIG)}: model_type {model_type!r}; bert, gpt2, '
                          f'{", ".join(llama.MODEL_TYPES)} convert')
  try:
    tok = tokenizers.load(from_hf)
  except (DataError, OSError, ValueError) as e:
    raise ConversionError(f'{from_hf}: its tokenizer does not load ({e})') from None
  if tok is not None and tok.vocab_size > model_config['vocab_size']:
    raise ConversionError(f'{from_hf}: the tokenizer has {tok.vocab_size} tokens, the model\'s vocabulary '
                          f'{model_config["vocab_size"]}')
  config = run_config(model_config, tok, os.path.basename(os.path.normpath(from_hf)))
  save_params(params, model_config, workdir)
  files = [PARAMS_FILE, MODEL_FILE]
  if tok is not None:
    tokenizers.save(tok, workdir)
    files += [tokenizers.TOKENIZER_FILE, tok.state().get('file') or tok.state().get('vocab')]
  write_json(storage.join(workdir, 'config.json'), config)
  report = {'from': from_hf, 'to': workdir, 'files': files + ['config.json'],
            'tokenizer': tok.kind if tok is not None else None,
            'fresh_init': model_config['fresh_init'], 'unused_tensors': model_config['unused_tensors']}
  if tok is None:
    report['note'] = (f'no tokenizer in {from_hf} (tokenizer.json, vocab.txt, or vocab.json + merges.txt): '
                      'weights only; commands that read text need one')
  return report


def run_config(model_config: dict, tok, name: str) -> dict:
  """The run config (config.json) of an imported checkpoint: its family's objective, its shape,
  and `data.tokenizer` naming the kind of the tokenizer saved beside it."""
  c = base_config()
  family = model_config['family']
  c.experiment = f'imported_{name}'
  c.task = 'clm' if family in DECODERS else 'mlm_nsp'
  c.model.family = family
  for key in ('num_layers', 'num_heads', 'd_model', 'd_ff', 'vocab_size', 'max_len', 'activation', 'bias', 'dropout',
              'ln_eps') + LLAMA_KEYS:
    if key in model_config:
      c.model[key] = type(c.model[key])(model_config[key])
  # A decoder's windows are its context (a long-context llama's capped at 4,096 tokens).
  c.data.seq_len = min(4096, model_config['max_len']) if family in DECODERS else min(128, model_config['max_len'])
  c.data.tokenizer = tok.kind if tok is not None else 'char'
  return c.to_dict()
