"""Benchmark: the lab study's stages, each against its floor on this machine, today's code beside the old paths.

The stages (train, eval, spectra, phase, retention, dynamics, hypothesis) run at a small size, each with its wall and
CPU seconds, the work it did and its floor; today's code and the code as it was before the speed work side by side in
one run, and the checkpoints the two sides trained (byte for byte) and the tables they wrote (cell for cell) compared
(same seeds: they must be identical). "Before" is
the old paths (TINA_PROBE_SLOW_PATHS=1: math-verify on every answer, file identity read per call, retention's lm-eval
environment report per call and base forwards per checkpoint, TRL's LM head over every position in LoRA training,
TRL's sampling by generate with every row computed to the end, eval's prefill of every row)
and the study's old way of running eval, spectra and
retention: one process on both cores; every child a subprocess that imports torch, transformers and peft itself.
Today's study runs them as two `--shard` processes side by side, one thread each (tina_probe/lab/workers.py), every
child forked from one server that imported those libraries once (tina_probe/lab/forked.py), and so does the "after"
side; the server's imports are counted in the first stage, where the study pays them.

The floor of a stage is the least time its arithmetic and weight reads can take here: FLOPs done / the matmul FLOP/s
torch reaches on one thread, and for decoding the weight bytes read per decoding step / the measured memory
bandwidth. Stages without model arithmetic (phase, dynamics, hypothesis) have no floor worth the name ("-"); nor has
retention yet: its table keeps no token counts (its units, checkpoints and lm-eval items scored are shown).
Every stage runs `tina-probe` in child processes as the study does: training runs two side by side with one thread
each; dynamics and hypothesis one process on every core; phase too; today's phase and dynamics spread their curves
and runs over every core (`--workers`), as the study runs them; CPU seconds are the children's. Wall seconds are what
the study waits for: on a shared machine they swing 2-10x, so compare before/after only within one run.

Run: python benchmarks/bench_study.py [--quick | --real] [--no-before] [--keep DIR] [--stages S,...] [--probes P,...]
(e.g. `--stages retention --probes lab_facts_gen,lab_facts_mc,kl_general,ppl_general,kl_task`: train, then retention
with the whole study's probes). `--real`: the real study's recipes, splits and probes on SmolLM2-135M-Instruct (the
cached real base, built by `tina-probe lab real-base`), at the size REAL below; its train stage is the real GRPO
step against its floor; the real study keeps one process per stage (its plan's shards=1), and so does the bench."""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from tina_probe.lab.forked import ForkedChild, server_cpu_seconds  # noqa: E402
from tina_probe.runs import training_log  # noqa: E402
from tina_probe.slow_paths import ENV as SLOW_ENV  # noqa: E402

THREADS = 1  # the floors' rate, and each side-by-side child's thread budget
CORES = max(1, os.cpu_count() or 2)  # a stage run as one process gets every core (the study's run_cli)


@dataclass(frozen=True)
class Study:
    """Which study the bench times: its recipes, evaluation splits, and base model folder (for the floors)."""

    recipes: tuple[str, ...]
    benchmarks: str
    base: str  # a folder, or real:NAME (tina_probe.real resolves it)
    spectra_args: tuple[str, ...] = ()  # as the study calls spectra (the real study: --no-intruders)


LAB = Study(recipes=("lab-lora-r8", "lab-full"), benchmarks="lab-test,lab-probe", base=str(ROOT / "data" / "lab" / "base"))
REAL_STUDY = Study(recipes=("real-lora", "real-full"), benchmarks="real-test,real-probe",
                   base="real:smollm2-135m-instruct", spectra_args=("--no-intruders",))


@dataclass(frozen=True)
class Size:
    """How much of the study one bench run does."""

    steps: int
    save_steps: int
    eval_n: int
    eval_limit: int
    probes: tuple[str, ...]
    probe_limit: int


QUICK = Size(steps=4, save_steps=2, eval_n=2, eval_limit=12, probes=("lab_facts_mc", "kl_general"), probe_limit=8)
SMALL = Size(steps=16, save_steps=4, eval_n=4, eval_limit=24, probes=("lab_facts_mc", "kl_general"), probe_limit=16)
# the real study's step (4 prompts x 4 samples x <= 64 tokens), two of them per run, a few problems and probes
REAL = Size(steps=2, save_steps=1, eval_n=2, eval_limit=8, probes=("kl_real", "kl_task_real"), probe_limit=8)


@dataclass
class Stage:
    """One stage's measurement: seconds, the work done, and its floor (seconds; None where none applies)."""

    name: str
    wall: float = 0.0
    cpu: float = 0.0
    ok: bool = True
    work: dict = field(default_factory=dict)
    floor: float | None = None


# ----------------------------------------------------------------------------- the machine


def matmul_flops(threads: int) -> float:
    """FLOP/s of a float32 1024x1024 matmul on `threads` threads, best of several (the compute floor's rate)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = float("inf")
    for _ in range(8):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * 1024**3 / best


def memory_bandwidth(threads: int) -> float:
    """Bytes/s of copying a 256 MB float32 tensor (read + write), best of several (the decoding floor's rate)."""
    torch.set_num_threads(threads)
    x = torch.ones(64 * 1024 * 1024)
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        y.copy_(x)
        best = min(best, time.perf_counter() - t)
    return 2 * x.numel() * 4 / best


def weight_params(folder: Path) -> int:
    """Parameters of a model folder's safetensors (the lab base: ~2.2M)."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def matrix_shapes(folder: Path) -> dict[str, tuple[int, int]]:
    """module path ('layers.N.<...>.<module>') -> shape of every 2-D weight of a model folder."""
    from analysis.spectra import SafetensorsWeights, _weight_index

    weights = SafetensorsWeights(folder)
    return {canon: weights.shape(key) for canon, key in _weight_index(weights, layers_only=False).items()}


def svd_flops(m: int, n: int) -> float:
    """FLOPs of a thin SVD with left vectors (Golub & Van Loan's R-SVD count: 6mn^2 + 20n^3, m >= n)."""
    m, n = max(m, n), min(m, n)
    return 6 * m * n * n + 20 * n**3


# ----------------------------------------------------------------------------- running a stage


def start(args: list[str], *, slow: bool, log: Path, threads: int = THREADS, fork: bool | None = None):
    """Start `tina-probe ARGS` in a child process with `threads` threads (and the old paths when `slow`): forked from
    the preloaded server as the study starts its children (tina_probe/lab/forked.py), or, on the old side (or with
    fork=False), as a subprocess that imports everything itself."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop(SLOW_ENV, None)
    if slow:
        env[SLOW_ENV] = "1"
    forking = (not slow) if fork is None else fork
    if forking:
        return ForkedChild(tuple(args), log, threads, env, cwd=ROOT, append=True)
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, "-m", "tina_probe.cli", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)


def cli(args: list[str], *, slow: bool, log: Path, threads: int = THREADS) -> bool:
    """Run `tina-probe ARGS` to its end; True on success (benchmarks/bench_bf16.py trains through it)."""
    return start(args, slow=slow, log=log, threads=threads).wait() == 0


def together(calls: list[list[str]], *, slow: bool, log: Path) -> bool:
    """Run the calls side by side, the cores split between them (one call alone gets every core); True if all pass."""
    threads = max(1, CORES // len(calls))
    procs = [start(args, slow=slow, log=log, threads=threads) for args in calls]
    return all([p.wait() == 0 for p in procs])


def children_cpu() -> float:
    """CPU seconds of every finished child: subprocesses (reaped by this process) and forked commands (reaped by
    the forkserver, whose own CPU counts too: its imports are paid in the stage that starts it, as in the study)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + server_cpu_seconds()


def timed(name: str, groups: list[list[list[str]]], *, slow: bool, log: Path) -> Stage:
    """One stage: its groups of CLI calls in turn (the calls of a group side by side), wall and children's CPU s."""
    cpu0, t0 = children_cpu(), time.perf_counter()
    ok = all(together(calls, slow=slow, log=log) for calls in groups)
    return Stage(name, wall=time.perf_counter() - t0, cpu=children_cpu() - cpu0, ok=ok)


# ----------------------------------------------------------------------------- the work each stage did


def train_flops_per_token(kind: str, beta: float) -> int:
    """FLOPs per base parameter per token of one GRPO step: sampling (prefill and decoding) 2, the policy's forward 2,
    its backward 4 for full FT (input and weight gradients) or 2 for LoRA (input gradients only: autograd skips the
    frozen weights' gradients; the adapter's own are negligible), and the reference model's forward 2 when beta > 0."""
    return 2 + 2 + (2 if kind == "lora" else 4) + (2 if beta > 0 else 0)


def train_work(run_dirs: list[Path], n_params: int, rates: dict) -> tuple[dict, float]:
    """Steps, completions, tokens generated and trained (TRL's num_tokens: prompts and completions), seconds inside the
    steps (TRL's step_time; the rest of the stage is process start, loading and saving); floor = sampling (max of its
    FLOPs and one weight read per decoding step) + the rest of the step's FLOPs (train_flops_per_token). Sampling
    prefills each distinct prompt once (its num_generations rows share it; before stop 37 the floor counted every
    row's prefill, and the work still reports that floor, floor_every_row_prefilled)."""
    steps = completions = generated = trained = passes = in_steps = 0.0
    flops_gen = flops_train = flops_prefill_repeats = 0.0
    for run_dir in run_dirs:
        manifest = json.loads((run_dir / "tina_run.json").read_text())
        recipe = manifest.get("recipe", {})
        grpo = recipe.get("grpo", {})
        per_step = int(grpo.get("prompts_per_step", 8)) * int(grpo.get("num_generations", 8))
        log = training_log(run_dir)
        metric = {name: log[log.metric == name].value for name in
                  ("completion_length", "completion_max_length", "num_tokens", "step_time")}
        lengths = metric["completion_length"]
        steps += len(lengths)
        completions += per_step * len(lengths)
        generated += per_step * float(lengths.sum())
        tokens = float(metric["num_tokens"].max()) if len(metric["num_tokens"]) else per_step * float(lengths.sum())
        trained += tokens
        passes += float(metric["completion_max_length"].sum()) if len(metric["completion_max_length"]) else 0.0
        in_steps += float(metric["step_time"].sum())
        per_token = train_flops_per_token(str(manifest.get("kind", "full")), float(grpo.get("beta", 0.0)))
        prompt_tokens = max(0.0, tokens - per_step * float(lengths.sum()))
        repeats = prompt_tokens * (1 - 1 / int(grpo.get("num_generations", 8)))  # rows that share a prompt's prefill
        flops_gen += 2 * n_params * (tokens - repeats)
        flops_prefill_repeats += 2 * n_params * repeats
        flops_train += (per_token - 2) * n_params * tokens
    decode_reads = passes * 4 * n_params / rates["bandwidth"]
    floor = max(flops_gen / rates["flops"], decode_reads) + flops_train / rates["flops"]
    every_row = max((flops_gen + flops_prefill_repeats) / rates["flops"], decode_reads) + flops_train / rates["flops"]
    return dict(steps=int(steps), completions=int(completions), tokens_generated=int(generated),
                tokens_trained=int(trained), gflop=round((flops_gen + flops_train) / 1e9, 1),
                seconds_in_steps=round(in_steps, 1), floor_every_row_prefilled=round(every_row, 1)), floor


def eval_work(out: Path, n_params: int, rates: dict) -> tuple[dict, float]:
    """Completions and tokens generated (samples table); floor = max(FLOPs, one weight read per decoding step of
    each model and benchmark: at least its longest completion's steps)."""
    samples = pd.read_parquet(out / "samples.parquet")
    tokens = float(samples.n_tokens.sum())
    model = samples.run.where(samples.kind != "base", "base")
    passes = float(samples.assign(model=model).groupby(["model", "step", "benchmark"]).n_tokens.max().sum())
    floor = max(2 * n_params * tokens / rates["flops"], passes * 4 * n_params / rates["bandwidth"])
    return dict(completions=len(samples), tokens_generated=int(tokens)), floor


def spectra_work(out: Path, shapes: dict, rates: dict, intruders: bool = True) -> tuple[dict, float]:
    """Matrices decomposed (spectra rows); floor = thin SVDs: each updated W_t (with intruders), each full-FT ΔW, and
    each base matrix once."""
    df = pd.read_parquet(out / "spectra.parquet")
    flops = 0.0
    for kind, path in zip(df.kind, df.module_path):
        m, n = shapes.get(path, (0, 0))
        flops += svd_flops(m, n) * ((kind == "full") + intruders)
    flops += sum(svd_flops(*shapes[p]) for p in set(df.module_path) if p in shapes)
    return dict(matrices=len(df), gflop=round(flops / 1e9, 2)), flops / rates["flops"]


def retention_work(out: Path) -> dict:
    """Retention work: (checkpoint, probe) units, checkpoints probed, and the lm-eval items scored (the per-item scores
    each lm-eval unit keeps, one metric each; the KL / perplexity probes keep none, so they count as units only)."""
    df = pd.read_parquet(out / "retention.parquet")
    per_unit = df.drop_duplicates(["path", "probe"]) if "path" in df else df.drop_duplicates(["run", "step", "probe"])
    items = int(per_unit["items"].map(lambda x: 0 if x is None else len(x)).sum()) if "items" in df else 0
    return dict(units=len(per_unit), checkpoints=per_unit.drop_duplicates(["run", "step"]).shape[0],
                lmeval_items=items)


def rows_of(out: Path, table: str) -> dict:
    path = out / f"{table}.parquet"
    return {f"{table}_rows": len(pd.read_parquet(path))} if path.is_file() else {}


# ----------------------------------------------------------------------------- the stages


@dataclass(frozen=True)
class Variant:
    """One side of the comparison: its folders, whether it runs the old paths, and how many `--shard` processes
    eval, spectra and retention run as (1: one process on every core, as the study did before)."""

    root: Path
    slow: bool
    study: Study = LAB
    shards: int = 1

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def out(self) -> Path:
        return self.root / "results"

    @property
    def log(self) -> Path:
        return self.root / "bench.log"

    @property
    def run_dirs(self) -> list[Path]:
        return [self.runs / f"{r}-bench" for r in self.study.recipes]

    @property
    def workers(self) -> tuple[str, ...]:
        """phase and dynamics on every core, as today's study runs them (processes over curves / runs); the old
        paths had one process."""
        return () if self.slow else ("--workers", str(os.cpu_count() or 2))


def stage_calls(name: str, v: Variant, size: Size) -> list[list[list[str]]]:
    """The `tina-probe` calls of one stage as the study makes them (tina_probe/lab/study.py), at this size: groups run
    in turn, the calls of a group side by side (training runs; a stage's shards)."""
    ckpts = [str(d) for d in v.run_dirs]
    if name == "train":
        sets = sum((["--set", o] for o in (f"grpo.max_steps={size.steps}", f"grpo.save_steps={size.save_steps}")), [])
        return [[["train", "--recipe", str(ROOT / "train" / "recipes" / f"{r}.yaml"), "--out", str(v.runs),
                  "--set", f"name={r}-bench", *sets] for r in v.study.recipes]]
    if name == "eval":
        call = ["eval", "--ckpts", *ckpts, "--benchmarks", v.study.benchmarks, "--n", str(size.eval_n),
                "--limit", str(size.eval_limit), "--max-tokens", "64", "--seed", "0", "--out", str(v.out)]
    elif name == "spectra":
        call = ["spectra", "--ckpts", *ckpts, *v.study.spectra_args, "--out", str(v.out)]
    elif name == "retention":
        call = ["retention", "--ckpts", *ckpts, "--probes", ",".join(size.probes), "--limit", str(size.probe_limit),
                "--out", str(v.out)]
    elif name == "phase":
        return [[["phase", "--runs", *ckpts, "--out", str(v.out), *v.workers]]]
    elif name == "dynamics":
        return [[["dynamics", "--out", str(v.out), *v.workers]]]
    else:
        return [[[name, "--out", str(v.out)]]]
    if v.shards <= 1:
        return [[call]]
    shards = [[[*call, "--shard", f"{i}/{v.shards}"] for i in range(v.shards)]]
    return shards + ([[call]] if name == "spectra" else [])  # spectra: a last run writes update_overlap


def stage_work(stage: Stage, v: Variant, machine: dict) -> None:
    """Fill in the work a finished stage did and its floor, from what it wrote."""
    if not stage.ok:
        return
    if stage.name == "train":
        stage.work, stage.floor = train_work(v.run_dirs, machine["params"], machine)
    elif stage.name == "eval":
        stage.work, stage.floor = eval_work(v.out, machine["params"], machine)
    elif stage.name == "spectra":
        stage.work, stage.floor = spectra_work(v.out, machine["shapes"], machine,
                                               intruders="--no-intruders" not in v.study.spectra_args)
    elif stage.name == "retention":
        stage.work = retention_work(v.out)
    else:
        stage.work = rows_of(v.out, {"phase": "phases", "dynamics": "problem_dynamics"}.get(stage.name, stage.name))


STAGES = ("train", "eval", "spectra", "phase", "retention", "dynamics", "hypothesis")


def study(variants: list[Variant], size: Size, machine: dict, stages: tuple[str, ...] = STAGES) -> list[list[Stage]]:
    """The given stages in the study's order; within a stage each variant in turn, the order alternating from stage to
    stage so neither side always meets the colder caches. Returns one list of stages per variant."""
    for v in variants:
        v.root.mkdir(parents=True, exist_ok=True)
        # warm the file cache with a subprocess on both sides: imports then cost the same, and the forkserver of
        # today's side still starts (and imports) inside its first stage, as in the study
        start(["--help"], slow=v.slow, log=v.log, fork=False).wait()
    results: list[list[Stage]] = [[] for _ in variants]
    for i, name in enumerate(stages):
        order = list(range(len(variants)))
        if i % 2:
            order.reverse()
        for j in order:
            v = variants[j]
            stage = timed(name, stage_calls(name, v, size), slow=v.slow, log=v.log)
            stage_work(stage, v, machine)
            results[j].append(stage)
    return results


# ----------------------------------------------------------------------------- grading alone


def grading_cost(v: Variant, repeats: int = 3) -> None:
    """Seconds per completion to grade the eval samples again in this process, math-verify alone vs the integer fast
    path (caches cleared before each pass; median of `repeats`), and what that is per GRPO step of 64 completions."""
    import statistics

    from tina_probe import grading
    from tina_probe.benchmarks import load_benchmark

    samples = pd.read_parquet(v.out / "samples.parquet")
    golds = {(name, str(p.id)): p.answer for name in samples.benchmark.unique() for p in load_benchmark(name).problems}
    rows = [(c, golds[(b, str(i))], bool(t)) for c, b, i, t in
            zip(samples.completion, samples.benchmark, samples.problem_id, samples.truncated)]
    per = {}
    for slow in (True, False, True, False) * repeats:
        os.environ.pop(SLOW_ENV, None)
        if slow:
            os.environ[SLOW_ENV] = "1"
        grading._grade.cache_clear()
        grading.parse_gold.cache_clear()
        t = time.process_time()
        for completion, gold, truncated in rows:
            grading.grade(completion, gold, truncated=truncated)
        per.setdefault(slow, []).append((time.process_time() - t) / len(rows))
    os.environ.pop(SLOW_ENV, None)
    slow, fast = statistics.median(per[True]), statistics.median(per[False])
    print(f"grading {len(rows)} eval completions again (CPU, median of {repeats * 2}): "
          f"math-verify {slow * 1e3:.3f} ms, fast path {fast * 1e3:.3f} ms per completion ({slow / fast:.0f}x); "
          f"per GRPO step of 64 completions {64 * slow * 1e3:.1f} -> {64 * fast * 1e3:.2f} ms")


# ----------------------------------------------------------------------------- same science


TABLES = ("samples", "passk", "format", "spectra", "retention", "problem_dynamics", "hypothesis")


def comparable(v: Variant, table: str) -> pd.DataFrame | None:
    """A table of one variant with its own folder names taken out of text cells, rows in a fixed order."""
    path = v.out / f"{table}.parquet"
    if not path.is_file():
        return None
    df = pd.read_parquet(path)
    for col in df.columns:
        if pd.api.types.is_object_dtype(df[col]) or pd.api.types.is_string_dtype(df[col]):
            df[col] = df[col].map(lambda x: x.replace(str(v.root), "<root>") if isinstance(x, str) else x)
    keys = [c for c in df.columns if df[c].map(lambda x: isinstance(x, (str, int, float, bool))).all()]
    return df.sort_values(keys).reset_index(drop=True) if keys else df


def same_results(a: Variant, b: Variant) -> None:
    """Whether today's code and the old paths trained the same weights (every checkpoint's safetensors, byte for byte)
    and wrote the same tables (same seeds: they must, cell for cell)."""
    weights = [{p.relative_to(v.runs): p for d in v.run_dirs for p in sorted(d.glob("checkpoint-*/*.safetensors"))}
               for v in (a, b)]
    if weights[0] or weights[1]:
        differ = [str(k) for k in sorted(weights[0].keys() & weights[1].keys())
                  if weights[0][k].read_bytes() != weights[1][k].read_bytes()]
        missing = sorted(str(k) for k in weights[0].keys() ^ weights[1].keys())
        print(f"  checkpoints: {len(weights[0].keys() & weights[1].keys()) - len(differ)} identical"
              + (f", DIFFER: {', '.join(differ)}" if differ else "")
              + (f", on one side only: {', '.join(missing)}" if missing else ""))
    for table in TABLES:
        x, y = comparable(a, table), comparable(b, table)
        if x is None and y is None:  # a stage not run (--stages)
            continue
        if x is None or y is None:
            print(f"  {table}: missing on {'today' if x is None else 'before'}'s side")
            continue
        try:
            pd.testing.assert_frame_equal(x, y, check_exact=True)
            print(f"  {table}: identical ({len(x)} rows)")
        except AssertionError as exc:
            print(f"  {table}: DIFFERS: {where_they_differ(x, y) or str(exc).splitlines()[0]}")


def where_they_differ(x: pd.DataFrame, y: pd.DataFrame) -> str:
    """Per differing column of two same-shaped tables: rows that differ and, for numbers, the largest relative
    difference (what a reader needs to tell float rounding from a changed result); '' when the shapes differ."""
    if x.shape != y.shape or list(x.columns) != list(y.columns):
        return ""
    parts = []
    for col in x.columns:
        a, b = x[col], y[col]
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            a, b = a.astype(float), b.astype(float)
            differ = ~((a == b) | (a.isna() & b.isna()))
            if differ.any():
                rel = ((a - b).abs() / pd.concat([a.abs(), b.abs()], axis=1).max(axis=1).clip(lower=1e-300))[differ]
                parts.append(f"{col} {int(differ.sum())} rows (max relative difference {rel.max():.1e})")
        else:
            differ = pd.Series([repr(u) != repr(v) for u, v in zip(a, b)], index=a.index)
            if differ.any():
                parts.append(f"{col} {int(differ.sum())} rows")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- printing


def fmt_work(work: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in work.items()) or "-"


def report(after: list[Stage], before: list[Stage] | None) -> None:
    """One line per stage: wall, CPU, floor and CPU/floor for today's code, then the old code and the ratios."""
    head = f"{'stage':<10} {'wall s':>8} {'cpu s':>8} {'floor s':>9} {'cpu/floor':>10}"
    if before:
        head += f" | {'before wall':>11} {'before cpu':>10} {'wall before/after':>17} {'cpu before/after':>16}"
    print(head + "  work (today's code)")
    pairs = zip(after, before) if before else ((a, None) for a in after)
    for a, b in pairs:
        floor = f"{a.floor:9.3f}" if a.floor else f"{'-':>9}"
        ratio = f"{a.cpu / a.floor:10.1f}" if a.floor else f"{'-':>10}"
        line = f"{a.name:<10} {a.wall:8.1f} {a.cpu:8.1f} {floor} {ratio}"
        if b is not None:
            line += f" | {b.wall:11.1f} {b.cpu:10.1f} {b.wall / max(a.wall, 1e-9):17.2f} {b.cpu / max(a.cpu, 1e-9):16.2f}"
        flag = "" if a.ok and (b is None or b.ok) else "  (FAILED: see bench.log)"
        print(line + "  " + fmt_work(a.work) + flag)
    total_a = sum(s.cpu for s in after)
    if before:
        total_b = sum(s.cpu for s in before)
        wall_a, wall_b = sum(s.wall for s in after), sum(s.wall for s in before)
        print(f"{'total':<10} {wall_a:8.1f} {total_a:8.1f} {'':>9} {'':>10} | {wall_b:11.1f} {total_b:10.1f} "
              f"{wall_b / max(wall_a, 1e-9):17.2f} {total_b / max(total_a, 1e-9):16.2f}")
    else:
        print(f"{'total':<10} {sum(s.wall for s in after):8.1f} {total_a:8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 GRPO steps per run, 12 problems: a smoke run of a few "
                    "minutes")
    ap.add_argument("--real", action="store_true", help="the real study (SmolLM2-135M-Instruct) at size REAL: 2 GRPO "
                    "steps per run, 8 problems, the real probes")
    ap.add_argument("--no-before", action="store_true", help="today's code only (no side-by-side old paths)")
    ap.add_argument("--keep", type=Path, default=None, help="keep runs, results and bench.log here")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to run, in the study's order "
                    "(train always runs: the others read its checkpoints; phase, dynamics, hypothesis need eval)")
    ap.add_argument("--probes", default=None, help="retention probes instead of the size's (the whole study's: "
                    "lab_facts_gen,lab_facts_mc,kl_general,ppl_general,kl_task)")
    args = ap.parse_args()
    if args.quick and args.real:
        ap.error("--quick and --real: choose one")
    size = REAL if args.real else QUICK if args.quick else SMALL
    which = REAL_STUDY if args.real else LAB
    if args.probes:
        size = replace(size, probes=tuple(p.strip() for p in args.probes.split(",") if p.strip()))
    asked = {s.strip() for s in args.stages.split(",") if s.strip()}
    unknown = sorted(asked - set(STAGES))
    if unknown:
        ap.error(f"--stages: unknown {', '.join(unknown)} (stages: {', '.join(STAGES)})")
    stages_run = tuple(s for s in STAGES if s in asked | {"train"})
    from tina_probe.real.models import resolve_model

    base = Path(resolve_model(which.base))
    machine = dict(flops=matmul_flops(THREADS), bandwidth=memory_bandwidth(THREADS), params=weight_params(base),
                   shapes=matrix_shapes(base))
    print(f"machine: matmul {machine['flops'] / 1e9:.1f} GFLOP/s, memory {machine['bandwidth'] / 1e9:.1f} GB/s "
          f"({THREADS} thread); {'real' if args.real else 'lab'} base {machine['params'] / 1e6:.2f}M parameters; "
          f"size: {size}")
    with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp:
        root = args.keep.resolve() if args.keep else Path(tmp)
        # Each variant trains its own runs from the same seeds and analyses them in its own store.
        shards = 1 if args.real else 2  # as the study's plans: REAL keeps one process per stage
        variants = [Variant(root / "after", slow=False, study=which, shards=shards)] + (
            [] if args.no_before else [Variant(root / "before", True, study=which)])
        stages = study(variants, size, machine, stages_run)
        report(stages[0], stages[1] if len(stages) > 1 else None)
        if any(s.name == "eval" and s.ok for s in stages[0]):
            grading_cost(variants[0])
        if len(variants) > 1:
            print("same results, today's code vs the old paths:")
            same_results(*variants)
        print(f"logs: {root}/*/bench.log" + ("" if args.keep else " (removed at exit; --keep DIR keeps them)"))


if __name__ == "__main__":
    main()
