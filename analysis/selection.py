"""Honest checkpoint selection: pick the best checkpoint on a held-out benchmark, score it on the test benchmark.

Picking the best checkpoint by its test score and reporting that score overstates it (the maximum of noisy
estimates is biased upward). Per run and pair (held-out H, test T): selected_step is the trained step with the
highest strict pass@1 on H (earliest on ties, among steps evaluated on both), value_at_selected its strict pass@1
on T; max_value / max_step are the maximum over T itself; optimism = max_value - value_at_selected (>= 0).

Pairs: named by the user (`--select-on H=T`, or `--select-on H` for every other benchmark of the run), else by
name: a benchmark whose name holds "probe" is the held-out set of the one with "test" in its place (the lab's
`lab-probe` -> `lab-test`, `lab-probe-hard` -> `lab-test-hard`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tina_probe.errors import TinaError

log = logging.getLogger(__name__)

SELECTION_COLUMNS = ["run", "benchmark", "selected_on", "selected_step", "value_at_selected", "max_value",
                     "max_step", "optimism", "selected_on_value", "grading", "k", "sampling", "selected_on_sampling",
                     "n_steps"]


@dataclass(frozen=True)
class BestChoice:
    """A run's best checkpoint and how it was chosen."""

    step: int | None
    value: float  # strict pass@1 on `benchmark` at `step`
    benchmark: str | None  # where the value is measured (the test benchmark)
    chosen_on: str | None  # the benchmark the step was picked on (== benchmark when picked on the test itself)

    @property
    def held_out(self) -> bool:
        """Whether the step was picked on another benchmark than the one it is scored on."""
        return self.chosen_on is not None and self.chosen_on != self.benchmark


def parse_pairs(specs: list[str] | None) -> list[tuple[str, str | None]]:
    """`H=T` -> (H, T); `H` -> (H, None) meaning every other benchmark."""
    pairs = []
    for spec in specs or []:
        held, sep, test = spec.partition("=")
        held, test = held.strip(), test.strip()
        if not held or (sep and not test):
            raise TinaError(f"--select-on {spec!r}: expected HELD_OUT or HELD_OUT=TEST (benchmark names)")
        pairs.append((held, test or None))
    return pairs


def default_pairs(benchmarks) -> list[tuple[str, str]]:
    """(held-out, test) pairs by name: 'probe' in the name <-> 'test' in its place, both present."""
    names = set(benchmarks)
    return sorted((b, b.replace("probe", "test")) for b in names if "probe" in b and b.replace("probe", "test") in names)


def resolve_pairs(benchmarks, specs: list[tuple[str, str | None]] | None = None) -> list[tuple[str, str]]:
    """The (held-out, test) pairs to score among `benchmarks`: the user's (unknown names are an error) or the
    default ones."""
    names = sorted(set(benchmarks))
    if not specs:
        return default_pairs(names)
    pairs = []
    for held, test in specs:
        for name in (held, test):
            if name is not None and name not in names:
                raise TinaError(f"--select-on {held}{'=' + test if test else ''}: benchmark {name!r} is not in the "
                                f"passk table (has: {', '.join(names) or 'none'})")
        pairs += [(held, test)] if test else [(held, t) for t in names if t != held]
    return pairs


def _strict_pass1(passk: pd.DataFrame) -> pd.DataFrame:
    return passk[(passk["k"] == 1) & (passk["grading"] == "strict") & (passk["step"] > 0)]


def _sampling_for(frame: pd.DataFrame, prefer: str | None) -> str | None:
    """The sampling label to read: `prefer` when present, else the one covering the most steps."""
    if "sampling" not in frame.columns or frame.empty:
        return None
    labels = frame["sampling"].dropna().unique()
    if prefer in set(labels):
        return prefer
    cover = frame.groupby("sampling")["step"].nunique()
    return sorted(cover[cover == cover.max()].index)[0] if len(cover) else None


def select(passk: pd.DataFrame, run: str, held: str, test: str) -> list[dict]:
    """Selection rows of one run and pair, one per sampling label of the test benchmark."""
    p = _strict_pass1(passk[passk["run"] == run])
    test_rows, held_rows = p[p["benchmark"] == test], p[p["benchmark"] == held]
    if test_rows.empty or held_rows.empty:
        return []
    samplings = test_rows["sampling"].dropna().unique() if "sampling" in test_rows.columns else [None]
    out = []
    for sampling in sorted(samplings, key=str):
        t = test_rows if sampling is None else test_rows[test_rows["sampling"] == sampling]
        held_sampling = _sampling_for(held_rows, sampling)
        h = held_rows if held_sampling is None else held_rows[held_rows["sampling"] == held_sampling]
        t_curve = t.groupby("step")["value"].mean()
        h_curve = h.groupby("step")["value"].mean()
        steps = t_curve.index.intersection(h_curve.index)
        if steps.empty:
            continue
        t_curve, h_curve = t_curve.loc[steps].sort_index(), h_curve.loc[steps].sort_index()
        sel = int(h_curve.idxmax())  # idxmax: the first, i.e. earliest, of equal maxima
        top = int(t_curve.idxmax())
        out.append({"run": run, "benchmark": test, "selected_on": held, "selected_step": sel,
                    "value_at_selected": float(t_curve.loc[sel]), "max_value": float(t_curve.loc[top]),
                    "max_step": top, "optimism": float(t_curve.loc[top] - t_curve.loc[sel]),
                    "selected_on_value": float(h_curve.loc[sel]), "grading": "strict", "k": 1,
                    "sampling": sampling, "selected_on_sampling": held_sampling, "n_steps": len(steps)})
    return out


def selection_table(passk: pd.DataFrame, specs: list[tuple[str, str | None]] | None = None) -> pd.DataFrame:
    """The selection table over every run of a passk table (empty when no pair of benchmarks exists)."""
    if passk.empty or not {"run", "step", "benchmark", "grading", "k", "value"} <= set(passk.columns):
        return pd.DataFrame(columns=SELECTION_COLUMNS)
    pairs = resolve_pairs(passk["benchmark"].dropna().unique(), specs)
    rows = []
    for run in sorted(passk["run"].unique()):
        for held, test in pairs:
            rows += select(passk, run, held, test)
    if specs and not rows:
        log.warning("selection: no run has strict pass@1 on both benchmarks of %s", specs)
    return pd.DataFrame(rows, columns=SELECTION_COLUMNS)


def best_choice(passk: pd.DataFrame, run: str, selection: pd.DataFrame | None = None,
                sampling: str | None = None) -> BestChoice | None:
    """The held-out choice of a run from a selection table (the first pair in name order, the sampling given or
    else the first), or None when the run has none."""
    if selection is None or selection.empty or "run" not in selection.columns:
        return None
    rows = selection[selection["run"] == run].dropna(subset=["selected_step"])
    if sampling is not None and "sampling" in rows.columns and (rows["sampling"] == sampling).any():
        rows = rows[rows["sampling"] == sampling]
    if rows.empty:
        return None
    row = rows.sort_values(["benchmark", "selected_on"]).iloc[0]
    value = float(row["value_at_selected"]) if np.isfinite(row["value_at_selected"]) else np.nan
    return BestChoice(int(row["selected_step"]), value, str(row["benchmark"]), str(row["selected_on"]))
