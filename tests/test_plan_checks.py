"""`run.py plan` and `bench`: the roofline against a hand computation, a malformed memory size,
and the temporary folders they make without --workdir."""

import os

import pytest

from conftest import last_json_line, run_cli
from ssl_jax import config as config_lib, hlo, plan

# Datasheet figures of a TPU v5p, written out here so that a table entry off by 1,000x fails.
V5P_PEAK, V5P_BANDWIDTH = 459e12, 2.765e12

MATMUL = '''HloModule m

ENTRY %main (a: bf16[ROWS,INNER], b: bf16[INNER,COLS]) -> bf16[ROWS,COLS] {
  %a = bf16[ROWS,INNER]{1,0} parameter(0)
  %b = bf16[INNER,COLS]{1,0} parameter(1)
  ROOT %c = bf16[ROWS,COLS]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
'''


@pytest.mark.parametrize('m, k, n, bound_by', [(8192, 8192, 8192, 'compute'), (8192, 128, 8192, 'memory')])
def test_roofline_of_a_small_program_matches_a_hand_computation(m, k, n, bound_by):
  text = MATMUL.replace('ROWS', str(m)).replace('INNER', str(k)).replace('COLS', str(n))
  program = hlo.costs(text)
  flops, moved = 2 * m * k * n, 2 * (m * k + k * n + m * n)
  assert program['flops'] == flops and program['hbm_bytes'] == moved
  _, _, bandwidth, peak = plan.accelerator_spec('TPU v5p')
  model_flops = 0.8 * flops
  roof = plan.roofline(program, model_flops, peak, bandwidth)
  assert roof['compute_s'] == pytest.approx(flops / V5P_PEAK, rel=1e-9)
  assert roof['memory_s'] == pytest.approx(moved / V5P_BANDWIDTH, rel=1e-9)
  assert roof['bound_by'] == bound_by
  # 8192^3: 2.4 ms of products against 0.36 ms of traffic; K = 128: 37.4 us against 4.9 ms.
  slowest = max(flops / V5P_PEAK, moved / V5P_BANDWIDTH)
  assert roof['mfu_bound'] == pytest.approx(model_flops / (slowest * V5P_PEAK), rel=1e-9)
  assert (roof['mfu_bound'] == pytest.approx(0.8)) == (bound_by == 'compute')


def test_a_malformed_memory_size_is_a_one_line_error():
  with pytest.raises(config_lib.ConfigError, match="--accelerator '1.2.3GB'"):
    plan.accelerator_spec('1.2.3GB')
  assert plan.accelerator_spec('.5GB')[1] == 0.5e9 and plan.accelerator_spec('24 gb')[1] == 24e9
  proc = run_cli('plan', '--config', 'experiments/gpt.py:gpt:nano', '--devices', '1', '--accelerator', '1.2.3GB',
                 check=False)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr
  assert [line for line in proc.stderr.splitlines() if '1.2.3GB' in line]


TINY = ['--config.model.num_layers=1', '--config.model.num_heads=2', '--config.model.d_model=32',
        '--config.model.d_ff=64', '--config.data.seq_len=32', '--config.train.batch_size=4']


def test_plan_without_a_workdir_leaves_no_temporary_folder_and_its_roofline_uses_the_datasheet(tmp_path):
  scratch = tmp_path / 'tmp'
  scratch.mkdir()
  proc = run_cli('plan', '--config', 'experiments/gpt.py:gpt:nano', *TINY, '--devices', '1',
                 '--accelerator', 'TPU v5p', env={'TMPDIR': str(scratch)})
  assert os.listdir(scratch) == []
  r = last_json_line(proc.stdout)
  roof = r['roofline']
  assert roof['compute_s'] == pytest.approx(r['program_flops_per_device'] / V5P_PEAK, rel=1e-9)
  assert roof['memory_s'] == pytest.approx(r['hbm_bytes_per_device'] / V5P_BANDWIDTH, rel=1e-9)
  assert 0 < r['hbm_bytes_per_device'] <= r['hbm_bytes_per_device_whole_operands']


def test_bench_without_a_workdir_leaves_no_temporary_folder(tmp_path):
  scratch = tmp_path / 'tmp'
  scratch.mkdir()
  proc = run_cli('bench', '--config', 'experiments/gpt.py:gpt:nano', *TINY, '--config.bench.steps=2',
                 '--config.bench.warmup=1', env={'TMPDIR': str(scratch)})
  assert last_json_line(proc.stdout)['tokens_per_sec'] > 0
  assert os.listdir(scratch) == []
