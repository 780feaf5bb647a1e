"""benchmarks/same_step.py's comparison on small handwritten HLO dumps: what does not run
(stack-frame tables, metadata, the module's name, instruction numbering) is left out, and any
change to what runs (a shape, an operation, an operand) is a difference."""

import os
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import same_step  # noqa: E402  pylint: disable=wrong-import-position,import-error

BEFORE = '''HloModule jit_train_step, is_scheduled=true, entry_computation_layout={(f32[64,128]{1,0})->f32[64,128]{1,0}}

FileNames
1 "/old/tree/ssl_jax/models/gpt.py"

FunctionNames
1 "Block.__call__"

FileLocations
1 {file_name_id=1 function_name_id=1 line=40 end_line=40 column=8 end_column=20}

StackFrames
1 {file_location_id=1 parent_frame_id=1}

%fused_computation.12 (param_0.190: f32[64,128]) -> f32[64,128] {
  %param_0.190 = f32[64,128]{1,0} parameter(0)
  %constant.324 = f32[] constant(2)
  %broadcast.7 = f32[64,128]{1,0} broadcast(%constant.324), dimensions={}
  ROOT %multiply.3 = f32[64,128]{1,0} multiply(%param_0.190, %broadcast.7), metadata={op_name="jit(train_step)/mul" source_file="/old/tree/ssl_jax/models/gpt.py" source_line=40}
}

ENTRY %main.20 (Arg_0.1: f32[64,128]) -> f32[64,128] {
  %Arg_0.1 = f32[64,128]{1,0} parameter(0)
  ROOT %fusion.12 = f32[64,128]{1,0} fusion(%Arg_0.1), kind=kLoop, calls=%fused_computation.12
}
'''


def renamed(text):
  """BEFORE as another tree compiles the same program: other paths, lines and numbering."""
  for old, new in (('/old/tree', '/new/place'), ('line=40', 'line=52'), ('source_line=40', 'source_line=52'),
                   ('jit_train_step', 'jit_train_step_1'), ('.324', '.325'), ('.190', '.191'),
                   ('fused_computation.12', 'fused_computation.13'), ('fusion.12', 'fusion.14'), ('main.20', 'main.22')):
    text = text.replace(old, new)
  return text


def test_the_same_program_compiled_in_another_tree_compares_the_same():
  after = renamed(BEFORE)
  assert after != BEFORE
  assert same_step.differences(BEFORE, after) == []
  assert not any('/old/tree' in line for line in same_step.normalize(BEFORE))


def test_a_change_to_what_runs_is_a_difference():
  for old, new in (('f32[64,128]{1,0} parameter(0)\n  %constant', 'f32[256,128]{1,0} parameter(0)\n  %constant'),
                   ('constant(2)', 'constant(3)'), ('multiply(', 'add('), ('kind=kLoop', 'kind=kInput')):
    assert old in BEFORE
    diff = same_step.differences(BEFORE, renamed(BEFORE).replace(old, new, 1))
    assert diff and all(line[0] in '+-' for line in diff), (old, diff)
