"""`run.py plan`: ahead-of-time memory, FLOPs and collectives from abstract shapes."""

import os
import tempfile

import pytest

from conftest import last_json_line, run_cli
from ssl_jax import config as config_lib, plan, trainer

SMALL = ['--config.model.num_layers=2', '--config.model.num_heads=2', '--config.model.d_model=64',
         '--config.model.d_ff=256', '--config.data.seq_len=64', '--config.train.batch_size=16']

HLO = '''HloModule m

%inner (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %ar = f32[8]{0} all-reduce(%x), replica_groups={}
  ROOT %t = (s32[], f32[8]) tuple(%i, %ar)
}

%outer (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %w2 = (s32[], f32[8]) while(%p), condition=%c2, body=%inner, backend_config={"known_trip_count":{"n":"3"}}
  %ag = f32[16]{0} all-gather(%y), dimensions={0}
  ROOT %t = (s32[], f32[8]) tuple(%i, %y)
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %w = (s32[], f32[8]) while(%init), condition=%c1, body=%outer, backend_config={"known_trip_count":{"n":"4"}}
  %rs = bf16[4]{0} reduce-scatter(%a), dimensions={0}
  ROOT %r = f32[8]{0} copy(%a)
}
'''


def test_collective_bytes_count_loop_iterations():
  from ssl_jax import hlo
  got = hlo.costs(HLO)['collective_bytes']
  assert got['all-reduce'] == 32 * 3 * 4          # f32[8] in a loop of 3 inside a loop of 4
  assert got['all-gather'] == 64 * 4
  assert got['reduce-scatter'] == 8
  assert got['all-to-all'] == got['collective-permute'] == 0


def test_plan_on_8_virtual_devices_reports_memory_and_fit(tmp_path):
  args = ['plan', '--config', 'experiments/gpt.py:gpt:nano', *SMALL, '--devices', '8', '--config.mesh.data=2',
          '--config.mesh.fsdp=2', '--config.mesh.tensor=2', '--config.model.scan_layers=true']
  proc = run_cli(*args, '--workdir', str(tmp_path))
  r = last_json_line(proc.stdout)
  assert r['devices'] == 8 and r['mesh'] == [2, 2, 2] and r['fits']
  b = r['bytes_per_device']
  assert 0 < b['params'] < r['params'] * 4 / 2      # float32, split at least two ways
  assert b['optimizer_state'] >= 2 * b['params']     # Adam's two moments, sharded alike
  assert b['peak'] >= b['params'] + b['optimizer_state'] and b['activations_and_temporaries'] > 0
  # Model FLOPs against the compiled program's own products summed over the 8 devices: the
  # program computes every attention score, the model count (causal) only the lower triangle,
  # so they differ by exactly the scores above the diagonal (3 x 2 layers x 4 T d per token).
  layers, d, length, tokens = 2, 64, 64, 16 * 64
  above_diagonal = 3 * layers * 4 * length * d * tokens * (length - 1) / (2 * length)
  assert r['program_flops_per_device'] * 8 - r['flops_per_step'] == pytest.approx(above_diagonal, rel=1e-3)
  assert sum(r['collective_bytes_per_device'].values()) > 0
  assert os.path.exists(tmp_path / 'plan.json') and 'fits:' in proc.stdout
  proc = run_cli(*args, '--accelerator', '0.0001GB')
  assert not last_json_line(proc.stdout)['fits'] and 'does NOT fit: each device needs' in proc.stdout


@pytest.mark.parametrize('size, billions', [('gpt3:175B', 174.6), ('gpt3:1.3B', 1.3), ('gpt2:124M', 0.124)])
def test_named_sizes_have_their_papers_parameter_counts(size, billions):
  config = config_lib.load(os.path.join(os.path.dirname(os.path.dirname(__file__)), 'experiments', 'gpt.py') +
                           ':' + size)
  with config.unlocked():
    config.train.batch_size = 1
  s = trainer.setup(config, tempfile.mkdtemp(), compile_steps=False)    # abstract: nothing allocated
  assert s.num_params / 1e9 == pytest.approx(billions, rel=0.01 if size == 'gpt3:175B' else 0.03)


TPU_LIKE = '''HloModule m

%fused_mm (p0: bf16[8,64], p1: bf16[64,32]) -> bf16[8,32] {
  %p0 = bf16[8,64]{1,0} parameter(0)
  %p1 = bf16[64,32]{1,0} parameter(1)
  ROOT %convolution.1 = bf16[8,32]{1,0} convolution(%p0, %p1), dim_labels=bf_io->bf
}

%padded (p0: bf16[4,16,3], p1: bf16[3,16,5]) -> bf16[4,3,5] {
  %p0 = bf16[4,16,3]{2,1,0} parameter(0)
  %p1 = bf16[3,16,5]{2,1,0} parameter(1)
  ROOT %convolution.2 = bf16[4,3,5]{2,1,0} convolution(%p0, %p1), window={size=3 pad=1_1 rhs_reversal=1}, dim_labels=bf0_0io->b0f
}

%cond (c: (s32[], bf16[8,64])) -> pred[] {
  %c = (s32[], bf16[8,64]) parameter(0)
  %n = s32[] constant(6)
  %i = s32[] get-tuple-element(%c), index=0
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body (b: (s32[], bf16[8,64])) -> (s32[], bf16[8,64]) {
  %b = (s32[], bf16[8,64]) parameter(0)
  %x = bf16[8,64]{1,0} get-tuple-element(%b), index=1
  %w = bf16[64,32]{1,0} constant({...})
  %f = bf16[8,32]{1,0} fusion(%x, %w), kind=kOutput, calls=%fused_mm
  %i = s32[] get-tuple-element(%b), index=0
  ROOT %t = (s32[], bf16[8,64]) tuple(%i, %x)
}

ENTRY %main (a: bf16[8,64], q: bf16[2,4,256,16]) -> bf16[8,64] {
  %a = bf16[8,64]{1,0} parameter(0)
  %q = bf16[2,4,256,16]{3,2,1,0} parameter(1)
  %w = (s32[], bf16[8,64]) while(%init), condition=%cond, body=%body
  %m = s8[1,1,1]{2,1,0} constant({...})
  %splash_mha_fwd_residuals.3 = (bf16[2,4,256,16]{3,2,1,0}, f32[2,4,256,128]{3,2,1,0}) custom-call(%m, %m, %q, %q, %q), custom_call_target="tpu_custom_call"
  %x = bf16[4,16,3]{2,1,0} parameter(2)
  %k = bf16[3,16,5]{2,1,0} parameter(3)
  %c = bf16[4,3,5]{2,1,0} fusion(%x, %k), kind=kOutput, calls=%padded
  ROOT %r = bf16[8,64]{1,0} copy(%a)
}
'''


def test_program_costs_from_tpu_style_hlo():
  from ssl_jax import hlo
  got = hlo.costs(TPU_LIKE, causal=True)
  matmul = 2 * 8 * 64 * 32 * 6                             # in a loop whose condition says i < 6
  # The padded window of 3 over 3 positions: (output, tap) pairs inside the input are 3+2+2+... = 7,
  # not 3 x 3 (XLA:TPU writes small dot axes as padded spatial dimensions).
  padded = 2 * 4 * 5 * 16 * 7
  flash = 2 * 2 * (2 * 4 * 256 * 256 * 16) * 0.5            # forward: 2 products, causal: half
  assert got['flops'] == pytest.approx(matmul + padded + flash)
  assert got['custom_calls'] == {'splash_mha_fwd_residuals': 1}
  assert hlo.attention_kernel(got['custom_calls']) == 'splash'
  per_fusion = (8 * 64 + 64 * 32 + 8 * 32) * 2               # operands and result of the fusion, bf16
  splash_io = 2 + 3 * 2 * 4 * 256 * 16 * 2 + (2 * 4 * 256 * 16 * 2 + 2 * 4 * 256 * 128 * 4)   # masks, q k v; o, lse
  conv_io = (4 * 16 * 3 + 3 * 16 * 5 + 4 * 3 * 5) * 2
  assert got['hbm_bytes'] == per_fusion * 6 + splash_io + conv_io + 2 * 8 * 64 * 2


@pytest.mark.parametrize('name, canonical', [('h100', 'H100'), ('H200', 'H200'), ('tpu v5p', 'TPU v5p'),
                                             ('v5e', 'TPU v5e'), ('TPU-v4', 'TPU v4'), ('a100-40gb', 'A100-40GB')])
def test_accelerator_names_are_case_insensitive(name, canonical):
  spec = plan.accelerator_spec(name)
  from ssl_jax import flops
  assert spec[0] == canonical and spec[1:3] == plan.ACCELERATORS[canonical] and spec[3] in flops.PEAKS.values()


def test_a_memory_size_as_accelerator_has_no_roofline_and_an_unknown_name_is_refused():
  assert plan.accelerator_spec('24GB')[1:] == (24e9, None, None)
  with pytest.raises(config_lib.ConfigError, match="--accelerator 'Z80'"):
    plan.accelerator_spec('Z80')
