"""data.pack: decoder windows carry segment ids derived from the token cache's document ends
(attention, positions and targets kept inside each document), and encoder fine-tuning packs
several labelled examples a row (each its own [CLS], positions, attention and label)."""

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import read_metrics, run_cli
from ssl_jax.data import labelled
from ssl_jax.data.shard_readers import ShardedTokens
from ssl_jax.data.text import LMBatches, window_segments
from ssl_jax.models.gpt import GPT
from ssl_jax.models.heads import BertClassifier
from ssl_jax.models.layers import TransformerConfig
from ssl_jax.models.llama import Llama
from ssl_jax.tasks import clm, classification, classify_text

DECODER = TransformerConfig(num_layers=2, num_heads=4, d_model=32, d_ff=64, vocab_size=40, max_len=64, init_std=0.3)
FAMILIES = {'gpt': (GPT, DECODER),
            'llama': (Llama, dataclasses.replace(DECODER, num_kv_heads=2, bias=False))}


def init(model, tokens):
  """Random parameters of `model`'s shapes (N(0, 0.3^2) everywhere: compiling init costs more)."""
  shapes = nn.meta.unbox(jax.eval_shape(lambda t: model.init(jax.random.key(0), t), tokens)['params'])
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(lambda x: (0.3 * rng.standard_normal(x.shape)).astype(np.float32), shapes)


def brute_segments(ends, offset, length):
  """Token j of the window at `offset` is in document k of it: k documents start in (offset, offset + j]."""
  return np.array([sum(offset < e <= offset + j for e in ends) for j in range(length)])


def test_segment_ids_at_window_edges():
  ends = np.array([5, 9, 10, 20])
  # A window that starts on a document's first token, one that ends on one, one inside a document,
  # one holding a one-token document (9).
  for offset in (5, 0, 11, 8, 4):
    np.testing.assert_array_equal(window_segments(ends, np.array([offset]), 6)[0], brute_segments(ends, offset, 6))
  tokens = np.arange(30)
  b = LMBatches(tokens, 5, 1, 0, pack=True, document_ends=ends)
  row = b._read(np.array([4]))           # tokens 4..9 (inputs 4..8, targets 5..9); documents start at 5 and 9
  np.testing.assert_array_equal(row['segment_ids'][0], [0, 1, 1, 1, 1])
  np.testing.assert_array_equal(row['target_mask'][0], [0, 1, 1, 1, 0])     # 4 -> 5 and 8 -> 9 cross
  row = b._read(np.array([5]))           # starts on a document's first token: id 0 there
  np.testing.assert_array_equal(row['segment_ids'][0], [0, 0, 0, 0, 1])
  np.testing.assert_array_equal(row['target_mask'][0], [1, 1, 1, 0, 0])     # 8 -> 9 and 9 -> 10 cross
  rng = np.random.default_rng(0)
  for _ in range(20):
    ends = np.unique(rng.integers(1, 60, 8))
    offset = int(rng.integers(0, 50))
    np.testing.assert_array_equal(window_segments(ends, np.array([offset]), 10)[0], brute_segments(ends, offset, 10))


def test_unpacked_batches_and_loss_are_what_they_were():
  """data.pack=false (the default) adds nothing to a batch, and the loss is the plain mean of
  the per-token losses, bit for bit; the packed batch has the same windows."""
  tokens = np.random.default_rng(1).integers(0, 40, 500)
  plain = LMBatches(tokens, 16, 4, 3)
  packed = LMBatches(tokens, 16, 4, 3, pack=True, document_ends=np.array([40, 100, 333]))
  for step in range(3):
    a, b = plain.batch(step), packed.batch(step)
    assert set(a) == {'inputs', 'targets'}
    np.testing.assert_array_equal(a['inputs'], b['inputs'])
    np.testing.assert_array_equal(a['targets'], b['targets'])
  model = GPT(DECODER)
  params = init(model, a['inputs'][:, :4])
  loss = jax.jit(lambda p, b: clm.loss_fn(model, p, b, jax.random.key(1), False)[0])(params, a)
  expected = jax.jit(lambda p, b: model.apply({'params': p}, b['inputs'], targets=b['targets']).mean())(params, a)
  assert float(loss) == float(expected)
  assert clm.model_inputs(a).keys() == {'tokens'}


@pytest.mark.parametrize('family', ['gpt', 'llama'])
def test_a_packed_batchs_loss_is_the_sum_of_its_documents_losses_one_by_one(family):
  module, cfg = FAMILIES[family]
  model = module(dataclasses.replace(cfg, attention='cpu', kernels='cpu'))
  lengths = [7, 12, 3, 20, 9, 1, 15, 11]
  tokens = np.random.default_rng(2).integers(1, 40, sum(lengths))
  ends = np.cumsum(lengths)
  batches = LMBatches(tokens, 24, 3, 0, pack=True, document_ends=ends)
  batch = batches.batch(0)
  assert (batch['target_mask'] == 0).any() and (batch['segment_ids'] > 0).any()    # boundaries inside
  params = init(model, batch['inputs'][:, :4])
  apply = jax.jit(lambda p, t, y, **kw: model.apply({'params': p}, t, targets=y, **kw))
  per_token = apply(params, batch['inputs'], batch['targets'], segment_ids=batch['segment_ids'])     # (B, T)
  packed_sum = float(jnp.sum(per_token * batch['target_mask']))
  # Each document (piece) of each row alone in a row of its own, at its start; causal, so what
  # follows it in that row (zeros) changes nothing.
  pieces = [(r, batch['segment_ids'][r] == k) for r in range(3) for k in np.unique(batch['segment_ids'][r])]
  alone = np.zeros((3, len(pieces), 24), np.int32)        # inputs, targets, kept targets
  for i, (r, at) in enumerate(pieces):
    for j, key in enumerate(('inputs', 'targets', 'target_mask')):
      alone[j, i, :at.sum()] = batch[key][r, at]           # kept: all but a target in the next document
  doc_loss = apply(params, alone[0], alone[1])                                                      # (pieces, T)
  alone_sum, count = float(jnp.sum(doc_loss * alone[2])), int(alone[2].sum())
  assert packed_sum == pytest.approx(alone_sum, rel=1e-5)
  loss = jax.jit(lambda p, b: clm.loss_fn(model, p, b, jax.random.key(1), False)[0])(params, batch)
  assert float(loss) == pytest.approx(alone_sum / count, rel=1e-5)
  # Without the segment ids, documents see the ones before them.
  crossing = apply(params, batch['inputs'], batch['targets'])
  assert np.abs(np.asarray(crossing - per_token) * batch['target_mask']).max() > 1e-3


CLS, SEP, PAD = 1, 2, 0
ENCODER = TransformerConfig(num_layers=2, num_heads=4, d_model=32, d_ff=64, vocab_size=50, max_len=32, init_std=0.3,
                            pre_norm=False, ln_eps=1e-12, activation='gelu')


def encoded_examples(n=13, seq_len=24):
  """`encode_pairs`-shaped rows: [CLS] A [SEP] (B [SEP]) of random lengths; label i = example i."""
  rng = np.random.default_rng(3)
  tokens = np.full((n, seq_len), PAD, np.int32)
  segments = np.zeros((n, seq_len), np.int32)
  for i in range(n):
    a = rng.integers(3, 50, rng.integers(1, 9))
    b = rng.integers(3, 50, rng.integers(1, 5)) if i % 3 == 0 else None
    row = [CLS, *a, SEP] + ([*b, SEP] if b is not None else [])
    tokens[i, :len(row)] = row
    if b is not None:
      segments[i, len(a) + 2:len(row)] = 1
  return {'tokens': tokens, 'segments': segments, 'padding': tokens != PAD, 'labels': np.arange(n, dtype=np.int32)}


def test_packed_examples_logits_and_loss_equal_the_unpacked_ones():
  examples = encoded_examples()
  packed = labelled.pack_rows(examples, 4, seed=0)
  n, rows = len(examples['labels']), len(packed['tokens'])
  assert rows < n and packed['valid'].sum() == n                              # packed, each example once
  assert sorted(packed['labels'][packed['valid'] > 0]) == list(range(n))
  assert packed['padding'].sum() == examples['padding'].sum()                 # no token lost
  model = BertClassifier(dataclasses.replace(ENCODER, attention='cpu', kernels='cpu'), num_classes=n)
  params = init(model, jnp.zeros((1, 4), jnp.int32))
  apply = jax.jit(lambda p, **kw: model.apply({'params': p}, **kw)['logits'])
  alone = apply(params, **classify_text.model_inputs(examples))                           # (N, classes)
  batch = labelled.LabelledBatches(packed, rows, seed=0).eval_batch(0)
  assert batch['weight'].shape == (rows, 4)
  inputs = classify_text.model_inputs(batch)
  assert {'pack_ids', 'cls_positions'} <= inputs.keys()
  together = apply(params, **inputs)                                                        # (rows, K, classes)
  valid = batch['weight'] > 0
  np.testing.assert_allclose(together[valid], alone[batch['labels'][valid]], atol=1e-5)
  loss, metrics = classification.scored(together, batch, train=True)
  unpacked = optax.softmax_cross_entropy_with_integer_labels(alone, examples['labels'])
  assert float(loss) == pytest.approx(float(unpacked.mean()), rel=1e-5)
  _, sums = classification.scored(together, batch, train=False)
  assert float(sums['count']) == n                                              # each example counted once
  assert float(metrics['accuracy']) == pytest.approx(float((alone.argmax(-1) == examples['labels']).mean()))
  # Without the pack ids the examples of a row see each other (and their positions run on).
  mixed = apply(params, tokens=batch['tokens'], segment_ids=batch['segments'], padding_mask=batch['padding'],
                cls_positions=batch['cls_positions'])
  assert not np.allclose(mixed[valid], together[valid], atol=1e-3)


def test_packing_fills_rows_best_fit_and_caps_examples_a_row():
  examples = encoded_examples(n=40)
  for per_row in (2, 5):
    packed = labelled.pack_rows(examples, per_row, seed=1)
    assert packed['valid'].sum(1).max() <= per_row
    for r in range(len(packed['tokens'])):          # each slot's [CLS] opens its run of pack ids
      for k in np.flatnonzero(packed['valid'][r]):
        at = packed['cls_positions'][r, k]
        assert packed['tokens'][r, at] == CLS and packed['pack_ids'][r, at] == k
  assert len(labelled.pack_rows(examples, 5, seed=1)['tokens']) < len(labelled.pack_rows(examples, 2, seed=1)['tokens'])


def test_pack_is_refused_by_tasks_that_do_not_pack():
  from ssl_jax import tasks  # pylint: disable=import-outside-toplevel
  assert tasks.get('clm', pack=True).name == 'clm'
  assert tasks.get('classify', 'bert_classifier', pack=True).name == 'classify_text'
  with pytest.raises(tasks.ConfigError, match='data.pack=true: task classify_decoder'):
    tasks.get('classify', 'gpt_classifier', pack=True)
  with pytest.raises(tasks.ConfigError, match='does not pack'):
    tasks.get('mlm_nsp', pack=True)


TINY = ['--config.model.num_layers=2', '--config.model.num_heads=2', '--config.model.d_model=32',
        '--config.model.d_ff=64', '--config.data.seq_len=32', '--config.train.batch_size=8', '--config.train.steps=3',
        '--config.train.warmup_steps=1', '--config.train.eval_every=3', '--config.train.eval_batches=1',
        '--config.train.sample_tokens=0', '--config.train.checkpoint_every=0']


def test_train_with_pack_from_the_command_line_on_jsonl_documents(tmp_path):
  docs = [f'document {i}: ' + ' '.join(['alpha', 'beta', 'gamma', 'delta'][(i * j) % 4] for j in range(i % 9 + 1))
          for i in range(300)]
  path = tmp_path / 'docs.jsonl'
  path.write_text(''.join(json.dumps({'text': d}) + '\n' for d in docs))
  workdir = str(tmp_path / 'run')
  run_cli('train', '--config', 'experiments/llama.py:llama:nano', f'--config.data.path={path}',
          '--config.data.pack=true', '--config.data.eval_fraction=0.2', *TINY,
          '--workdir', workdir)
  metrics = read_metrics(workdir)
  assert np.isfinite(metrics[-1]['train_loss']) and 'eval_loss' in metrics[-1]
  # The cache's document ends are where the documents end (a JSONL row one; char tokens a character).
  [cache] = [d for d in os.listdir(os.path.join(workdir, 'cache')) if d.startswith('tokens-')]
  stream = ShardedTokens(os.path.join(workdir, 'cache', cache))
  np.testing.assert_array_equal(stream.document_ends(), np.cumsum([len(d) + 2 for d in docs]))   # each + '\n\n'
  assert len(stream[:1000].document_ends()) == int((np.cumsum([len(d) + 2 for d in docs]) <= 1000).sum())


def test_finetune_with_pack_from_the_command_line(tmp_path):
  rng = np.random.default_rng(4)
  words = [''.join(rng.choice(list('abcdefghijklmnopqrstuvwxyz'), rng.integers(2, 7))) for _ in range(80)]
  rows = [' '.join(rng.choice(words, rng.integers(1, 12))) for _ in range(240)]
  path = tmp_path / 'train.tsv'
  path.write_text('text\tlabel\n' + ''.join(f'{r}\t{int(len(r) % 2)}\n' for r in rows))
  workdir = str(tmp_path / 'ft')
  run_cli('finetune', '--config', 'experiments/finetune_sst2.py', f'--config.data.path={path}',
          '--config.data.pack=true', '--config.model.vocab_size=300', '--config.data.eval_fraction=0.25', *TINY, '--config.train.eval_batches=0',
          '--workdir', workdir)
  evals = [r for r in read_metrics(workdir) if 'eval_accuracy' in r]
  assert evals and all(r['eval_examples'] == 60 for r in evals)      # every held-out example once
