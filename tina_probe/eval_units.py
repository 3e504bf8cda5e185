"""The sweep's units and their keys: one (checkpoint, benchmark, sampling settings) evaluation each, planned in
sweep order and keyed from what discovery recorded (no disk access here)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

from tina_probe.benchmarks import Benchmark, load_benchmark
from tina_probe.errors import TinaError
from tina_probe.shards import round_robin
from tina_probe.generate import SamplingSettings
from tina_probe.runs import Checkpoint, Run
from tina_probe.store import stable_key


@dataclass(frozen=True)
class Unit:
    """One (checkpoint, benchmark, sampling settings) evaluation; `key` names its samples part."""

    ckpt: Checkpoint
    benchmark: Benchmark
    key: str
    gen_key: str  # who generates: the same for the step-0 base of every run that shares a base


def sampling_label(s: SamplingSettings) -> str:
    """A readable label of the sampling settings, kept in every table so different settings never pool."""
    return f"n={s.n} T={s.temperature:g} top_p={s.top_p:g} max_tokens={s.max_tokens} seed={s.seed}"


def benchmark_fingerprint(bench: Benchmark) -> str:
    """A hash of a benchmark's problems (ids, prompts, answers): a changed file or --limit is a new unit. A
    non-default answer kind is hashed too, so results graded under another kind are not resumed as these."""
    h = hashlib.sha256()
    if bench.answer_kind != "math":  # the default leaves the keys of earlier stores as they were
        h.update(f"answer_kind={bench.answer_kind}\x02".encode())
    for p in bench.problems:
        h.update(f"{p.id}\x00{p.prompt}\x00{p.answer}\x01".encode())
    return h.hexdigest()[:16]


def _settings_fields(s: SamplingSettings) -> list:
    return [s.n, float(s.temperature), float(s.top_p), s.max_tokens, s.seed]


def group_prefix(run: str, step: int, benchmark: str, sampling: str) -> str:
    """The key of one row group of the tables (run, step, benchmark, sampling label): units that share it replace
    each other (another --limit, backend or checkpoint file under the same names) instead of pooling samples."""
    return stable_key("group", str(run), int(step), str(benchmark), str(sampling))[:16]


def group_key(ckpt: Checkpoint, bench: Benchmark, s: SamplingSettings) -> str:
    """group_prefix of a unit."""
    return group_prefix(ckpt.run, ckpt.step, bench.name, sampling_label(s))


def unit_key(ckpt: Checkpoint, bench: Benchmark, s: SamplingSettings, backend: str = "hf") -> str:
    """The stable resume key of one unit, '<group key>-<hash>': run, step, the checkpoint's path and files (for
    LoRA also its base's), benchmark problems, sampling settings and backend (different random streams: not
    interchangeable)."""
    return group_key(ckpt, bench, s) + "-" + stable_key(
        "unit", ckpt.run, ckpt.step, str(ckpt.path), ckpt.files, ckpt.base_files, bench.name,
        benchmark_fingerprint(bench), *_settings_fields(s), backend)


def generation_key(ckpt: Checkpoint, bench: Benchmark, s: SamplingSettings, backend: str = "hf") -> str:
    """Who generates a unit's completions: the base model itself for step 0 (shared across runs)."""
    if ckpt.kind == "base":
        return stable_key("base", ckpt.base, ckpt.files, bench.name, benchmark_fingerprint(bench),
                          *_settings_fields(s), backend)
    return unit_key(ckpt, bench, s, backend)


def plan_units(runs: Sequence[Run], benches: dict[str, list[Benchmark]], s: SamplingSettings,
               backend: str = "hf") -> list[Unit]:
    """Every unit in sweep order: per base model, the base (step 0) first, then LoRA checkpoints, then full ones."""
    bases = list(dict.fromkeys(r.base for r in runs))
    order = {"base": 0, "lora": 1, "full": 2}
    ckpts = [c for r in runs for c in r.checkpoints]
    ckpts.sort(key=lambda c: (order[c.kind], bases.index(c.base) if c.kind != "full" else 0, c.run, c.step))
    return [
        Unit(c, b, unit_key(c, b, s, backend), generation_key(c, b, s, backend))
        for c in ckpts for b in benches[c.run]
    ]


def shard_units(units: Sequence[Unit], shard: tuple[int, int] | None) -> list[Unit]:
    """This shard's units: generation jobs (units sharing a generation key) whose index % N == i."""
    if shard is None:
        return list(units)
    i, total = shard
    if not (0 <= i < total):
        raise TinaError(f"shard {i}/{total}: expected 0 <= i < N")
    mine = set(round_robin(sorted({u.gen_key for u in units}), shard))  # rule S2, one order whatever --ckpts' order
    return [u for u in units if u.gen_key in mine]


def benchmarks_for(runs: Sequence[Run], names: Sequence[str] | None, limit: int | None) -> dict[str, list[Benchmark]]:
    """Each run's benchmarks (--benchmarks, else its manifest's eval_benchmark), every one loaded once before any
    generation, so that a bad name or file fails first."""
    cache: dict[str, Benchmark] = {}

    def get(name: str) -> Benchmark:
        if name not in cache:
            cache[name] = load_benchmark(name, limit=limit)
        return cache[name]

    out = {}
    for r in runs:
        wanted = list(names) if names else _manifest_benchmarks(r)
        out[r.name] = [get(n) for n in wanted]
    by_name: dict[str, str] = {}
    for key, b in cache.items():
        if by_name.setdefault(b.name, key) != key:
            raise TinaError(f"{key}: benchmark name {b.name!r} is also used by {by_name[b.name]!r}")
    return out


def _manifest_benchmarks(run: Run) -> list[str]:
    value = run.manifest.get("eval_benchmark")
    if not value:
        raise TinaError(f"{run.path}: no eval_benchmark in tina_run.json; pass --benchmarks")
    return [value] if isinstance(value, str) else [str(v) for v in value]
