"""Side by side on a TPU slice without a TPU: our compiled GPT train step against MaxText's.

Run from the repository root, with a MaxText checkout somewhere outside it and a Python >= 3.12
environment that runs it (jax[tpu] and libtpu of the same versions as ours, MaxText's imports):

    python benchmarks/vs_maxtext.py --maxtext ../maxtext --maxtext-python ../mtenv/bin/python

Both sides compile for the same target (default: GPT-2 124M, v5p:2x2x1, fsdp 4, 8 x 1024 tokens per
chip, bf16, remat full, scanned layers, splash attention) with libtpu's compiler on this host:
  ours:    python run.py plan --topology ... --workdir W  (plan.json, and the optimized program plan_hlo.txt);
  MaxText: its train_compile with XLA_FLAGS=--xla_dump_to=D --xla_dump_hlo_as_text (the train step is the
           largest *jit_train_step*after_optimizations.txt in D; its memory from the "Memory analysis" line).
Both optimized programs are read by ssl_jax.hlo.costs, and it prints one table (FLOPs, HBM bytes, on-chip
bytes, collectives by kind, temporaries, code, compile time, roofline bound) with ours / MaxText per row,
and one JSON line. Nothing of MaxText is copied here; see benchmarks/README.md.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ssl_jax import hlo, plan  # noqa: E402  pylint: disable=wrong-import-position

# GPT-2 124M as MaxText's gpt3 decoder block spells it (learned positions, tied embedding, gelu, adam).
GPT2_124M = dict(base_num_decoder_layers=12, base_emb_dim=768, base_num_query_heads=12, base_num_kv_heads=12,
                 base_mlp_dim=3072, head_dim=64, vocab_size=50304, max_target_length=1024,
                 trainable_position_size=1024)
# The rest of MaxText's configs/models/gpt3-*.yml, for a checkout whose model files cannot be overridden.
GPT3_BLOCK = dict(decoder_block='gpt3', enable_dropout='false', logits_via_embedding='true',
                  normalize_embedding_logits='false', logits_dot_in_fp32='false', use_iota_embed='true',
                  fused_qkv='true', opt_type='adam_pax', normalization_layer_epsilon='1.e-05')


def maxtext_command(checkout: Path, python: str, topology: str, per_device_batch: int, fsdp: int, work: Path,
                    extra=()):
    """(argv, cwd, env additions) of MaxText's train_compile for our target, in either layout of its tree:
    src/maxtext (a package, model files overridable) or MaxText/ (scripts, model keys spelled out; its
    base.yml copied into `work` with a gelu MLP)."""
    chips = topology.split(':')[0] + '-' + str(2 * _chips(topology))    # v5p:2x2x1 -> v5p-8 (cores)
    settings = [f'compile_topology={chips}', 'compile_topology_num_slices=1', f'per_device_batch_size={per_device_batch}',
                f'ici_fsdp_parallelism={fsdp}', 'enable_checkpointing=false', 'run_name=vs_ssl_jax',
                f'base_output_directory={work / "maxtext_out"}']
    if (checkout / 'src' / 'maxtext').is_dir():
        argv = [python, '-m', 'maxtext.trainers.pre_train.train_compile', 'src/maxtext/configs/base.yml',
                'model_name=gpt3-6b', 'override_model_config=true']
        env = {'PYTHONPATH': str(checkout / 'src')}
    else:   # its CLI takes no lists: the gelu goes into a copy of base.yml
        base = work / 'maxtext_base.yml'
        text = (checkout / 'MaxText' / 'configs' / 'base.yml').read_text()
        base.write_text(re.sub(r'(?m)^mlp_activations:.*$', 'mlp_activations: ["gelu"]', text))
        argv = [python, 'MaxText/train_compile.py', str(base), 'model_name=default',
                *(f'{k}={v}' for k, v in GPT3_BLOCK.items())]
        env = {}
    argv += [f'{k}={v}' for k, v in GPT2_124M.items()] + settings + list(extra)
    return argv, checkout, {'DECOUPLE_GCLOUD': 'TRUE', 'ALLOW_MULTIPLE_LIBTPU_LOAD': '1', **env}


def _chips(topology: str) -> int:
    dims = topology.split(':')[1].split('x')
    n = 1
    for d in dims:
        n *= int(d)
    return n


def memory_of(log: str) -> dict:
    """{'temp_size_in_bytes': ..., 'generated_code_size_in_bytes': ..., ...} from the last
    CompiledMemoryStats line a compile printed (empty if none)."""
    lines = [line for line in log.splitlines() if 'temp_size_in_bytes' in line]
    return {k: int(v) for k, v in re.findall(r'(\w+_size_in_bytes)=(\d+)', lines[-1])} if lines else {}


def step_program(dump_dir: str, step: str = 'train_step') -> str:
    """The path of a jitted step's optimized program in an XLA dump: the largest
    *STEP*after_optimizations.txt (a dump also holds the initialisation and small jits)."""
    found = [p for p in glob.glob(os.path.join(dump_dir, '*after_optimizations.txt'))
             if step in os.path.basename(p) and 'buffer' not in os.path.basename(p)]
    if not found:
        raise SystemExit(f'no *{step}*after_optimizations.txt in {dump_dir}: did the program compile its step?')
    return max(found, key=os.path.getsize)


def side(hlo_text: str, temp: int, code: int, compile_s, model_flops_per_chip: float, accelerator: str,
         causal: bool = True) -> dict:
    """One column of the table, from an optimized program and what its compiler reported."""
    _, _, bandwidth, peak = plan.accelerator_spec(accelerator)
    program = hlo.costs(hlo_text, causal=causal)
    roof = plan.roofline(program, model_flops_per_chip, peak, bandwidth)
    return {'program_flops': program['flops'], 'hbm_bytes': program['hbm_bytes'],
            'hbm_bytes_whole_operands': program['hbm_bytes_whole_operands'], 'on_chip_bytes': program['on_chip_bytes'],
            **{f'{k}_bytes': v for k, v in program['collective_bytes'].items()},
            'temporaries_bytes': temp, 'generated_code_bytes': code, 'compile_s': compile_s,
            'hlo_lines': hlo_text.count('\n'), 'bound_by': roof['bound_by'], 'mfu_bound': roof['mfu_bound']}


ROWS = [  # (key, label, unit): the table's rows, in order
    ('program_flops', 'program FLOPs', 'T'), ('hbm_bytes', 'HBM bytes (slices and rows as read)', 'GB'),
    ('hbm_bytes_whole_operands', 'HBM bytes (every operand whole)', 'GB'), ('on_chip_bytes', 'on-chip bytes', 'GB'),
    ('all-reduce_bytes', 'all-reduce', 'MB'), ('all-gather_bytes', 'all-gather', 'MB'),
    ('reduce-scatter_bytes', 'reduce-scatter', 'MB'), ('all-to-all_bytes', 'all-to-all', 'MB'),
    ('collective-permute_bytes', 'collective-permute', 'MB'), ('temporaries_bytes', 'temporaries', 'GB'),
    ('generated_code_bytes', 'generated code', 'MB'), ('compile_s', 'compile time', 's'),
    ('hlo_lines', 'optimized HLO lines', ''), ('mfu_bound', 'roofline MFU bound', ''),
]
_SCALE = {'T': 1e12, 'GB': 1e9, 'MB': 1e6, 's': 1, '': 1}


def table(ours: dict, theirs: dict) -> str:
    """A markdown table: one row per figure, ours, MaxText's, and ours / MaxText."""
    lines = ['| per chip per step | ours | MaxText | ours / MaxText |', '|---|---:|---:|---:|']
    for key, label, unit in ROWS:
        a, b = ours.get(key), theirs.get(key)
        fmt = lambda x: '-' if x is None else f'{_figure(x / _SCALE[unit])}{" " + unit if unit else ""}'
        ratio = f'{a / b:.2f}' if a is not None and b else ('-' if not a and not b else 'n/a')
        lines.append(f'| {label} | {fmt(a)} | {fmt(b)} | {ratio} |')
    lines.append(f'| bound by | {ours["bound_by"]} | {theirs["bound_by"]} | |')
    return '\n'.join(lines)


def _figure(x: float) -> str:
    """Three significant figures, without an exponent: 2,141 / 25.3 / 0.833."""
    return f'{x:,.0f}' if abs(x) >= 100 else f'{x:.3g}'


def commit_of(path: Path) -> str:
    try:
        return subprocess.run(['git', 'rev-parse', '--short=8', 'HEAD'], cwd=path, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (subprocess.CalledProcessError, OSError):
        return 'unknown'


def run_timed(argv, cwd, env, start_marker='', end_marker=''):
    """(output, seconds between the markers' lines, or the whole run's if none printed)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, marks = [], {}
    for line in proc.stdout:
        lines.append(line)
        for name, marker in (('start', start_marker), ('end', end_marker)):
            if marker and marker in line and name not in marks:
                marks[name] = time.perf_counter()
    proc.wait()
    out = ''.join(lines)
    if proc.returncode != 0:
        raise SystemExit(f'{" ".join(map(str, argv[:4]))} ... exited {proc.returncode}:\n{out[-4000:]}')
    if 'start' in marks and 'end' in marks:
        return out, marks['end'] - marks['start']
    return out, time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--maxtext', required=True, type=Path, help='a MaxText checkout')
    parser.add_argument('--maxtext-python', default=sys.executable, help='a Python >= 3.12 that runs MaxText')
    parser.add_argument('--topology', default='v5p:2x2x1')
    parser.add_argument('--per-device-batch', type=int, default=8)
    parser.add_argument('--fsdp', type=int, default=4)
    parser.add_argument('--workdir', default='', help='keep both programs here (default: a temporary folder)')
    parser.add_argument('--reread', action='store_true',
                        help='read the programs an earlier run left in --workdir again instead of compiling')
    args = parser.parse_args()
    if args.reread and not args.workdir:
        parser.error('--reread reads an earlier run\'s --workdir')
    work = Path(args.workdir or tempfile.mkdtemp(prefix='vs_maxtext_'))
    chips = _chips(args.topology)
    ours_cmd = [sys.executable, 'run.py', 'plan', '--config', 'experiments/gpt.py:gpt2:124M', '--topology',
                args.topology, '--config.mesh.data=1', f'--config.mesh.fsdp={args.fsdp}', '--config.mesh.tensor=1',
                f'--config.train.batch_size={args.per_device_batch * chips}', '--config.model.dtype=bfloat16',
                '--config.model.remat=full', '--config.model.scan_layers=true', '--workdir', str(work / 'ours')]
    if not args.reread:
        run_timed(ours_cmd, REPO, {'ALLOW_MULTIPLE_LIBTPU_LOAD': '1'})
    r = json.loads((work / 'ours' / 'plan.json').read_text())
    ours = side((work / 'ours' / 'plan_hlo.txt').read_text(), r['bytes_per_device']['activations_and_temporaries'],
                r['bytes_per_device']['generated_code'], r['compile_s'], r['flops_per_device'], r['accelerator'])
    dump = work / 'maxtext_dump'
    argv, cwd, env = maxtext_command(args.maxtext.resolve(), args.maxtext_python, args.topology,
                                     args.per_device_batch, args.fsdp, work)
    env['XLA_FLAGS'] = f'--xla_dump_to={dump} --xla_dump_hlo_as_text'
    if args.reread:
        out = (work / 'maxtext.log').read_text()
        compile_s = float(re.search(r'compile_s=([\d.]+)', out).group(1))
    else:
        out, compile_s = run_timed(argv, cwd, env, 'Jitting and compiling train step',
                                   'Jitting and compilation complete')
        (work / 'maxtext.log').write_text(f'{out}\nvs_maxtext: compile_s={compile_s:.1f}\n')
    memory = memory_of(out)
    theirs = side(Path(step_program(str(dump))).read_text(), memory.get('temp_size_in_bytes'),
                  memory.get('generated_code_size_in_bytes'), round(compile_s, 1), r['flops_per_device'],
                  r['accelerator'])
    commits = work / 'commits.json'     # of the trees the programs were compiled from
    if not args.reread:
        commits.write_text(json.dumps({'ssl_jax': commit_of(REPO), 'maxtext': commit_of(args.maxtext)}))
    commit = json.loads(commits.read_text())
    print(f'{r["model"]} on {args.topology}, fsdp {args.fsdp}, {args.per_device_batch} x 1024 tokens per chip, bf16, '
          f'remat full, scanned; ssl_jax {commit["ssl_jax"]}, MaxText {commit["maxtext"]}; programs in {work}')
    print(table(ours, theirs))
    print(json.dumps({'ours': ours, 'maxtext': theirs, 'ssl_jax_commit': commit['ssl_jax'],
                      'maxtext_commit': commit['maxtext']}))


if __name__ == '__main__':
    main()
