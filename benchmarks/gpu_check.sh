#!/usr/bin/env bash
# One GPU check, a few minutes on one GPU: our GPT-2 124M train step (cuDNN attention, then
# XLA's) against nanoGPT's PyTorch step on the same shapes; one JSON summary line at the end.
#
#   NANOGPT=path/to/nanoGPT bash benchmarks/gpu_check.sh [--steps N] [--out DIR] [--no-torch-compile]
#   bash benchmarks/gpu_check.sh --cpu    # dry run: the same logic on CPU, tiny shapes (tests/test_gpu_check.py)
#
# Legs, one after the other, each in its own process (--legs picks some of cudnn,xla,nanogpt):
#   ours_cudnn  python3 run.py bench --config experiments/gpt.py:gpt2:124M --config.model.attention=cudnn ...
#   ours_xla    the same with --config.model.attention=xla
#   nanogpt     benchmarks/vs_nanogpt.py --worker: nanoGPT's GPT and configure_optimizers (fused AdamW on
#               CUDA), bf16 autocast, torch.compile unless --no-torch-compile; skipped, with the reason in
#               the summary, when torch or the checkout (NANOGPT or --nanogpt, else .nanogpt/) is missing.
# Shapes: 12 layers, 12 heads, 768 wide, vocab 50304, block 1024, batch 16; dropout 0 and no biases on
# both sides (nanoGPT's train.py defaults). A leg may run GPU_CHECK_LEG_TIMEOUT_S (200 s), and no longer
# than what is left of GPU_CHECK_BUDGET_S (480 s) for the whole run. See benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Pure-Python packages the GPU image lacks (ml_collections, tensorboardX) travel as wheels in .whl/.
if compgen -G ".whl/*.whl" > /dev/null; then
  SITE=${GPU_CHECK_SITE:-.whl/site}   # inside the git-ignored .whl/
  if ! "$PY" -m pip install -q --no-index --no-deps --upgrade --target "$SITE" .whl/*.whl; then
    echo "pip failed; unpacking the wheels into $SITE instead" >&2   # a pure-Python wheel is a zip of the site layout
    "$PY" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
      "$SITE" .whl/*.whl
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi

exec "$PY" - "$@" <<'PYTHON'
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

T_START = time.perf_counter()
p = argparse.ArgumentParser(prog="gpu_check.sh")
p.add_argument("--cpu", action="store_true", default=os.environ.get("GPU_CHECK_DRY_RUN", "") not in ("", "0"),
               help="dry run on CPU with tiny shapes (also GPU_CHECK_DRY_RUN=1)")
p.add_argument("--steps", type=int, default=None, help="timed steps per leg (default 50; 2 with --cpu)")
p.add_argument("--warmup", type=int, default=None, help="untimed nanoGPT steps first (default 10; 1 with --cpu)")
p.add_argument("--nanogpt", default=os.environ.get("NANOGPT", ""),
               help="nanoGPT checkout (default $NANOGPT, else .nanogpt)")
p.add_argument("--torch-compile", dest="torch_compile", action=argparse.BooleanOptionalAction, default=None,
               help="torch.compile nanoGPT's model (default: on a GPU yes, with --cpu no)")
p.add_argument("--legs", default="cudnn,xla,nanogpt", help="comma-separated subset of cudnn,xla,nanogpt")
p.add_argument("--out", default=os.environ.get("OUT", ""), help="write summary.json and each leg's log here")
args = p.parse_args(sys.argv[1:])
dry = args.cpu
steps = args.steps or (2 if dry else 50)
warmup = args.warmup if args.warmup is not None else (1 if dry else 10)
compile_torch = (not dry) if args.torch_compile is None else args.torch_compile
legs_wanted = [leg.strip() for leg in args.legs.split(",") if leg.strip()]
for leg in legs_wanted:
    if leg not in ("cudnn", "xla", "nanogpt"):
        sys.exit(f"--legs: unknown leg {leg!r}; known: cudnn, xla, nanogpt")
budget_s = float(os.environ.get("GPU_CHECK_BUDGET_S", 480))
leg_timeout_s = float(os.environ.get("GPU_CHECK_LEG_TIMEOUT_S", 200))
py = sys.executable
tmp = tempfile.mkdtemp(prefix="gpu_check_")
out = args.out
if out:
    os.makedirs(out, exist_ok=True)

# The shapes of the comparison; the dry run shrinks them (its vocabulary still holds the char corpus's ids).
if dry:
    shape = dict(layers=2, heads=2, width=64, seq_len=64, batch=4, vocab=256)
else:
    shape = dict(layers=12, heads=12, width=768, seq_len=1024, batch=16, vocab=50304)
dtype = "float32" if dry else "bfloat16"
env = dict(os.environ)
if dry:
    env["JAX_PLATFORMS"] = "cpu"
    env["CUDA_VISIBLE_DEVICES"] = ""   # torch too


def run_leg(name, cmd, leg_env):
    """Runs one leg, echoing its output; returns (last JSON line or None, error or None)."""
    left = budget_s - (time.perf_counter() - T_START)
    limit = min(leg_timeout_s, left)
    print(f"\n=== {name}: {' '.join(cmd)}  (limit {limit:.0f} s)", flush=True)
    if limit < 10:
        return None, f"not run: {left:.0f} s of the {budget_s:.0f} s budget left"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=leg_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=limit)
        text, error = proc.stdout, (None if proc.returncode == 0 else f"exit {proc.returncode}")
    except subprocess.TimeoutExpired as e:
        text = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        error = f"timed out after {limit:.0f} s"
    print(text[-6000:], end="" if text.endswith("\n") else "\n", flush=True)
    if out:
        with open(os.path.join(out, f"{name}.log"), "w") as f:
            f.write(text)
    result = None
    for line in reversed(text.splitlines()):
        if line.strip().startswith("{"):
            try:
                result = json.loads(line)
                break
            except ValueError:
                pass
    if error is None and result is None:
        error = "no JSON line in its output"
    if error:
        last = [l for l in text.strip().splitlines() if l.strip()][-1:] or [""]
        error = f"{error}: {last[0][-300:]}"
        result = None
    else:
        result["wall_s"] = time.perf_counter() - t0
    print(f"=== {name}: {'failed, ' + error if error else 'done in %.0f s' % result['wall_s']}", flush=True)
    return result, error


# (b) what this machine is
if shutil.which("nvidia-smi") and not dry:
    subprocess.run(["nvidia-smi"], check=False)
subprocess.run([py, "-c", "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__,"
                " jax.devices())"], env=env, check=False)

# (c) ours, cuDNN attention then XLA's
ours = {}
errors = {}
for attention in ("cudnn", "xla"):
    if attention not in legs_wanted:
        continue
    cmd = [py, "run.py", "bench", "--config", "experiments/gpt.py:gpt2:124M",
           f"--config.train.batch_size={shape['batch']}", f"--config.data.seq_len={shape['seq_len']}",
           f"--config.model.dtype={dtype}", "--config.model.dropout=0.0", "--config.model.bias=False",
           f"--config.model.attention={'xla' if dry else attention}"]
    if dry:  # kernels stay auto (XLA:CPU's), attention xla on both legs: cuDNN needs a GPU
        cmd += [f"--config.model.num_layers={shape['layers']}", f"--config.model.num_heads={shape['heads']}",
                f"--config.model.d_model={shape['width']}", f"--config.model.d_ff={4 * shape['width']}",
                f"--config.model.vocab_size={shape['vocab']}"]
    cmd += ["--steps", str(steps), "--workdir", os.path.join(tmp, f"ours_{attention}")]
    ours[attention], errors[f"ours_{attention}"] = run_leg(f"ours_{attention}", cmd, env)

# (d) nanoGPT's step, same shapes
nanogpt, nanogpt_skipped = None, None
checkout = args.nanogpt or (".nanogpt" if os.path.isfile(".nanogpt/model.py") else "")
if "nanogpt" not in legs_wanted:
    nanogpt_skipped = "not among --legs"
elif not checkout or not os.path.isfile(os.path.join(checkout, "model.py")):
    nanogpt_skipped = (f"no nanoGPT checkout: {checkout!r} has no model.py" if checkout else
                       "no nanoGPT checkout: set NANOGPT or --nanogpt (or put one in .nanogpt/)")
elif subprocess.run([py, "-c", "import torch"], env=env, capture_output=True).returncode != 0:
    nanogpt_skipped = f"torch does not import in {py}"
else:
    def nanogpt_cmd(compiled):
        return [py, "benchmarks/vs_nanogpt.py", "--worker", "--nanogpt", checkout,
                "--layers", str(shape["layers"]), "--heads", str(shape["heads"]), "--width", str(shape["width"]),
                "--seq-len", str(shape["seq_len"]), "--batch", str(shape["batch"]), "--vocab", str(shape["vocab"]),
                "--steps", str(steps), "--warmup", str(warmup), "--device", "cpu" if dry else "cuda",
                "--dtype", dtype, *(["--compile"] if compiled else [])]
    nanogpt, errors["nanogpt"] = run_leg("nanogpt", nanogpt_cmd(compile_torch), env)
    if nanogpt is None and compile_torch:  # torch.compile can fail where eager works: keep a number
        errors["nanogpt_compiled"] = errors.pop("nanogpt")
        nanogpt, errors["nanogpt"] = run_leg("nanogpt_eager", nanogpt_cmd(False), env)

# (e) the summary. FLOPs of one step, the convention of ssl_jax/flops.py (decoder_train_flops), for all
# three legs alike: 6 x matmul parameters x tokens (per layer 4d^2 + 2d*d_ff, plus the tied head d*V),
# plus causal attention 12*L*T*d x tokens x (T+1)/(2T). MFU = FLOPs/step x steps/s / peak, the peak
# being what our bench divides by (the datasheet's dense bf16 figure on a GPU; measured on CPU).
L, d, T, B, V = shape["layers"], shape["width"], shape["seq_len"], shape["batch"], shape["vocab"]
tokens = B * T
flops_per_step = 6 * (L * (4 * d * d + 2 * d * 4 * d) + d * V) * tokens + 12 * L * T * d * tokens * (T + 1) / (2 * T)
done = [r for r in (ours.get("cudnn"), ours.get("xla")) if r]
peak = done[0]["peak_flops"] if done else None
for r in done:
    if abs(r["flops_per_step"] - flops_per_step) > 1e-6 * flops_per_step:
        print(f"warning: run.py bench counts {r['flops_per_step']:.4g} FLOPs/step, this script {flops_per_step:.4g}")
    if (r["batch"], r["seq_len"]) != (B, T):
        print(f"warning: ours ran batch {r['batch']} seq_len {r['seq_len']}, expected {B} {T}")


def mfu(tokens_per_sec):
    return flops_per_step * tokens_per_sec / tokens / peak if peak and tokens_per_sec else None


summary = {"dry_run": dry, "steps": steps, "shape": shape, "dtype": dtype, "flops_per_step": flops_per_step,
           "flops_convention": "6*N_matmul*tokens + 12*L*T*d*tokens*(T+1)/(2T) (ssl_jax/flops.py), all legs",
           "peak_flops": peak}
for name in ("cudnn", "xla"):
    r = ours.get(name)
    summary[f"ours_{name}_tokens_per_sec"] = r["tokens_per_sec"] if r else None
    summary[f"ours_{name}_mfu"] = r["mfu"] if r else None
    summary[f"ours_{name}_step_ms"] = r["step_ms"] if r else None
    summary[f"ours_{name}_compile_s"] = r["compile_s"] if r else None
    summary[f"ours_{name}_choice"] = (f"kernels {r.get('kernels')}, attention {r.get('attention')}, "
                                      f"{r.get('dtype')}") if r else None   # as run.py bench resolved them
summary["nanogpt_tokens_per_sec"] = nanogpt["tokens_per_sec"] if nanogpt else None
summary["nanogpt_mfu"] = mfu(nanogpt["tokens_per_sec"]) if nanogpt else None
summary["nanogpt_step_ms"] = nanogpt["step_ms"] if nanogpt else None
summary["nanogpt_warmup_s"] = nanogpt["warmup_s"] if nanogpt else None
summary["nanogpt_compile"] = nanogpt["compile"] if nanogpt else None
summary["nanogpt_torch"] = nanogpt["torch"] if nanogpt else None
summary["nanogpt_skipped"] = nanogpt_skipped
for name in ("cudnn", "xla"):
    mine, theirs = summary[f"ours_{name}_tokens_per_sec"], summary["nanogpt_tokens_per_sec"]
    summary[f"ratio_{name}_vs_nanogpt"] = mine / theirs if mine and theirs else None
summary["errors"] = {k: v for k, v in errors.items() if v}
summary["wall_s"] = time.perf_counter() - T_START

fmt = lambda v, f: "-" if v is None else format(v, f)
print(f"\n{'leg':<12} {'tokens/s':>10} {'MFU':>7} {'step_ms':>9}")
for leg, key in (("ours_cudnn", "ours_cudnn"), ("ours_xla", "ours_xla"), ("nanoGPT", "nanogpt")):
    print(f"{leg:<12} {fmt(summary[key + '_tokens_per_sec'], '10.0f'):>10} {fmt(summary[key + '_mfu'], '7.3f'):>7}"
          f" {fmt(summary[key + '_step_ms'], '9.2f'):>9}")
print(f"ours(cudnn)/nanoGPT {fmt(summary['ratio_cudnn_vs_nanogpt'], '.2f')}, "
      f"ours(xla)/nanoGPT {fmt(summary['ratio_xla_vs_nanogpt'], '.2f')}"
      + (f"; nanoGPT skipped: {nanogpt_skipped}" if nanogpt_skipped else "")
      + (f"; failed: {', '.join(summary['errors'])}" if summary["errors"] else ""))
shutil.rmtree(tmp, ignore_errors=True)
if out:
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
print(json.dumps(summary), flush=True)
sys.exit(1 if summary["errors"] else 0)
PYTHON
