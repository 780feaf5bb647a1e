"""benchmarks/vs_maxtext.py's logic on small stored HLO texts, without MaxText: which dump file is
the train step, what its memory line says, the table's figures and ratios, and the command for
either layout of a MaxText checkout."""

import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import vs_maxtext  # noqa: E402  pylint: disable=wrong-import-position,import-error

OURS = '''HloModule ours

ENTRY %main (a: bf16[1024,1024], b: bf16[1024,1024]) -> bf16[1024,1024] {
  %a = bf16[1024,1024]{1,0} parameter(0)
  %b = bf16[1024,1024]{1,0} parameter(1)
  %ag = bf16[1024,1024]{1,0} all-gather(%b), dimensions={0}
  ROOT %c = bf16[1024,1024]{1,0} dot(%a, %ag), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
'''
# MaxText's stand-in: the same product twice over, and an all-reduce of its result.
THEIRS = OURS.replace('ROOT %c', '%c').replace('\n}', '''
  %d = bf16[1024,1024]{1,0} dot(%c, %ag), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %r = bf16[1024,1024]{1,0} all-reduce(%d), replica_groups={}, to_apply=%add
}''')


def test_table_rows_and_ratios_from_two_programs():
  model_flops = 2 * 1024 ** 3
  ours = vs_maxtext.side(OURS, temp=1_000_000_000, code=30_000_000, compile_s=80.0, model_flops_per_chip=model_flops,
                         accelerator='TPU v5p')
  theirs = vs_maxtext.side(THEIRS, temp=2_000_000_000, code=24_000_000, compile_s=60.0,
                           model_flops_per_chip=model_flops, accelerator='TPU v5p')
  mb = 1024 * 1024 * 2
  assert ours['program_flops'] == model_flops and theirs['program_flops'] == 2 * model_flops
  assert ours['hbm_bytes'] == 2 * mb + 3 * mb                 # the gather's operand and result; the dot's
  assert theirs['hbm_bytes'] == 2 * mb + 2 * 3 * mb + 2 * mb
  assert ours['all-gather_bytes'] == theirs['all-gather_bytes'] == mb and theirs['all-reduce_bytes'] == mb
  # Compute-bound at the v5p's 459 TFLOP/s and 2.765 TB/s (4.7 us of products against 3.8 us of
  # traffic): ours does the model's FLOPs once, theirs twice.
  assert ours['bound_by'] == theirs['bound_by'] == 'compute'
  assert ours['mfu_bound'] == pytest.approx(1.0) and theirs['mfu_bound'] == pytest.approx(0.5)
  text = vs_maxtext.table(ours, theirs)
  rows = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:5]] for line in text.splitlines()[2:]}
  assert rows['program FLOPs'] == ['0.00215 T', '0.00429 T', '0.50']
  assert rows['temporaries'] == ['1 GB', '2 GB', '0.50']
  assert rows['compile time'] == ['80 s', '60 s', '1.33']
  assert rows['all-reduce'] == ['0 MB', '2.1 MB', '0.00'] and rows['reduce-scatter'] == ['0 MB', '0 MB', '-']
  assert rows['bound by'][:2] == [ours['bound_by'], theirs['bound_by']]


def test_the_train_step_is_the_largest_train_step_dump(tmp_path):
  for name, size in (('module_0001.jit_train_step.cl_1.after_optimizations.txt', 50),
                     ('module_0002.jit_train_step.cl_2.after_optimizations.txt', 500),
                     ('module_0002.jit_train_step.cl_2.after_optimizations-buffer-assignment.txt', 5000),
                     ('module_0003.jit_init.cl_3.after_optimizations.txt', 9000),
                     ('module_0002.jit_train_step.cl_2.before_optimizations.txt', 900)):
    (tmp_path / name).write_text('x' * size)
  assert os.path.basename(vs_maxtext.step_program(str(tmp_path))) == \
      'module_0002.jit_train_step.cl_2.after_optimizations.txt'
  with pytest.raises(SystemExit, match='no .*train_step'):
    vs_maxtext.step_program(str(tmp_path / 'nothing'))


def test_memory_of_reads_the_compiled_memory_stats_line():
  log = ('Jitting and compilation complete!\nMemory analysis: CompiledMemoryStats(generated_code_size_in_bytes=23790080, '
         'argument_size_in_bytes=403727360, temp_size_in_bytes=2148065440, host_temp_size_in_bytes=0)\n')
  got = vs_maxtext.memory_of(log)
  assert got['temp_size_in_bytes'] == 2148065440 and got['generated_code_size_in_bytes'] == 23790080
  assert vs_maxtext.memory_of('nothing here') == {}


def test_maxtext_command_for_either_layout(tmp_path):
  new = tmp_path / 'new'
  (new / 'src' / 'maxtext').mkdir(parents=True)
  argv, cwd, env = vs_maxtext.maxtext_command(new, 'py', 'v5p:2x2x1', 8, 4, tmp_path)
  assert argv[:3] == ['py', '-m', 'maxtext.trainers.pre_train.train_compile'] and cwd == new
  assert 'compile_topology=v5p-8' in argv and 'per_device_batch_size=8' in argv and 'ici_fsdp_parallelism=4' in argv
  assert 'override_model_config=true' in argv and env['PYTHONPATH'] == str(new / 'src')
  old = tmp_path / 'old'
  (old / 'MaxText' / 'configs').mkdir(parents=True)
  (old / 'MaxText' / 'configs' / 'base.yml').write_text('a: 1\nmlp_activations: ["silu", "linear"]\nb: 2\n')
  argv, cwd, env = vs_maxtext.maxtext_command(old, 'py', 'v5p:2x2x1', 8, 4, tmp_path)
  assert argv[1] == 'MaxText/train_compile.py' and 'decoder_block=gpt3' in argv and 'vocab_size=50304' in argv
  assert argv[2] == str(tmp_path / 'maxtext_base.yml')
  with open(argv[2]) as f:
    assert f.read() == 'a: 1\nmlp_activations: ["gelu"]\nb: 2\n'
  assert env['DECOUPLE_GCLOUD'] == 'TRUE'
