"""Benchmark: what bfloat16 buys on this CPU, side by side with float32 in one run (issue 22's open question).

Three figures, each float32 beside bfloat16 on the same threads:
1. GEMM FLOP/s at the shapes of a real GRPO step: the floors' 1024^3, a layer of the loss forward (1040 tokens), and
   a decoding step's 16 rows against a layer and against the 49k-token LM head;
2. one decoding pass over every linear layer of the real base (SmolLM2-135M-Instruct) at 16 rows, as the real
   step's 16 completions decode: milliseconds and the weight bytes read per second (decoding reads every weight);
3. real GRPO steps: `real-lora` trained N steps in float32 and with `grpo.bf16=true` (the base in bfloat16 under
   autocast, the adapters in float32: PEFT's default), one thread each, one after the other; TRL's step_time, the
   tokens trained, and the step's CPU seconds against its floor at the float32 and at the bfloat16 matmul rate.
   bf16 changes the logits, so the sampled completions and their lengths differ: compare seconds per token too.

Whether results hold in bf16 is a study question, not a timing: README ("bf16 on this CPU") gives the commands and the
comparison of a 30-step bf16 LoRA run with the float32 one. Run: python benchmarks/bench_bf16.py [--steps N]
[--threads T] [--keep DIR]; needs the cached real base (`tina-probe lab real-base`)."""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from bench_study import cli, train_work, weight_params  # noqa: E402

DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}
# (rows, inner, outer): the floors' square; a q/o projection and an MLP up/down projection of the loss forward over
# 16 sequences of ~65 tokens; a decoding step's 16 rows through an MLP projection and through the tied LM head
GEMMS = {"1024^3": (1024, 1024, 1024), "forward 1040x576x1536": (1040, 576, 1536),
         "forward 1040x1536x576": (1040, 1536, 576), "decode 16x576x1536": (16, 576, 1536),
         "decode 16x576x49152 (head)": (16, 576, 49152)}


def gemm_rate(m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 10) -> float:
    """FLOP/s of an (m x k) @ (k x n) matmul in `dtype`, best of `repeats` (inputs stay in cache: the kernel's rate)."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best


def decode_pass(base: Path, dtype: torch.dtype, rows: int = 16, repeats: int = 5) -> tuple[float, int]:
    """Seconds of one pass of `rows` through every linear layer of `base` (weights in `dtype`, far beyond the caches:
    a decoding step's weight reads), best of `repeats`; and the weight bytes read per pass."""
    from safetensors import safe_open

    weights = []
    for path in sorted(base.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            weights += [f.get_tensor(k).to(dtype) for k in f.keys() if len(f.get_slice(k).get_shape()) == 2]
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1]).to(dtype) for w in weights}
    best = float("inf")
    for _ in range(repeats + 1):
        t = time.perf_counter()
        for w in weights:
            torch.nn.functional.linear(inputs[w.shape[1]], w)
        best = min(best, time.perf_counter() - t)
    return best, sum(w.numel() * w.element_size() for w in weights)


def grpo_steps(root: Path, steps: int, threads: int, bf16: bool) -> tuple[float, Path]:
    """Train `real-lora` for `steps` steps (no checkpoint but the last) in a child process; its CPU seconds and run."""
    name = f"real-lora-{'bf16' if bf16 else 'float32'}"
    sets = [f"name={name}", f"grpo.max_steps={steps}", f"grpo.save_steps={steps}", f"grpo.bf16={str(bf16).lower()}"]
    args = ["train", "--recipe", str(ROOT / "train" / "recipes" / "real-lora.yaml"), "--out", str(root / "runs"),
            *[x for s in sets for x in ("--set", s)]]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = usage.ru_utime + usage.ru_stime
    if not cli(args, slow=False, log=root / "bench.log", threads=threads):
        raise SystemExit(f"bench_bf16: training {name} failed; see {root / 'bench.log'}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime - cpu0, root / "runs" / name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="GRPO steps per precision (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: as the study trains)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the runs and bench.log here")
    args = ap.parse_args()
    from tina_probe.real.models import model_dir, why_broken

    torch.set_num_threads(args.threads)
    base = model_dir("smollm2-135m-instruct")
    if why_broken(base):  # `make bench` runs offline too: say what is missing rather than fetch the wheel
        print(f"bench_bf16: skipped: no cached real base at {base} (`tina-probe lab real-base` makes it)")
        return
    print(f"bench_bf16: {args.threads} thread(s); CPU bf16 support: "
          f"{'yes' if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else 'no'}")
    rates = {}
    print(f"{'GEMM':<28} {'float32 GFLOP/s':>16} {'bf16 GFLOP/s':>13} {'bf16/float32':>13}")
    for label, shape in GEMMS.items():
        r = {d: gemm_rate(*shape, dt) for d, dt in DTYPES.items()}
        rates[label] = r
        print(f"{label:<28} {r['float32'] / 1e9:16.1f} {r['bf16'] / 1e9:13.1f} {r['bf16'] / r['float32']:13.2f}")
    passes = {d: decode_pass(base, dt) for d, dt in DTYPES.items()}
    for d, (sec, nbytes) in passes.items():
        print(f"decoding pass, 16 rows, every linear layer ({nbytes / 1e6:.0f} MB of {d} weights): {sec * 1e3:.1f} ms, "
              f"{nbytes / sec / 1e9:.2f} GB/s read")
    print(f"decoding pass float32/bf16: {passes['float32'][0] / passes['bf16'][0]:.2f}x")
    n_params = weight_params(base)
    with tempfile.TemporaryDirectory(prefix="bench-bf16-") as tmp:
        root = args.keep.resolve() if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        rows = {}
        for d in DTYPES:
            cpu, run = grpo_steps(root, args.steps, args.threads, bf16=d == "bf16")
            floor_rates = {"flops": rates["1024^3"][d], "bandwidth": float("inf")}  # the FLOP floor at d's rate
            work, floor = train_work([run], n_params, floor_rates)
            f32 = train_work([run], n_params, {"flops": rates["1024^3"]["float32"], "bandwidth": float("inf")})[1]
            rows[d] = (cpu, work, floor, f32)
        print(f"{'real-lora':<10} {'s/step':>7} {'ms/token':>9} {'in steps s':>10} {'floor@own':>10} "
              f"{'x floor':>8} {'floor@f32':>10} {'x floor':>8}  work (process CPU s: start-up and load included)")
        for d, (cpu, work, floor, f32) in rows.items():
            in_steps = work["seconds_in_steps"]  # one thread: wall inside TRL's steps ~ CPU
            per_step, per_token = in_steps / max(work["steps"], 1), 1e3 * in_steps / max(work["tokens_trained"], 1)
            print(f"{d:<10} {per_step:7.1f} {per_token:9.2f} {in_steps:10.1f} {floor:10.1f} {in_steps / floor:8.1f} "
                  f"{f32:10.1f} {in_steps / f32:8.1f}  " + ", ".join(f"{k} {v}" for k, v in work.items())
                  + f" (process CPU {cpu:.1f} s)")
        per_token = {d: r[1]["seconds_in_steps"] / max(r[1]["tokens_trained"], 1) for d, r in rows.items()}
        print(f"step time per token trained, float32/bf16: {per_token['float32'] / per_token['bf16']:.2f}x")
        print(f"logs: {root}/bench.log" + ("" if args.keep else " (removed at exit; --keep DIR keeps them)"))


if __name__ == "__main__":
    main()
