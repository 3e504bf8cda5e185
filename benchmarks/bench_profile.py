"""Benchmark: where the lab study's seconds go inside each stage, and how much of them the arithmetic leaves to gain.

Runs the study's three model stages on one lab recipe, in this process on one thread (as the study's children run),
as the study calls them: a `tina-probe train` (GRPO steps), an `eval` of its last checkpoint on both splits (4 samples
per problem, as the study), and a `retention` of it (and its base) with the study's five probes. Each call runs three
times: once to warm up (lazy imports, lm-eval's task build, the allocator), once under torch.profiler, whose
per-operator self times sort the profiled run's wall into
  gemm         matrix products (mm, addmm, bmm, baddbmm; their FLOPs and FLOP/s beside the floor's 1024^3 rate),
  attention    scaled-dot-product attention and its backward,
  elementwise  every other ATen operator taking >= 20 us a call on average (norms, activations, copies, adds: memory
               bound at these sizes),
  small ops    ATen operators under 20 us a call (views, a decoding step's tiny operators: mostly the dispatcher),
  outside      the rest: Python, TRL/PEFT/transformers bookkeeping, grading, the profiler's own cost, I/O;
and once plain, whose wall is printed beside (the profiler's cost is the difference).
The first three are the arithmetic the libraries run. The speed issue's rule is that results stay the same bit for
bit, so a change of ours cannot shrink them without changing the science (bf16, fused or compiled kernels, dropping
padding or repeated prompt positions all move the last bits, and GRPO's sampling turns those into other runs). Each
stage's last line is the bound that follows: the speed-up if everything but those kernels vanished (an upper bound: the
profiler's own cost counts as "outside"), and if the products also ran at the floor's rate.

Run: python benchmarks/bench_profile.py [--recipe lab-lora-r8] [--steps 8] [--stages train,eval,retention]
(~5 minutes at the defaults, much of it the profiler sorting its events; alone on the machine)."""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from bench_study import matmul_flops  # noqa: E402

GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm")
SMALL_OP_US = 20.0
STUDY_PROBES = "lab_facts_gen,lab_facts_mc,kl_general,ppl_general,kl_task"


@dataclass
class Split:
    """One call's seconds by class (see the module docstring)."""

    wall: float
    gemm: float
    gemm_flops: float
    attention: float
    elementwise: float
    small: float

    @property
    def kernels(self) -> float:
        return self.gemm + self.attention + self.elementwise

    @property
    def outside(self) -> float:
        return max(self.wall - self.kernels - self.small, 0.0)

    def kernels_at_rate(self, rate: float) -> float:
        """The kernels' seconds were the products to run at `rate` FLOP/s."""
        return self.gemm_flops / rate + self.attention + self.elementwise


def split_profile(prof, wall: float) -> Split:
    """Sort a profile's operator self times into the classes of the module docstring."""
    gemm = flops = attention = elementwise = small = 0.0
    for e in prof.key_averages():
        if not e.key.startswith("aten::") or e.count == 0:
            continue
        seconds = e.self_cpu_time_total / 1e6
        if e.key in GEMM_OPS:
            gemm += seconds
            flops += e.flops
        elif "scaled_dot_product" in e.key or "flash_attention" in e.key:
            attention += seconds
        elif e.self_cpu_time_total / e.count >= SMALL_OP_US:
            elementwise += seconds
        else:
            small += seconds
    return Split(wall=wall, gemm=gemm, gemm_flops=flops, attention=attention, elementwise=elementwise, small=small)


def run_cli(args: list[str]) -> float:
    """One `tina-probe` call in this process (so the profiler sees it); its wall seconds. Its output is kept quiet."""
    from tina_probe.cli import app

    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            app(args, standalone_mode=False)
        except SystemExit as e:  # typer ends some commands by exiting; a non-zero code is a failure
            if e.code:
                raise
    return time.perf_counter() - t


def measured(args: list[str], reset) -> tuple[Split, float]:
    """The call once to warm up (lazy imports, lm-eval's task build, the allocator), then under the profiler, then
    plain, each after `reset`: the profiled run's split and the plain run's wall."""
    reset()
    run_cli(args)
    reset()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
        wall = run_cli(args)
    split = split_profile(prof, wall)
    del prof  # its millions of event objects would slow the plain run's garbage collections
    gc.collect()
    reset()
    return split, run_cli(args)


def forget_table(out: Path, table: str) -> None:
    """Remove a store table and its resume parts, so that the next call computes it again."""
    (out / f"{table}.parquet").unlink(missing_ok=True)
    shutil.rmtree(out / ".parts" / table, ignore_errors=True)


def report(name: str, s: Split, plain_wall: float, rate: float) -> None:
    pct = lambda x: f"{x:7.2f} s {100 * x / s.wall:5.1f}%"  # noqa: E731
    achieved = s.gemm_flops / s.gemm if s.gemm else 0.0
    print(f"\n{name}: {s.wall:.2f} s wall under the profiler ({plain_wall:.2f} s plain)")
    print(f"  gemm        {pct(s.gemm)}  {s.gemm_flops / 1e9:8.1f} GFLOP at {achieved / 1e9:5.1f} GFLOP/s "
          f"(floor's rate {rate / 1e9:.1f})")
    print(f"  attention   {pct(s.attention)}")
    print(f"  elementwise {pct(s.elementwise)}")
    print(f"  small ops   {pct(s.small)}")
    print(f"  outside     {pct(s.outside)}")
    print(f"  bound: {s.wall / s.kernels:.2f}x faster if all but the kernels vanished; "
          f"{s.wall / s.kernels_at_rate(rate):.2f}x if the products also ran at the floor's rate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="lab-lora-r8", help="a lab recipe in train/recipes/")
    ap.add_argument("--steps", type=int, default=8, help="GRPO steps of the train stage")
    ap.add_argument("--stages", default="train,eval,retention")
    ap.add_argument("--limit", type=int, default=32, help="eval problems per split (the study: 100; 32 keep its 64-row "
                    "blocks)")
    ap.add_argument("--probe-limit", type=int, default=64, help="retention items per probe (the study: 64)")
    a = ap.parse_args()
    torch.set_num_threads(1)  # the study's children run one thread each
    rate = matmul_flops(1)
    print(f"one thread; the floor's matmul rate {rate / 1e9:.1f} GFLOP/s; recipe {a.recipe}, {a.steps} steps")
    work = Path(tempfile.mkdtemp(prefix="bench_profile_"))
    runs, out = work / "runs", work / "results"
    recipe = ROOT / "train" / "recipes" / f"{a.recipe}.yaml"
    train = ["train", "--recipe", str(recipe), "--out", str(runs), "--set", f"grpo.max_steps={a.steps}",
             "--set", f"grpo.save_steps={a.steps}"]
    ckpt = runs / a.recipe / f"checkpoint-{a.steps}"
    evaluate = ["eval", "--ckpts", str(ckpt), "--benchmarks", "lab-test,lab-probe", "--n", "4",
                "--limit", str(a.limit), "--max-tokens", "64", "--seed", "0", "--out", str(out)]
    retention = ["retention", "--ckpts", str(ckpt), "--probes", STUDY_PROBES, "--limit", str(a.probe_limit),
                 "--out", str(out)]
    calls = {"train": (train, lambda: shutil.rmtree(runs, ignore_errors=True)),
             "eval": (evaluate, lambda: shutil.rmtree(out, ignore_errors=True)),
             "retention": (retention, lambda: forget_table(out, "retention"))}
    stages = [s for s in a.stages.split(",") if s]
    try:
        if "train" not in stages:
            run_cli(train)  # the checkpoint the other stages read
        if "retention" in stages and "eval" not in stages:
            run_cli(evaluate)  # kl_task reuses eval's samples, as in the study
        total = []
        for name in stages:
            args, reset = calls[name]
            split, plain = measured(args, reset)
            report(name, split, plain, rate)
            total.append(split)
        if len(total) > 1:
            wall = sum(s.wall for s in total)
            kernels = sum(s.kernels for s in total)
            at_floor = sum(s.kernels_at_rate(rate) for s in total)
            print(f"\nall stages: {wall:.2f} s wall; kernels {kernels:.2f} s ({100 * kernels / wall:.0f}%); "
                  f"bound {wall / kernels:.2f}x (kernels only), {wall / at_floor:.2f}x (products at the floor's rate)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
