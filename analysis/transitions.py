"""Transitions on a run's curves: change points of one curve taken together (a staircase of same-sign steps is one
transition), the format transition, and where the best checkpoint sits relative to it. Pure functions over the
`phases` and `passk` tables; analysis/phase.py writes them, the verdicts (analysis/claims_order.py) read them."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from analysis.changepoints import PRIMARY_METHOD
from analysis.selection import BestChoice

log = logging.getLogger(__name__)

DYNAMICS_METRICS = ("entropy", "completion_length", "clipped_ratio", "kl", "frac_reward_zero_std")
FORMAT_METRICS = (("eval", "format_rate"), ("train", "format_reward"))  # preference order of the format curve
PHASE_COLUMNS = ["run", "metric", "change_step", "change_step_low", "change_step_high", "method", "size",
                 "n_points", "source", "benchmark", "support", "sigma", "penalty"]


def one_sampling(df: pd.DataFrame, run: str) -> pd.DataFrame:
    """A run's rows under one sampling setting (eval's `sampling` label), so that settings never pool: the label
    that covers the most steps, then one that holds a test split (the claims score on it), then the first in sort
    order; a warning names it when there is a choice."""
    df = df[df["run"] == run]
    if "sampling" not in df.columns or df["sampling"].nunique(dropna=False) <= 1:
        return df
    cover = df.groupby("sampling")["step"].nunique()
    has_test = df.groupby("sampling")["benchmark"].agg(lambda b: any("test" in str(x) for x in b)) \
        if "benchmark" in df.columns else cover * 0
    label = sorted(cover.index, key=lambda lab: (-cover[lab], not has_test[lab], str(lab)))[0]
    log.warning("run %s: %d sampling settings evaluated; using %r", run, len(cover), label)
    return df[df["sampling"] == label]


def _runs_phases(phases: pd.DataFrame, run: str, method: str = PRIMARY_METHOD) -> pd.DataFrame:
    """The phases rows of one run and method (empty when the table lacks them)."""
    if phases is None or phases.empty:
        return pd.DataFrame(columns=PHASE_COLUMNS)
    return phases[(phases["run"] == run) & (phases["method"] == method)]


def merge_staircase(rows: pd.DataFrame) -> list[dict]:
    """Transitions of one curve: runs of consecutive change points whose jumps share a sign, taken whole.

    A smooth ramp shows up as a staircase of same-sign steps; as one transition its step is the |size|-weighted
    centre of the steps, its range runs from the first step's low to the last step's high, its size is the sum.
    first_step/first_low/first_high keep the first step of the staircase (where the change starts)."""
    rows = rows.sort_values("change_step")
    groups: list[list[dict]] = []
    for row in rows.to_dict("records"):
        if groups and np.sign(groups[-1][-1]["size"]) == np.sign(row["size"]):
            groups[-1].append(row)
        else:
            groups.append([row])
    out = []
    for g in groups:
        w = np.abs([r["size"] for r in g])
        steps = np.array([r["change_step"] for r in g], dtype=float)
        centre = float(np.average(steps, weights=w)) if w.sum() > 0 else float(steps.mean())
        out.append({"run": g[0]["run"], "metric": g[0]["metric"], "source": g[0]["source"],
                    "benchmark": g[0]["benchmark"], "change_step": centre,
                    "change_step_low": float(min(r["change_step_low"] for r in g)),
                    "change_step_high": float(max(r["change_step_high"] for r in g)),
                    "size": float(sum(r["size"] for r in g)), "n_changes": len(g),
                    "first_step": float(g[0]["change_step"]), "first_low": float(g[0]["change_step_low"]),
                    "first_high": float(g[0]["change_step_high"])})
    return out


def main_change(phases: pd.DataFrame, run: str, metric: str, *, source: str | None = None,
                benchmark: str | None = None, direction: int = 0, pick: str = "largest") -> dict | None:
    """One transition (see merge_staircase) of a run's metric: the largest |size| or the earliest, optionally
    only rises (direction=1) or falls (-1); None when there is none. benchmark None or "mean" takes any."""
    df = _runs_phases(phases, run)
    df = df[df["metric"] == metric]
    if source is not None:
        df = df[df["source"] == source]
    if benchmark is not None and benchmark != "mean":
        df = df[df["benchmark"] == benchmark]
    found = []
    for _, curve in df.groupby(["source", "benchmark"], dropna=False, sort=True):
        found += merge_staircase(curve)
    if direction:
        found = [t for t in found if np.sign(t["size"]) == np.sign(direction)]
    if not found:
        return None
    if pick == "earliest":
        return min(found, key=lambda t: t["first_step"])
    return max(found, key=lambda t: abs(t["size"]))


def format_transition(phases: pd.DataFrame, run: str, benchmark: str | None = None) -> dict | None:
    """The run's format transition: the largest rise of eval format_rate, else of the training format_reward."""
    for source, metric in FORMAT_METRICS:
        found = main_change(phases, run, metric, source=source,
                            benchmark=benchmark if source == "eval" else None, direction=1)
        if found is not None:
            return found
    return None


def strict_curve(passk: pd.DataFrame, run: str, benchmark: str | None = None) -> tuple[pd.Series, str | None]:
    """Strict pass@1 by step for a run (a mean over benchmarks when there are several and none is named)."""
    if passk is None or passk.empty or not {"run", "k", "grading"} <= set(passk.columns):
        return pd.Series(dtype=float), None
    p = one_sampling(passk, run)
    p = p[(p["k"] == 1) & (p["grading"] == "strict")]
    benches = sorted(p["benchmark"].dropna().unique()) if "benchmark" in p.columns else []
    if benchmark is not None and benchmark != "mean":
        p = p[p["benchmark"] == benchmark]
    elif len(benches) == 1:
        benchmark = benches[0]
    elif len(benches) > 1:
        benchmark = "mean"
        counts = p.groupby("step")["benchmark"].nunique()
        p = p[p["step"].isin(counts[counts == len(benches)].index)]  # steps evaluated on every benchmark
    return p.groupby("step")["value"].mean().sort_index(), benchmark


def best_step(passk: pd.DataFrame, run: str, benchmark: str | None = None) -> tuple[int | None, float, str | None]:
    """The trained checkpoint (step > 0) with the highest strict pass@1, earliest on ties: (step, value, bench)."""
    curve, bench = strict_curve(passk, run, benchmark)
    trained = curve[curve.index > 0]
    if trained.empty:
        return None, np.nan, bench
    step = int(trained.idxmax())
    return step, float(trained.loc[step]), bench


def accuracy_change(phases: pd.DataFrame, run: str, benchmark: str | None = None) -> dict | None:
    """The run's lenient accuracy change on the eval curve: its largest fall (a destabilization) when there is
    one, else its largest change; None when the lenient curve has no change point."""
    fall = main_change(phases, run, "pass1_lenient", source="eval", benchmark=benchmark, direction=-1)
    return fall or main_change(phases, run, "pass1_lenient", source="eval", benchmark=benchmark)


def best_vs_transition(passk: pd.DataFrame, phases: pd.DataFrame, run: str,
                       benchmark: str | None = None, choice: BestChoice | None = None) -> dict:
    """Where the best checkpoint (max strict pass@1, or `choice`: the step picked on a held-out benchmark, scored
    on its test benchmark) sits relative to the format transition and to the lenient accuracy change.

    lag_steps = best step - format transition step (positive: the best checkpoint comes after the transition),
    with a range from the transition's bootstrap range; lag_share divides by the last evaluated or logged step.
    accuracy_lag_steps is the same against the lenient accuracy change (accuracy_change: its largest fall, else
    its largest change), so "the best checkpoint sits before the accuracy dip" is a number with a range."""
    if choice is not None and choice.step is not None:
        step, value, bench = choice.step, choice.value, choice.benchmark
    else:
        step, value, bench = best_step(passk, run, benchmark)
    curve, _ = strict_curve(passk, run, bench)
    out = {"run": run, "benchmark": bench, "best_step": step, "best_value": value,
           "best_chosen_on": choice.chosen_on if choice is not None and choice.step is not None else bench,
           "base_value": float(curve.loc[0]) if 0 in curve.index else np.nan,
           "transition_metric": None, "transition_source": None, "transition_step": np.nan,
           "transition_low": np.nan, "transition_high": np.nan, "transition_size": np.nan,
           "lag_steps": np.nan, "lag_low": np.nan, "lag_high": np.nan, "total_steps": np.nan,
           "lag_share": np.nan, "accuracy_change_step": np.nan, "accuracy_change_low": np.nan,
           "accuracy_change_high": np.nan, "accuracy_change_size": np.nan, "accuracy_lag_steps": np.nan,
           "accuracy_lag_low": np.nan, "accuracy_lag_high": np.nan, "note": ""}
    notes = []
    tr = format_transition(phases, run, bench)
    acc = accuracy_change(phases, run, bench)
    last = [float(curve.index.max())] if len(curve) else []
    pr = _runs_phases(phases, run)
    if not pr.empty:
        last.append(float(pr["change_step_high"].max()))
    out["total_steps"] = max(last) if last else np.nan
    if step is None:
        notes.append("no strict pass@1 of a trained checkpoint (run `tina-probe eval`)")
    if tr is None:
        notes.append("no format transition found")
    else:
        out |= {"transition_metric": tr["metric"], "transition_source": tr["source"],
                "transition_step": tr["change_step"], "transition_low": tr["change_step_low"],
                "transition_high": tr["change_step_high"], "transition_size": tr["size"]}
    if acc is None:
        notes.append("no lenient accuracy change found")
    else:
        out |= {"accuracy_change_step": acc["change_step"], "accuracy_change_low": acc["change_step_low"],
                "accuracy_change_high": acc["change_step_high"], "accuracy_change_size": acc["size"]}
    if step is not None and tr is not None:
        out |= {"lag_steps": step - tr["change_step"], "lag_low": step - tr["change_step_high"],
                "lag_high": step - tr["change_step_low"]}
        if out["total_steps"] and out["total_steps"] > 0:
            out["lag_share"] = out["lag_steps"] / out["total_steps"]
    if step is not None and acc is not None:
        out |= {"accuracy_lag_steps": step - acc["change_step"], "accuracy_lag_low": step - acc["change_step_high"],
                "accuracy_lag_high": step - acc["change_step_low"]}
    out["note"] = "; ".join(notes)
    return out


def dynamics_changes(phases: pd.DataFrame, run: str, transition_step: float) -> dict:
    """Per training-dynamics metric (entropy, completion length, ...): the step and size of its largest change
    (a staircase of same-sign steps taken whole) and that step minus the format transition's (< 0: before it);
    nan where the curve has no change point or the log lacks the metric."""
    out = {}
    for metric in DYNAMICS_METRICS:
        change = main_change(phases, run, metric, source="train")
        step = change["change_step"] if change else np.nan
        out |= {f"{metric}_change_step": step, f"{metric}_change_size": change["size"] if change else np.nan,
                f"{metric}_minus_format_steps": step - transition_step}
    return out
