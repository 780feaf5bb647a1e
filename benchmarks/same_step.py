"""Do two trees compile the same CPU steps? Settles "unchanged beyond noise" without timing.

For each CPU row of the README's performance table (the `run.py bench` commands that
vs_nanogpt.py, vs_hf_bert.py and vs_hf_finetune.py time), runs `bench --steps 1` in both trees
with XLA's dump on, reads the optimized HLO of the train and eval steps, and compares them with
what does not run left out: the stack-frame tables, each instruction's metadata, the module's name
and the instructions' numbering. Two trees whose programs compare the same run the same machine
code on the same batches, so any throughput difference measured between them is the machine's.

Run from the repository root, naming the other tree (a `git worktree` of the older commit):

    git worktree add ../before COMMIT
    python benchmarks/same_step.py --before ../before
    python benchmarks/same_step.py --before ../before --rows bert_mini --show 20

Ends with one JSON line: per row, per step, "same" or the number of differing lines. Exits 1
when any differs.
"""

import argparse
import difflib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import vs_hf_bert
import vs_hf_finetune
import vs_maxtext
import vs_nanogpt

REPO = Path(__file__).resolve().parent.parent
STEPS = ('train_step', 'eval_step')
ROWS = (*vs_nanogpt.SHAPES, 'bert_mini', 'finetune')


def commands(row: str, workdir: str) -> list:
  """The bench command the README's row times (its benchmark's defaults), at one step, writing under `workdir`."""
  if row in vs_nanogpt.SHAPES:
    return vs_nanogpt.ours_command(row, 1, ['--workdir', workdir])
  if row == 'bert_mini':
    return vs_hf_bert.ours_command(vs_hf_bert.parse_args(['--steps', '1'])) + ['--workdir', workdir]
  if row == 'finetune':
    return vs_hf_finetune.ours(vs_hf_finetune.parse_args(['speed']), workdir, 1)
  raise SystemExit(f'unknown row {row!r}: {", ".join(ROWS)}')


def normalize(text: str) -> list:
  """The lines of an optimized HLO dump that say what runs: without the stack-frame tables
  (FileNames ... StackFrames, which name source files and lines), metadata, the module's name, or
  the numbers XLA appends to instruction and parameter names."""
  lines = text.splitlines()
  if 'StackFrames' in lines:     # the tables sit between the module line and the first computation
    start = lines.index('FileNames') if 'FileNames' in lines else lines.index('StackFrames')
    end = lines.index('StackFrames')
    end += lines[end:].index('') if '' in lines[end:] else len(lines) - end
    lines = lines[:start] + lines[end:]
  out = []
  for line in lines:
    line = re.sub(r', metadata=\{[^{}]*\}', '', line)
    line = re.sub(r'^HloModule \S+', 'HloModule _', line)
    line = re.sub(r'(%?[A-Za-z_][\w\-]*?)\.\d+\b', r'\1.#', line)
    out.append(line.rstrip())
  return out


def differences(before: str, after: str) -> list:
  """The unified diff (changed lines only) of two normalized dumps; empty when they are the same."""
  return [line for line in difflib.unified_diff(normalize(before), normalize(after), lineterm='', n=0)
          if not line.startswith(('@@', '---', '+++'))]


def dump(tree: str, row: str, where: str) -> dict:
  """{step: optimized HLO text} of `row`'s bench command run in `tree`, dumped under `where`."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': f'--xla_dump_to={where}/hlo --xla_dump_hlo_as_text --xla_dump_hlo_pass_re=^$'}
  proc = subprocess.run(commands(row, os.path.join(where, 'workdir')), cwd=tree, env=env,
                        capture_output=True, text=True, check=False)
  if proc.returncode:
    raise SystemExit(f'{row} in {tree} exited {proc.returncode}:\n{proc.stderr[-3000:]}')
  return {step: Path(vs_maxtext.step_program(os.path.join(where, 'hlo'), f'jit_{step}')).read_text() for step in STEPS}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--before', required=True, help='the other tree (e.g. a git worktree of an older commit)')
  parser.add_argument('--after', default=str(REPO), help='this tree (default: the repository holding this script)')
  parser.add_argument('--rows', default=','.join(ROWS), help=f'comma-separated, of {", ".join(ROWS)}')
  parser.add_argument('--show', type=int, default=6, help='differing lines printed per step')
  args = parser.parse_args()
  result = {}
  with tempfile.TemporaryDirectory(prefix='same_step_') as scratch:
    for row in args.rows.split(','):
      before = dump(args.before, row, os.path.join(scratch, row, 'before'))
      after = dump(args.after, row, os.path.join(scratch, row, 'after'))
      result[row] = {}
      for step in STEPS:
        diff = differences(before[step], after[step])
        result[row][step] = 'same' if not diff else len(diff)
        print(f'{row:18} {step:11} {"same" if not diff else f"{len(diff)} lines differ"} '
              f'({len(normalize(after[step]))} lines)', flush=True)
        for line in diff[:args.show]:
          print('    ' + line[:200])
  print(json.dumps(result))
  sys.exit(0 if all(v == 'same' for r in result.values() for v in r.values()) else 1)


if __name__ == '__main__':
  main()
