"""`tina-probe eval`: checkpoints x benchmarks -> graded samples (resumable parts) -> passk and format tables.

The whole way in run_eval: discover the runs (runs.py: each checkpoint's identity read there, once), plan the units
and their keys (eval_units.py), run the sweep (eval_sweep.py: what is done, replaced, brought back; its docstring
holds the rules), each unit's completions generated and graded (eval_generate.py), then the summary tables
(eval_summary.py), with a check that each LoRA checkpoint changes its base at all (eval_identical.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tina_probe.errors import TinaError
from tina_probe.eval_generate import graded_fields
from tina_probe.eval_identical import record_adapter_checks, stored_checks, warn_identical
from tina_probe.eval_summary import SAMPLE_KEY_COLS, print_summary, summarize, summary_frame
from tina_probe.eval_sweep import GroupParts, needs_generation, sweep
from tina_probe.eval_units import benchmarks_for, plan_units, sampling_label, shard_units
from tina_probe.generate import Generator, SamplingSettings, make_generator
from tina_probe.runs import discover_runs
from tina_probe.store import Store

# run_eval, and the names other modules took from here before the split
__all__ = ["run_eval", "graded_fields", "SAMPLE_KEY_COLS", "summarize", "summary_frame", "plan_units",
           "sampling_label"]


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
    summary: bool = True,
) -> dict[str, pd.DataFrame]:
    """Evaluate the base (step 0) and every checkpoint of the runs; resumable; returns samples, passk, format.
    summary=False stops after the samples parts (returns {}): the store's tables are rebuilt from every part by one
    call at the end of a sweep run in several calls, instead of by each (a summary reads the whole store)."""
    if n < 1 or max_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
        raise TinaError("sampling: need n >= 1, max_tokens >= 1, temperature >= 0, 0 < top_p <= 1")
    settings = SamplingSettings(n=int(n), temperature=float(temperature), top_p=float(top_p),
                                max_tokens=int(max_tokens), seed=int(seed))
    runs = discover_runs(ckpts, steps=steps)
    if not any(r.checkpoints for r in runs):
        raise TinaError(f"{', '.join(map(str, ckpts))}: no checkpoints to evaluate")
    benches = benchmarks_for(runs, benchmarks, limit)
    units = shard_units(plan_units(runs, benches, settings, backend), shard)
    store = Store(out)
    parts = GroupParts.current(store, units)  # before deciding on a generator: shelved results need none
    gen = generator
    if gen is None and any(needs_generation(store, u) for u in units):
        gen = make_generator(backend, batch_size=batch_size, merge=merge)  # merge: hf only (None: auto)
    try:  # without a generator everything was generated already: only per-run copies of base rows may be missing
        sweep(store, gen, units, settings, batch_size=batch_size, backend=backend, parts=parts)
    finally:
        if gen is not None and generator is None:
            gen.close()
    record_adapter_checks(store, units, settings)
    if not summary:
        return {}
    tables = summarize(store)
    warn_identical(tables["format"], stored_checks(store), units)
    if show:
        print_summary(summary_frame(tables, [r.name for r in runs], sampling_label(settings)))
    return tables
