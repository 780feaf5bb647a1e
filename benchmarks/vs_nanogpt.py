"""Side-by-side CPU training throughput: our GPT train step vs nanoGPT's (PyTorch).

Run from the repository root, with a nanoGPT checkout somewhere outside it:

    python benchmarks/vs_nanogpt.py --nanogpt ../nanoGPT --shape baby --rounds 3 --steps 20

Each round runs, one after the other and each in its own subprocess (never both at once):
  ours:    python run.py bench --config experiments/gpt_shakespeare_char.py --config.model.num_layers=... --steps N
           (tokens/s is read from the last JSON line it prints);
  nanoGPT: this file again in worker mode: it imports GPT and GPTConfig from the checkout's model.py, builds the
           optimizer with configure_optimizers(...) as nanoGPT's train.py does, runs --warmup iterations, then times
           N steady-state iterations (forward, backward, clip, step, zero_grad) on random token batches.
It prints a table of every run, the median tokens/s of each side and the ratio ours/nanoGPT, and ends with one JSON line.
See benchmarks/README.md.
"""
import argparse
import contextlib
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

from side_by_side import alternate, report

REPO = Path(__file__).resolve().parent.parent
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

# nanoGPT's config/train_shakespeare_char.py training settings (dropout 0, float32 on CPU, no compile).
TRAIN = dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, grad_clip=1.0)
SHAPES = {
    "baby": dict(layers=4, heads=4, width=128, seq_len=64, batch=12, vocab=65),
    "shakespeare_char": dict(layers=6, heads=6, width=384, seq_len=256, batch=16, vocab=65),
}
OURS_CONFIG = "experiments/gpt_shakespeare_char.py"


def ours_command(shape, steps, extra):
    s = SHAPES[shape]
    return [sys.executable, "run.py", "bench", "--config", OURS_CONFIG,
            f"--config.model.num_layers={s['layers']}", f"--config.model.num_heads={s['heads']}",
            f"--config.model.d_model={s['width']}", f"--config.model.d_ff={4 * s['width']}",
            "--config.model.dropout=0.0", f"--config.data.seq_len={s['seq_len']}",
            f"--config.model.max_len={s['seq_len']}",    # nanoGPT's block_size: as many positions as the window
            f"--config.train.batch_size={s['batch']}", "--steps", str(steps), *extra]


def nanogpt_command(args):
    return [sys.executable, str(Path(__file__).resolve()), "--worker", "--nanogpt", str(args.nanogpt),
            "--shape", args.shape, "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--threads", str(args.threads)]


def nanogpt_worker(args):
    """Time nanoGPT's own model and optimizer; print one JSON line. Runs in its own process."""
    import torch
    sys.path.insert(0, str(Path(args.nanogpt).resolve()))
    from model import GPT, GPTConfig  # nanoGPT's model.py

    torch.set_num_threads(args.threads)
    torch.manual_seed(1337)
    s = {**SHAPES[args.shape], **{k: getattr(args, k) for k in SHAPES[args.shape] if getattr(args, k) is not None}}
    cuda = args.device == "cuda"
    if cuda:  # as nanoGPT's train.py sets them
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = GPT(GPTConfig(block_size=s["seq_len"], vocab_size=s["vocab"], n_layer=s["layers"], n_head=s["heads"],
                          n_embd=s["width"], dropout=0.0, bias=False))  # bias=False: train.py's default
    model.to(args.device)
    model.train()
    optimizer = model.configure_optimizers(TRAIN["weight_decay"], TRAIN["lr"], TRAIN["betas"], args.device)
    params = sum(p.numel() for p in model.parameters())
    if args.compile:
        model = torch.compile(model)  # after the optimizer, as train.py does
    # bfloat16: autocast around the forward, as train.py's `ctx`; float32: no autocast.
    autocast = (torch.amp.autocast(device_type=args.device, dtype=torch.bfloat16) if args.dtype == "bfloat16"
                else contextlib.nullcontext())
    # A few random batches made up front, so the timed loop is the train step only.
    batches = [torch.randint(s["vocab"], (2, s["batch"], s["seq_len"]), device=args.device) for _ in range(4)]

    def step(i):
        x, y = batches[i % len(batches)]
        with autocast:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), TRAIN["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(i)
    if cuda:
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0  # includes torch.compile's compilation, if any
    times = []
    if cuda:  # one synchronisation after the timed steps, as run.py bench: the GPU runs ahead of Python
        t0 = time.perf_counter()
        for i in range(args.steps):
            loss = step(i)
        torch.cuda.synchronize()
        times = [(time.perf_counter() - t0) / args.steps] * args.steps
    else:
        for i in range(args.steps):
            t0 = time.perf_counter()
            loss = step(i)
            times.append(time.perf_counter() - t0)
    total = sum(times)
    print(json.dumps({"model": "nanoGPT", "params": params,
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "batch": s["batch"],
                      "seq_len": s["seq_len"], "steps": args.steps, "warmup": args.warmup,
                      "layers": s["layers"], "heads": s["heads"], "width": s["width"], "vocab": s["vocab"],
                      "device": args.device, "dtype": args.dtype, "compile": args.compile, "warmup_s": warmup_s,
                      "tokens_per_sec": args.steps * s["batch"] * s["seq_len"] / total,
                      "step_ms": 1000 * total / args.steps, "step_ms_median": 1000 * statistics.median(times),
                      "loss": loss.item()}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nanogpt", required=True, help="a nanoGPT checkout (the folder holding model.py)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="baby")
    p.add_argument("--rounds", type=int, default=3, help="ours/nanoGPT pairs, run alternately")
    p.add_argument("--steps", type=int, default=20, help="timed iterations per run, both sides")
    p.add_argument("--warmup", type=int, default=3, help="untimed nanoGPT iterations before the timed ones")
    p.add_argument("--threads", type=int, default=CORES, help="torch threads (default: the cores available)")
    p.add_argument("--ours-extra", default="", help="extra flags for run.py bench, as one quoted string")
    p.add_argument("--repo", default=str(REPO), help="where run.py is (default: this file's repository)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    # Worker only (benchmarks/gpu_check.sh): where and how nanoGPT runs, and shape fields overriding --shape's.
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="worker: nanoGPT's device")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="worker: bfloat16 = autocast as nanoGPT's train.py")
    p.add_argument("--compile", action="store_true", help="worker: torch.compile the model")
    for key in SHAPES["baby"]:
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if not (Path(args.nanogpt) / "model.py").is_file():
        sys.exit(f"--nanogpt {args.nanogpt}: no model.py there; check out github.com/karpathy/nanoGPT")
    if args.worker:
        return nanogpt_worker(args)

    s = SHAPES[args.shape]
    ours = ours_command(args.shape, args.steps, shlex.split(args.ours_extra))
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")  # a CPU-vs-CPU comparison unless the caller says otherwise
    print(f"shape {args.shape}: {s}, torch threads {args.threads}\nours:    {' '.join(ours)}\n"
          f"nanoGPT: {' '.join(nanogpt_command(args))}", flush=True)

    def check(side, res):
        if side == "ours" and (res.get("batch"), res.get("seq_len")) != (s["batch"], s["seq_len"]):
            print(f"warning: ours reports batch {res.get('batch')} seq_len {res.get('seq_len')}, "
                  f"expected {s['batch']} {s['seq_len']}", file=sys.stderr)

    med = alternate({"ours": (ours, env), "nanoGPT": (nanogpt_command(args), None)}, args.rounds, args.repo, check)
    report(med, "nanoGPT", args)


if __name__ == "__main__":
    main()
