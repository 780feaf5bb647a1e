"""Model shapes, parameter counts and causal masking."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.models import gpt, sizes
from ssl_jax.models.layers import TransformerConfig


def gpt_config(name, vocab=50257):
  return TransformerConfig(**{**sizes.decode(name), 'vocab_size': vocab})


def param_count(cfg):
  shapes = jax.eval_shape(lambda: gpt.GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nn.meta.unbox(shapes)))


def test_gpt2_124m_parameter_count():
  # GPT-2 small with tied embeddings: 124,439,808 (as Hugging Face's GPT2LMHeadModel counts).
  assert param_count(gpt_config('gpt2:124M')) == 124_439_808


@pytest.mark.parametrize('name, billions', [('gpt2:1.5B', 1.558), ('gpt3:175B', 174.6)])
def test_named_sizes_match_their_papers(name, billions):
  vocab = 50257 if name.startswith('gpt2') else 50304
  assert param_count(gpt_config(name, vocab)) / 1e9 == pytest.approx(billions, rel=0.01)


def test_unknown_size_names_the_known_ones():
  with pytest.raises(ValueError, match='gpt2:124M'):
    sizes.decode('gpt2:125M')


def tiny_model():
  cfg = TransformerConfig(num_layers=2, num_heads=2, d_model=32, d_ff=64, vocab_size=50, max_len=16)
  model = gpt.GPT(cfg)
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 50)
  params = nn.meta.unbox(model.init(jax.random.key(0), tokens)['params'])
  return model, params, tokens


def test_output_shape_and_tied_head():
  model, params, tokens = tiny_model()
  logits = model.apply({'params': params}, tokens)
  assert logits.shape == (2, 16, 50) and logits.dtype == jnp.float32
  assert 'lm_head' not in params and params['wte'].shape == (50, 32)   # the output layer is wte


def test_changing_a_later_token_never_changes_an_earlier_logit():
  model, params, tokens = tiny_model()
  base = model.apply({'params': params}, tokens)
  for t in (0, 5, 15):
    changed = tokens.at[:, t].set((tokens[:, t] + 7) % 50)
    out = model.apply({'params': params}, changed)
    np.testing.assert_array_equal(np.asarray(out[:, :t]), np.asarray(base[:, :t]))
    assert not np.allclose(out[:, t:], base[:, t:])   # and the token itself does matter


def test_sequence_longer_than_positions_is_an_error():
  model, params, _ = tiny_model()
  with pytest.raises(ValueError, match='longer than the model'):
    model.apply({'params': params}, jnp.zeros((1, 17), jnp.int32))


def test_residual_projections_are_scaled_at_init():
  cfg = TransformerConfig(num_layers=8, num_heads=4, d_model=256, d_ff=1024, vocab_size=64, max_len=8)
  params = nn.meta.unbox(gpt.GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params'])
  block = params['blocks']['h_0']
  assert float(jnp.std(block['mlp']['fc']['kernel'])) == pytest.approx(0.02, rel=0.05)
  assert float(jnp.std(block['mlp']['proj']['kernel'])) == pytest.approx(0.02 / np.sqrt(16), rel=0.05)


# --- BERT -------------------------------------------------------------------------------

from ssl_jax.models import bert  # pylint: disable=wrong-import-position


def bert_model(name='bert:tiny', vocab=30522, **overrides):
  fields = {**sizes.decode(name), **overrides}
  return bert.BERT(TransformerConfig(vocab_size=vocab, pre_norm=False, ln_eps=1e-12, activation='gelu', **fields))


def test_bert_base_parameter_count_matches_bert_for_pretraining():
  # Hugging Face's BertForPreTraining (bert-base-uncased shape): 110,106,428 parameters.
  model = bert_model('bert:base')
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  assert sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nn.meta.unbox(shapes))) == 110_106_428


def test_bert_padding_is_invisible_and_mlm_head_reads_only_masked_positions():
  model = bert_model('bert:tiny', vocab=100, max_len=16)
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 100)
  padding = jnp.arange(16)[None, :] < jnp.array([[10], [16]])          # first row: 10 real tokens
  segments = (jnp.arange(16)[None, :] >= 5).astype(jnp.int32).repeat(2, 0)
  params = nn.meta.unbox(model.init(jax.random.key(0), tokens, segments, padding)['params'])
  out = model.apply({'params': params}, tokens, segments, padding)
  assert out['mlm_logits'].shape == (2, 16, 100) and out['nsp_logits'].shape == (2, 2)
  changed = tokens.at[0, 12].set((tokens[0, 12] + 1) % 100)          # a padded position
  out2 = model.apply({'params': params}, changed, segments, padding)
  np.testing.assert_allclose(out2['hidden'][0, :10], out['hidden'][0, :10], atol=1e-6)
  positions = jnp.array([[1, 3, 7], [0, 2, 15]])
  gathered = model.apply({'params': params}, tokens, segments, padding, masked_positions=positions)
  assert gathered['mlm_logits'].shape == (2, 3, 100)
  np.testing.assert_allclose(gathered['mlm_logits'],
                             jnp.take_along_axis(out['mlm_logits'], positions[..., None], axis=1), atol=1e-5)


@pytest.mark.parametrize('experiment', ['default.py', 'bert.py:tiny'])
def test_remat_policies_give_the_same_gradients(corpus, tmp_path, experiment):
  from ssl_jax import trainer  # pylint: disable=import-outside-toplevel
  from conftest import tiny_config  # pylint: disable=import-outside-toplevel
  data = '' if experiment.startswith('vit') else corpus
  grads = {}
  for policy in ('none', 'dots', 'full'):
    s = trainer.setup(tiny_config(data, experiment, **{'model.remat': policy}), str(tmp_path / policy),
                    compile_steps=False)
    params = s.init_fn(jax.random.key(0)).params
    batch = s.global_batch(s.data.train.batch(0))
    loss = lambda p, b: s.loss_fn(s.model, p, b, jax.random.key(1), True)[0]  # pylint: disable=cell-var-from-loop
    grads[policy] = jax.tree_util.tree_leaves(jax.jit(jax.grad(loss))(params, batch))
    rematerialised = 'remat' in str(jax.make_jaxpr(jax.grad(loss))(params, batch))
    assert rematerialised == (policy != 'none')
  for policy in ('dots', 'full'):
    for a, b in zip(grads['none'], grads[policy]):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)


from ssl_jax.models import layers  # pylint: disable=wrong-import-position


def test_hashed_dropout_keeps_the_right_share_independently_and_reproducibly():
  x = jnp.ones((64, 64, 256))
  drop = layers.Dropout(0.1)
  a = drop.apply({}, x, deterministic=False, rngs={'dropout': jax.random.key(0)})
  b = drop.apply({}, x, deterministic=False, rngs={'dropout': jax.random.key(1)})
  kept_a, kept_b = np.asarray(a != 0), np.asarray(b != 0)
  assert abs(kept_a.mean() - 0.9) < 0.003 and abs(kept_b.mean() - 0.9) < 0.003      # 1M draws: sd 0.0003
  assert np.allclose(np.asarray(a)[kept_a], 1 / 0.9)                                # inverted scaling
  both = (kept_a & kept_b).mean()
  assert abs(both - 0.81) < 0.003                                                    # two keys: independent
  assert abs(kept_a[:, :, 1:].astype(float).ravel() @ kept_a[:, :, :-1].astype(float).ravel()
             / kept_a[:, :, 1:].size - 0.81) < 0.003                                 # neighbours: independent
  again = drop.apply({}, x, deterministic=False, rngs={'dropout': jax.random.key(0)})
  assert np.array_equal(np.asarray(again), np.asarray(a))
  assert drop.apply({}, x, deterministic=True) is x
  assert not np.asarray(layers.Dropout(1.0).apply({}, x, deterministic=False,
                                                  rngs={'dropout': jax.random.key(0)})).any()


def _stack_blocks(tree):
  """Unrolled parameters (blocks/h_0 ... h_{L-1}) in the scanned layout (blocks/h/block, stacked)."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for key, value in tree.items():
    if key == 'blocks' and 'h_0' in value:
      layers = [value[f'h_{i}'] for i in range(len(value))]
      out[key] = {'h': {'block': jax.tree_util.tree_map(lambda *xs: np.stack(xs), *layers)}}
    else:
      out[key] = _stack_blocks(value)
  return out


@pytest.mark.parametrize('experiment', ['default.py', 'bert.py:tiny'])
def test_scanned_layers_give_the_unrolled_losses_and_gradients(corpus, experiment, tmp_path):
  import tempfile  # pylint: disable=import-outside-toplevel
  from conftest import tiny_config  # pylint: disable=import-outside-toplevel
  from ssl_jax import trainer  # pylint: disable=import-outside-toplevel
  results = {}
  for scan in (False, True):
    config = tiny_config(corpus, experiment, **{'model.scan_layers': scan, 'model.num_layers': 3,
                                                'model.dropout': 0.0})
    s = trainer.setup(config, tempfile.mkdtemp(), compile_steps=False)
    if not scan:
      params = jax.device_get(s.init_fn(jax.random.key(0)).params)
    batch = s.data.train.batch(0)
    loss_fn = s.loss_fn
    p = _stack_blocks(params) if scan else params
    (loss, _), grads = jax.jit(jax.value_and_grad(
        lambda q, b: loss_fn(s.model, q, b, jax.random.key(1), True), has_aux=True))(p, batch)
    results[scan] = (float(loss), jax.device_get(grads))
  assert results[True][0] == pytest.approx(results[False][0], rel=1e-6)
  unrolled, scanned = _stack_blocks(results[False][1]), results[True][1]
  assert jax.tree_util.tree_structure(unrolled) == jax.tree_util.tree_structure(scanned)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(unrolled)[0], jax.tree_util.tree_leaves(scanned)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
