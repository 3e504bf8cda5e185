"""The evaluation sweep: checkpoints x benchmarks -> graded samples (resumable parts) -> passk and format tables."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pandas as pd
from tqdm.auto import tqdm

from tina_probe.benchmarks import Benchmark, load_benchmark
from tina_probe.errors import CheckpointError, TinaError
from tina_probe.generate import Generator, SamplingSettings, make_generator
from tina_probe.generate.base import GenJob, generate_jobs
from tina_probe.runs import Checkpoint, Run, discover_runs, weights_identity
from tina_probe.store import Store, stable_key

log = logging.getLogger(__name__)

SUMMARY_GROUPS = ("run", "step", "kind", "benchmark", "sampling")
SAMPLE_KEY_COLS = ["run", "step", "benchmark", "sampling", "problem_id", "sample_idx"]
BASE_CACHE = "base_samples"  # parts of graded base completions, shared by every run with that base
SUPERSEDED = "samples_superseded"  # parts replaced by a later unit of the same row group, kept to come back to


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
    """A hash of a benchmark's problems (ids, prompts, answers): a changed file or --limit is a new unit."""
    h = hashlib.sha256()
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
    """The stable resume key of one unit, '<group key>-<hash>': run, step, the checkpoint's path and files,
    benchmark problems, sampling settings and backend (different random streams: not interchangeable)."""
    base_files = weights_identity(ckpt.base) if ckpt.kind == "lora" else None  # an adapter's output needs its base
    return group_key(ckpt, bench, s) + "-" + stable_key(
        "unit", ckpt.run, ckpt.step, str(ckpt.path), weights_identity(ckpt.path), base_files, bench.name,
        benchmark_fingerprint(bench), *_settings_fields(s), backend)


def generation_key(ckpt: Checkpoint, bench: Benchmark, s: SamplingSettings, backend: str = "hf") -> str:
    """Who generates a unit's completions: the base model itself for step 0 (shared across runs)."""
    if ckpt.kind == "base":
        return stable_key("base", ckpt.base, weights_identity(ckpt.base), bench.name, benchmark_fingerprint(bench),
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
    jobs = list(dict.fromkeys(u.gen_key for u in units))
    mine = {g for j, g in enumerate(jobs) if j % total == i}
    return [u for u in units if u.gen_key in mine]


def _benchmarks_for(runs: Sequence[Run], names: Sequence[str] | None, limit: int | None) -> dict[str, list[Benchmark]]:
    """Load every benchmark once, before any generation, so a bad name or file fails first."""
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


# ----------------------------------------------------------------------------- grading rows


def think_in_prompt(rendered: str, bench: Benchmark) -> bool:
    """Whether the completion starts inside <think>: the benchmark says so, or the rendered prompt ends with it."""
    return bench.think_in_prompt or rendered.rstrip().endswith("<think>")


def graded_fields(completion: str, gold, *, truncated: bool, think: bool, choice: bool = False) -> dict:
    """The grade and format columns of one samples row (shared with `tina-probe grade`); choice: the gold is a
    letter (multiple choice, read from the final `Answer: X` line)."""
    from tina_probe.grading import grade

    g = grade(completion, gold, truncated=truncated, think_in_prompt=think, choice=choice)
    f = g.format
    return {
        "extracted_answer": g.extracted_answer, "correct_strict": bool(g.correct_strict),
        "correct_lenient": bool(g.correct_lenient), "think_closed": f.think_closed,
        "boxed": int(f.n_boxed_after_think), "truncated": bool(truncated), "well_formatted": f.well_formatted,
        "answer_tag": f.answer_tag, "think_opened": f.think_opened, "n_boxed": int(f.n_boxed),
    }


def grade_rows(ckpt: Checkpoint, bench: Benchmark, completions, s: SamplingSettings, *, think: bool,
               backend: str) -> pd.DataFrame:
    """One samples row per completion, graded (strict and lenient) and format-classified."""
    rows = []
    for problem, group in zip(bench.problems, completions):
        for idx, c in enumerate(group):
            rows.append({
                "run": ckpt.run, "step": int(ckpt.step), "kind": ckpt.kind, "benchmark": bench.name,
                "problem_id": str(problem.id), "sample_idx": idx, "completion": c.text,
                **graded_fields(c.text, problem.answer, truncated=c.truncated, think=think, choice=bench.choice),
                "n_tokens": int(c.n_tokens), "answer": problem.answer, "checkpoint": str(ckpt.path),
                "base": ckpt.base, "sampling": sampling_label(s), "n_samples": s.n,
                "temperature": float(s.temperature), "top_p": float(s.top_p), "max_tokens": s.max_tokens,
                "seed": s.seed, "backend": backend,
            })
    return pd.DataFrame(rows)


def _chunk_seed(seed: int, chunk: int) -> int:
    """A distinct seed per chunk of prompts, fixed by (seed, chunk) alone: reruns reproduce every chunk."""
    return int(stable_key("chunk", seed, chunk)[:12], 16)


def _unit_adapter(unit: Unit) -> Path | None:
    """The LoRA folder a unit generates with (None: the loaded model alone)."""
    return Path(unit.ckpt.path) if unit.ckpt.kind == "lora" else None


def unit_jobs(unit: Unit, s: SamplingSettings, batch_size: int) -> list[GenJob]:
    """A unit's generate calls: chunks of batch_size // n prompts, chunk c seeded by _chunk_seed(seed, c)."""
    prompts = [p.prompt for p in unit.benchmark.problems]
    per = max(1, batch_size // max(1, s.n))
    return [GenJob(tuple(prompts[start : start + per]), _unit_adapter(unit), _chunk_seed(s.seed, c))
            for c, start in enumerate(range(0, len(prompts), per))]


def _graded(gen: Generator, unit: Unit, completions, s: SamplingSettings, backend: str) -> pd.DataFrame:
    """A unit's samples rows from its completions (problem order)."""
    bench = unit.benchmark
    prompts = [p.prompt for p in bench.problems]
    think = think_in_prompt(gen.render(prompts[0]), bench) if prompts else bench.think_in_prompt
    return grade_rows(unit.ckpt, bench, completions, s, think=think, backend=backend)


def generate_units(gen: Generator, units: Sequence[Unit], s: SamplingSettings, batch_size: int,
                   backend: str) -> Iterator[tuple[Unit, pd.DataFrame]]:
    """(unit, graded rows) for each unit: the units' jobs in one generate_jobs call (a backend that batches jobs
    runs several adapters per forward pass; any other gets one generate call per job)."""
    settings = dict(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens)
    jobs = [unit_jobs(u, s, batch_size) for u in units]
    results = iter(generate_jobs(gen, [j for js in jobs for j in js], **settings))
    for u, js in zip(units, jobs):
        yield u, _graded(gen, u, [g for _ in js for g in next(results)], s, backend)


def generate_unit(gen: Generator, unit: Unit, s: SamplingSettings, batch_size: int, backend: str) -> pd.DataFrame:
    """Generate and grade one unit's completions."""
    return next(generate_units(gen, [unit], s, batch_size, backend))[1]


# ----------------------------------------------------------------------------- the sweep


def _todo(store: Store, u: Unit) -> bool:
    """Whether a unit still needs generation (its part is missing and, for a base, no cached base rows)."""
    if store.has_part("samples", u.key):
        return False
    return not (u.ckpt.kind == "base" and store.has_part(BASE_CACHE, u.gen_key))


def _save_generated(store: Store, u: Unit, rows: pd.DataFrame) -> None:
    """Store a generated unit: a base's rows go to the shared base cache (every run's step 0 reads them)."""
    if u.ckpt.kind == "base":
        store.write_part(BASE_CACHE, u.gen_key, rows.drop(columns=["run"]))
    else:
        store.write_part("samples", u.key, rows)


def _finish_unit(store: Store, u: Unit) -> bool:
    """Write a unit's samples part from what is stored (a base from the shared cache); False while not generated."""
    if store.has_part("samples", u.key):
        return True
    if u.ckpt.kind != "base" or not store.has_part(BASE_CACHE, u.gen_key):
        return False
    rows = store.read_part(BASE_CACHE, u.gen_key)
    rows.insert(0, "run", u.ckpt.run)
    store.write_part("samples", u.key, rows)
    return True


class _GroupParts:
    """The samples parts of each row group (key prefix), so that a finished unit becomes its group's only part: the
    others move to SUPERSEDED (kept: asking for them again moves them back instead of generating them again)."""

    def __init__(self, store: Store):
        self.store = store
        self.parts: dict[str, set[str]] = {}
        for key in store.part_keys("samples"):
            # no prefix: a part of `tina-probe grade` (pooled), or an eval part from before group keys existed
            prefix = Store.key_prefix(key) or self._legacy_group(key)
            if prefix:
                self.parts.setdefault(prefix, set()).add(key)

    @classmethod
    def current(cls, store: Store, units: Sequence[Unit]) -> "_GroupParts":
        """The store's parts with every unit asked for brought back from SUPERSEDED first."""
        parts = cls(store)
        for u in units:
            parts.bring_back(u)
        return parts

    def _legacy_group(self, key: str) -> str | None:
        """The group of an eval part written before keys had group prefixes (one unit: its first row says which);
        None for `tina-probe grade` parts (kind external: pooled, never replaced) and unreadable ones."""
        try:
            first = pd.read_parquet(self.store.part_path("samples", key),
                                    columns=["run", "step", "kind", "benchmark", "sampling"]).head(1)
        except Exception:  # another process moved it, or another layout: leave it alone
            return None
        if first.empty or first["kind"].iloc[0] not in ("base", "lora", "full"):
            return None
        row = first.iloc[0]
        return group_prefix(row["run"], row["step"], row["benchmark"], row["sampling"])

    def bring_back(self, u: Unit) -> None:
        """Move u's part back from SUPERSEDED when it is there and not among the current parts."""
        if not self.store.has_part("samples", u.key) and self.store.has_part(SUPERSEDED, u.key):
            self.store.move_part(SUPERSEDED, "samples", u.key)
            self.parts.setdefault(Store.key_prefix(u.key), set()).add(u.key)

    def make_current(self, u: Unit, *, done: bool = True) -> None:
        """Shelve every other part of u's group (u's own part exists: it was written or brought back first); done=False
        (u could not be generated): every part of its group, so no stale result stands in for it."""
        prefix = Store.key_prefix(u.key)
        keep = {u.key} if done else set()
        for key in self.parts.get(prefix, set()) - keep:
            if self.store.has_part("samples", key):
                try:
                    self.store.move_part("samples", SUPERSEDED, key)
                except FileNotFoundError:  # another shard moved it first
                    pass
        self.parts[prefix] = keep


def _pending(store: Store, group: Sequence[Unit]) -> list[Unit]:
    """The units to generate, in order: one per generation key (runs sharing a base generate its step 0 once)."""
    pending: dict[str, Unit] = {}
    for u in group:
        if _todo(store, u):
            pending.setdefault(u.gen_key, u)
    return list(pending.values())


def _waves(units: Sequence[Unit], s: SamplingSettings, batch_size: int, *, batched: bool = True) -> list[list[Unit]]:
    """Consecutive units whose rows (problems x n) fit in one batch together, generated in one call so that a backend
    that batches jobs (batched=True) can run them at once; otherwise, or for a larger unit, one unit per wave, so each
    unit's part is written as soon as it is done (resume granularity)."""
    waves: list[list[Unit]] = []
    rows = 0
    for u in units:
        size = len(u.benchmark.problems) * s.n
        if batched and waves and rows + size <= batch_size:
            waves[-1].append(u)
            rows += size
        else:
            waves.append([u])
            rows = size
    return waves


def _model_groups(units: Sequence[Unit]) -> list[tuple[str, str | None, list[Unit]]]:
    """(model to load, tokenizer fallback, its units): one group per base (base + LoRA), one per full checkpoint."""
    groups: dict[tuple[str, str | None], list[Unit]] = {}
    for u in units:
        key = (str(u.ckpt.path), u.ckpt.base) if u.ckpt.kind == "full" else (u.ckpt.base, None)
        groups.setdefault(key, []).append(u)
    return [(model, tok, us) for (model, tok), us in groups.items()]


def sweep(store: Store, gen: Generator | None, units: Sequence[Unit], s: SamplingSettings, *, batch_size: int,
          backend: str, parts: _GroupParts | None = None) -> int:
    """Run every unit not done yet; each model is loaded once, and only when it has work. Returns units run.
    Each unit asked for becomes its row group's current part (results of other settings under the same run, step,
    benchmark and sampling label are shelved, not pooled)."""
    parts = parts or _GroupParts.current(store, units)
    todo = {u.key for u in units if _todo(store, u)}
    bar = tqdm(total=len(todo), desc="eval units", unit="unit", disable=not todo)
    finished: set[str] = set()

    def finish(candidates):
        for u in candidates:
            if u.key not in finished and _finish_unit(store, u):
                parts.make_current(u)
                finished.add(u.key)
                bar.update(u.key in todo)

    for model, tokenizer, group in _model_groups(units):
        pending = _pending(store, group)
        if pending:
            adapters = list(dict.fromkeys(Path(u.ckpt.path) for u in group if u.ckpt.kind == "lora"))
            try:
                gen.load_base(model, adapters=adapters, tokenizer=tokenizer)
            except CheckpointError as exc:
                if group[0].ckpt.kind != "full":
                    raise  # the base of every run in the group: nothing to go on with
                log.warning("skipping %s: %s", model, exc)
                continue
            for wave in _waves(pending, s, batch_size, batched=hasattr(gen, "generate_jobs")):
                for u, rows in _generate_wave(gen, wave, s, batch_size, backend):
                    _save_generated(store, u, rows)
                    finish(v for v in group if v.gen_key == u.gen_key)
        finish(group)
    for u in units:
        if u.key not in finished:  # skipped (could not be loaded): its group shows nothing rather than old results
            parts.make_current(u, done=False)
    bar.close()
    return len(todo)


def _generate_wave(gen: Generator, wave: Sequence[Unit], s: SamplingSettings, batch_size: int,
                   backend: str) -> list[tuple[Unit, pd.DataFrame]]:
    """generate_units for a wave; when a checkpoint cannot be used (the generator's CheckpointError: a broken file
    that discovery could not see), each unit alone, and one that still fails on its own is skipped with one warning
    while the rest goes on. The base failing, or any other error, stops the sweep (finished units are stored)."""
    try:
        return list(generate_units(gen, wave, s, batch_size, backend))
    except CheckpointError as exc:
        if len(wave) > 1:
            return [done for u in wave for done in _generate_wave(gen, [u], s, batch_size, backend)]
        if wave[0].ckpt.kind == "base":
            raise
        log.warning("skipping %s: %s", wave[0].ckpt.path, str(exc).strip().splitlines()[0])
        return []


def summarize(store: Store) -> dict[str, pd.DataFrame]:
    """Consolidate the samples parts present and recompute the passk and format tables from them."""
    from tina_probe.passk import format_table, passk_table

    samples = store.consolidate("samples", key_cols=SAMPLE_KEY_COLS, sort_by=SAMPLE_KEY_COLS,
                                newest_per_key_prefix=True)
    if samples.empty:
        return {"samples": samples, "passk": pd.DataFrame(), "format": pd.DataFrame()}
    groups = [c for c in SUMMARY_GROUPS if c in samples.columns]
    passk = passk_table(samples, group_cols=groups)
    fmt = format_table(samples, group_cols=groups)
    store.write("passk", passk)
    store.write("format", fmt)
    return {"samples": samples, "passk": store.read("passk"), "format": store.read("format")}


def summary_frame(tables: dict[str, pd.DataFrame], runs: Iterable[str], sampling: str | None = None) -> pd.DataFrame:
    """Per run, benchmark and step: pass@1 strict/lenient with CIs, format rate, mean tokens, best checkpoint."""
    passk, fmt = tables["passk"], tables["format"]
    if passk.empty:
        return pd.DataFrame()
    p1 = passk[(passk["k"] == 1) & passk["run"].isin(list(runs))]
    if sampling is not None and "sampling" in p1.columns:
        p1 = p1[p1["sampling"] == sampling]
    keys = ["run", "benchmark", "step", "kind"]
    wide = p1.pivot_table(index=keys, columns="grading", values=["value", "ci_low", "ci_high"], aggfunc="first")
    wide.columns = [f"{g}_{v}" for v, g in wide.columns]
    wide = wide.reset_index()
    f = fmt[fmt["metric"].isin(["format_rate", "mean_tokens"])]
    if sampling is not None and "sampling" in f.columns:
        f = f[f["sampling"] == sampling]
    f = f.pivot_table(index=keys, columns="metric", values="value", aggfunc="first").reset_index()
    out = wide.merge(f, on=keys, how="left").sort_values(["run", "benchmark", "step"]).reset_index(drop=True)
    best = out.groupby(["run", "benchmark"])["strict_value"].transform("max")
    out["best"] = (out["strict_value"] == best) & (out["kind"] != "base")
    first_best = out[out["best"]].groupby(["run", "benchmark"]).head(1).index
    out["best"] = out.index.isin(first_best)
    return out


def print_summary(summary: pd.DataFrame) -> None:
    """One rich table per run: step, pass@1 strict and lenient with CIs, format rate, mean length; best marked."""
    from rich.console import Console
    from rich.table import Table

    if summary.empty:
        return
    console = Console()

    def ci(row, g):
        return f"{row[f'{g}_value']:.3f} [{row[f'{g}_ci_low']:.2f}, {row[f'{g}_ci_high']:.2f}]"

    for run, frame in summary.groupby("run", sort=False):
        table = Table(title=f"{run}: pass@1 (95% CI)")
        for col in ("benchmark", "step", "kind", "strict", "lenient", "format rate", "mean tokens", "best"):
            table.add_column(col)
        for _, row in frame.iterrows():
            table.add_row(str(row["benchmark"]), str(row["step"]), str(row["kind"]), ci(row, "strict"),
                          ci(row, "lenient"), f"{row.get('format_rate', float('nan')):.3f}",
                          f"{row.get('mean_tokens', float('nan')):.1f}", "*" if row["best"] else "")
        console.print(table)


def run_eval(
    ckpts: list[str],
    *,
    benchmarks: list[str] | None = None,
    n: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_tokens: int = 64,
    seed: int = 0,
    backend: str = "hf",
    out: Path = Path("results"),
    steps=None,
    shard: tuple[int, int] | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    generator: Generator | None = None,
    show: bool = True,
    merge: bool | None = None,
) -> dict[str, pd.DataFrame]:
    """Evaluate the base (step 0) and every checkpoint of the runs; resumable; returns samples, passk, format."""
    if n < 1 or max_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
        raise TinaError("sampling: need n >= 1, max_tokens >= 1, temperature >= 0, 0 < top_p <= 1")
    settings = SamplingSettings(n=int(n), temperature=float(temperature), top_p=float(top_p),
                                max_tokens=int(max_tokens), seed=int(seed))
    runs = discover_runs(ckpts, steps=steps)
    if not any(r.checkpoints for r in runs):
        raise TinaError(f"{', '.join(map(str, ckpts))}: no checkpoints to evaluate")
    benches = _benchmarks_for(runs, benchmarks, limit)
    units = shard_units(plan_units(runs, benches, settings, backend), shard)
    store = Store(out)
    parts = _GroupParts.current(store, units)  # before deciding on a generator: shelved results need none
    gen = generator
    if gen is None and any(_todo(store, u) for u in units):
        gen = make_generator(backend, batch_size=batch_size, merge=merge)  # merge: hf only (None: auto)
    try:  # without a generator everything was generated already: only per-run copies of base rows may be missing
        sweep(store, gen, units, settings, batch_size=batch_size, backend=backend, parts=parts)
    finally:
        if gen is not None and generator is None:
            gen.close()
    tables = summarize(store)
    if show:
        print_summary(summary_frame(tables, [r.name for r in runs], sampling_label(settings)))
    return tables
