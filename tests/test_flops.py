"""The FLOP formulas behind MFU against counts taken from the compiled train step itself."""

import tempfile

import pytest

from ssl_jax import hlo, trainer

from conftest import tiny_config

# Unrolled layers, XLA's plain attention (every score computed, masked or not) and float32: the
# program's matrix products are then the model's, one for one.
PLAIN = {'model.kernels': 'xla', 'model.attention': 'xla', 'model.d_model': 128, 'model.d_ff': 512,
         'model.num_heads': 4, 'train.batch_size': 4}


@pytest.mark.parametrize('experiment,which,extra', [
    # GPT's program computes the whole score matrix, so it matches the Megatron count (index 1).
    ('default.py', 1, {'data.seq_len': 64}),
    # BERT: the MLM head at the 5 masked positions only, every score computed: the model count.
    ('bert.py:tiny', 0, {'data.seq_len': 64, 'data.max_predictions': 5}),
    # MAE: the encoder sees only the visible quarter of the patches: the model count.
    ('vit_mae.py', 0, {'model.decoder_d_model': 64, 'model.decoder_heads': 2, 'model.decoder_layers': 1}),
    # Colorization: the encoder on every patch and the colour head at each of them.
    ('vit_colorize.py', 0, {}),
])
def test_flops_per_step_equal_the_compiled_programs_products(corpus, experiment, which, extra):
  config = tiny_config('' if experiment.startswith('vit') else corpus, experiment, **PLAIN, **extra)
  s = trainer.setup(config, tempfile.mkdtemp())
  ours = s.task.flops_per_step(s.config)
  # Every dot and convolution of the optimized program, counted from its text (2 x M x N x K).
  products = hlo.costs(s.train_fn.as_text())['flops']
  assert products == pytest.approx(ours[which], rel=0.005), (products, ours)
  # XLA's own count adds the elementwise work (norms, GELU, softmax, Adam) on top: a few percent.
  analysis = s.train_fn.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  assert 1.0 <= analysis['flops'] / ours[which] <= 1.1, (analysis['flops'], ours)
  if which == 0:   # every score computed: the Megatron count (mfu_megatron) adds no unexecuted work
    assert ours[1] == ours[0]
