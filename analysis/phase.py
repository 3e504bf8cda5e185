"""Change points on training and evaluation curves: when does a run's format (and its accuracy) shift, and where
does its best checkpoint sit relative to that shift.

A curve is modelled as piecewise constant plus noise. Change points come from ruptures (PELT and binary
segmentation) with a BIC-style penalty scaled by a noise estimate; each change point gets a range from a moving
block bootstrap of the residuals around the fitted steps. Tables written: `phases` (one row per change point and
method), `phase_summary` (one row per run), `phase_status` (one row per curve and method: changes, no change or too short,
with its point count), `training_curves` (the tidy training logs, for the report). Eval curves carry the noise of
rule R2 (analysis/rules.py); the detection itself is analysis/changepoints.py.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from analysis.changepoints import (  # noqa: F401  (re-exported: the detection API lived here before the split)
    CI_LEVEL, MAX_GRID, METHODS, MIN_POINTS, MIN_SIZE, N_BOOT, PENALTY_C, PRIMARY_METHOD, ChangePoint,
    CostMeanShift, StepDetector, bic_penalty, block_bootstrap_index, curve_change_points, diff_sigma, fitted_sigma,
    piecewise_means)
from analysis.rules import PhaseRules
from analysis.selection import BestChoice, best_choice, selection_table
from tina_probe.errors import TinaError
from tina_probe.runs import training_log
from tina_probe.store import Store

log = logging.getLogger(__name__)

Z975 = 1.959964  # normal quantile of a two-sided 95% interval (eval CIs are 95%)
TRAIN_METRICS = ("format_reward", "accuracy_reward", "reward", "completion_length", "clipped_ratio", "kl",
                 "entropy", "frac_reward_zero_std", "clip_ratio", "loss")
# training dynamics read beside the format transition (phase_summary: each one's largest change and its lag)
DYNAMICS_METRICS = ("entropy", "completion_length", "clipped_ratio", "kl", "frac_reward_zero_std")
EVAL_METRICS = ("pass1_strict", "pass1_lenient", "format_rate")
FORMAT_METRICS = (("eval", "format_rate"), ("train", "format_reward"))  # preference order of the format curve

PHASE_COLUMNS = ["run", "metric", "change_step", "change_step_low", "change_step_high", "method", "size",
                 "n_points", "source", "benchmark", "support", "sigma", "penalty"]
CURVE_COLUMNS = ["run", "source", "benchmark", "metric", "step", "value", "sigma"]


# ----------------------------------------------------------------------------- curves


def _clean_curve(curve: pd.DataFrame, label: str) -> pd.DataFrame:
    """One curve sorted by step with non-finite values dropped (with a warning) and repeated steps averaged."""
    curve = curve.assign(value=pd.to_numeric(curve["value"], errors="coerce"))
    bad = ~np.isfinite(curve["value"].to_numpy(dtype=float))
    if bad.any():
        log.warning("%s: dropped %d non-finite values of %d", label, int(bad.sum()), len(curve))
        curve = curve[~bad]
    agg = {"value": "mean"} | ({"sigma": "mean"} if "sigma" in curve.columns else {})
    return curve.groupby("step", as_index=False).agg(agg).sort_values("step").reset_index(drop=True)


def train_curves(log_df: pd.DataFrame, run: str, metrics=TRAIN_METRICS) -> pd.DataFrame:
    """Training curves of one run in the curves layout (run, source, benchmark, metric, step, value, sigma)."""
    if log_df.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    df = log_df[log_df["metric"].isin(metrics)]
    missing = [m for m in ("format_reward", "accuracy_reward") if m not in set(df["metric"])]
    if missing:
        log.warning("run %s: training log lacks %s", run, ", ".join(missing))
    return df.assign(run=run, source="train", benchmark=None, sigma=np.nan)[CURVE_COLUMNS]


def one_sampling(df: pd.DataFrame, run: str) -> pd.DataFrame:
    """A run's rows under one sampling setting (eval's `sampling` label), so that settings never pool: the label
    that covers the most steps, ties to the first in sort order; a warning names it when there is a choice."""
    df = df[df["run"] == run]
    if "sampling" not in df.columns or df["sampling"].nunique(dropna=False) <= 1:
        return df
    cover = df.groupby("sampling")["step"].nunique()
    label = sorted(cover[cover == cover.max()].index)[0]
    log.warning("run %s: %d sampling settings evaluated; using %r", run, len(cover), label)
    return df[df["sampling"] == label]


SAMPLE_COLUMN = {"pass1_strict": "correct_strict", "pass1_lenient": "correct_lenient", "format_rate": "well_formatted"}


def per_problem_means(samples: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per (benchmark, problem_id) x step: the mean of a samples column (a problem's share of correct or
    well-formatted samples). Without a well_formatted column it is rebuilt as FormatReport defines it."""
    if column == "well_formatted" and column not in samples.columns:
        samples = samples.assign(well_formatted=samples["think_closed"].astype(bool)
                                 & (samples["boxed"].astype(int) == 1) & ~samples["truncated"].astype(bool))
    return (samples.assign(_v=samples[column].astype(float))
            .pivot_table(index=["benchmark", "problem_id"], columns="step", values="_v", aggfunc="mean"))


def paired_sigma(table: pd.DataFrame) -> float:
    """Rule R2 (analysis/rules.py), one noise model for every eval curve: the noise sd of a curve point, from the
    change of each problem's mean between consecutive evaluated steps (problems x steps table, one benchmark):
    sd over problems / sqrt(2 n), median over the consecutive pairs. The between-problem spread, which every
    checkpoint shares, cancels in the differences; sampling noise and real checkpoint-to-checkpoint wobble stay."""
    values = table.sort_index(axis=1).to_numpy(dtype=float)
    ses = []
    for a, b in zip(values.T[:-1], values.T[1:]):
        d = (b - a)[np.isfinite(a) & np.isfinite(b)]
        if len(d) >= 2:
            ses.append(float(np.std(d, ddof=1)) / math.sqrt(2 * len(d)))
    return float(np.median(ses)) if ses else math.nan


def curve_noise(samples: pd.DataFrame | None, run: str) -> dict[tuple[str, str], float]:
    """(benchmark, eval metric) -> paired_sigma of a run's curve from its samples (empty without samples)."""
    if samples is None or samples.empty or "run" not in samples.columns:
        return {}
    df = one_sampling(samples, run)
    out = {}
    for metric, column in SAMPLE_COLUMN.items():
        if column not in df.columns and column != "well_formatted":
            continue
        table = per_problem_means(df, column)
        for bench, g in table.groupby(level="benchmark"):
            out[(bench, metric)] = paired_sigma(g)
    return out


def eval_curves(passk: pd.DataFrame, fmt: pd.DataFrame, run: str, samples: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-checkpoint eval curves of one run: strict and lenient pass@1 and format_rate per benchmark.

    Each point carries the noise sigma of rule R2 (paired_sigma) when the samples are given; else the sigma
    implied by its 95% CI ((high - low) / (2 * 1.96)), which for pass@1 (CIs over problems) also holds the
    between-problem spread and so is larger than the checkpoint-to-checkpoint noise."""
    parts = []
    if not passk.empty and {"run", "k", "grading"} <= set(passk.columns):
        p = one_sampling(passk, run)
        p = p[p["k"] == 1]
        parts.append(p.assign(metric="pass1_" + p["grading"].astype(str)))
    if not fmt.empty and {"run", "metric"} <= set(fmt.columns):
        f = one_sampling(fmt, run)
        parts.append(f[f["metric"] == "format_rate"])
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    df = pd.concat(parts, ignore_index=True)
    df = df[df["metric"].isin(EVAL_METRICS)]
    if {"ci_low", "ci_high"} <= set(df.columns):
        sigma = (df["ci_high"].astype(float) - df["ci_low"].astype(float)) / (2 * Z975)
    else:
        sigma = pd.Series(np.nan, index=df.index)
    noise = curve_noise(samples, run)
    if noise:
        paired = pd.Series([noise.get((b, m), np.nan) for b, m in zip(df["benchmark"], df["metric"])], index=df.index)
        sigma = paired.where(np.isfinite(paired), sigma)
    return df.assign(source="eval", sigma=sigma)[CURVE_COLUMNS]


def detect_phases(curves: pd.DataFrame, *, methods=METHODS, n_boot: int | None = None, seed: int = 0,
                  rules: PhaseRules = PhaseRules()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Change points of every curve: (phases rows, one status row per curve and method).

    Eval curves use the median of their points' sigma (rule R2 when `phase` had the samples, else CI-implied);
    training curves, and eval curves without either, use fitted_sigma. `rules` holds min_points, min_size,
    penalty_c and n_boot (analysis/rules.py)."""
    n_boot = rules.n_boot if n_boot is None else n_boot
    rows, status = [], []
    too_short: dict[str, list[int]] = {}  # run -> point counts of its curves too short to try (one line per run)
    keys = ["run", "source", "benchmark", "metric"]
    groups = curves.groupby(keys, dropna=False, sort=True)
    for key, curve in tqdm(groups, total=groups.ngroups, desc="phase curves", unit="curve", disable=None):
        run, source, bench, metric = key
        bench = None if pd.isna(bench) else bench
        label = f"run {run} {source} {metric}" + (f" ({bench})" if bench else "")
        curve = _clean_curve(curve, label)
        n = len(curve)
        base = {"run": run, "source": source, "benchmark": bench, "metric": metric, "n_points": n}
        if n < rules.min_points:
            too_short.setdefault(str(run), []).append(n)
            status += [base | {"method": m, "n_changes": 0, "status": "too short"} for m in methods]
            continue
        ci_sigma = curve["sigma"].to_numpy(dtype=float) if "sigma" in curve.columns else np.array([np.nan])
        ci_sigma = ci_sigma[np.isfinite(ci_sigma) & (ci_sigma > 0)]
        sigma = float(np.median(ci_sigma)) if len(ci_sigma) else None
        for method in methods:
            cps, sig, pen = curve_change_points(curve["step"], curve["value"], method=method, sigma=sigma,
                                                n_boot=n_boot, seed=seed, rules=rules)
            status.append(base | {"method": method, "n_changes": len(cps),
                                  "status": "changes" if cps else "no change"})
            for cp in cps:
                rows.append(base | {"method": method, "change_step": cp.change_step,
                                    "change_step_low": cp.change_step_low, "change_step_high": cp.change_step_high,
                                    "size": cp.size, "support": cp.support, "sigma": sig, "penalty": pen})
    phases = pd.DataFrame(rows, columns=PHASE_COLUMNS)
    for run, counts in too_short.items():
        log.warning("run %s: %d curves of %d-%d points, fewer than %d; no change points tried on them", run,
                    len(counts), min(counts), max(counts), rules.min_points)
    return phases, pd.DataFrame(status, columns=keys + ["n_points", "method", "n_changes", "status"])


# ----------------------------------------------------------------------------- best checkpoint vs transition


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


def phase_summary(passk: pd.DataFrame, phases: pd.DataFrame, status: pd.DataFrame, runs: list[str]) -> pd.DataFrame:
    """One row per run: best checkpoint vs format transition, the training dynamics' largest changes beside it,
    and which curves changed, stayed flat or were too short (PRIMARY_METHOD)."""
    rows = []
    held_out = selection_table(passk)  # a held-out benchmark beside the test one (lab-probe -> lab-test) picks best
    for run in runs:
        row = best_vs_transition(passk, phases, run, choice=best_choice(passk, run, held_out))
        row |= dynamics_changes(phases, run, row["transition_step"])
        st = status[(status["run"] == run) & (status["method"] == PRIMARY_METHOD)] if not status.empty else status
        for label, code in (("metrics_changed", "changes"), ("metrics_unchanged", "no change"),
                            ("metrics_too_short", "too short")):
            sel = st[st["status"] == code] if not st.empty else st
            names = [m if src == "train" else f"{m}[{b}]" for m, src, b in
                     zip(sel.get("metric", []), sel.get("source", []), sel.get("benchmark", []))]
            row[label] = ", ".join(sorted(names))
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- edges: logs, store, command


def run_name(run_dir: Path) -> str:
    """A run's name: the manifest's `name` when there is one, else the folder name."""
    manifest = run_dir / "tina_run.json"
    if manifest.is_file():
        try:
            name = json.loads(manifest.read_text()).get("name")
        except (OSError, ValueError, AttributeError):
            raise TinaError(f"{manifest}: unreadable JSON") from None
        if name:
            return str(name)
    return run_dir.name


def load_training_log(run_dir) -> pd.DataFrame:
    """The run's tidy training log (step, metric, value) via tina_probe.runs; empty, with a warning, if absent."""
    try:
        return training_log(run_dir)
    except TinaError as exc:
        log.warning("%s; using eval curves only", exc)
        return pd.DataFrame(columns=["step", "metric", "value"])


def run_phase(run_dirs: list[str], out: Path, *, n_boot: int | None = None, seed: int = 0,
              rules: PhaseRules = PhaseRules()) -> pd.DataFrame:
    """`tina-probe phase`: change points of every run's training and eval curves -> phases, phase_summary and
    training_curves tables in the store at `out`; returns the phases table."""
    store = Store(out)
    passk, fmt = store.read("passk"), store.read("format")
    samples = store.read("samples")  # rule R2: the eval curves' noise from per-problem changes
    curves, names = [], []
    for d in run_dirs:
        run_dir = Path(d)
        if not run_dir.is_dir():
            raise TinaError(f"{run_dir}: no such run folder")
        name = run_name(run_dir)
        names.append(name)
        tc = train_curves(load_training_log(run_dir), name)
        ec = eval_curves(passk, fmt, name, samples)
        if ec.empty:
            log.warning("run %s: no eval results in %s (run `tina-probe eval`); training curves only", name, out)
        curves += [c for c in (tc, ec) if not c.empty]
    if not curves:
        log.warning("no training logs or eval results for %s; writing empty tables", ", ".join(names) or "no runs")
        allc = pd.DataFrame(columns=CURVE_COLUMNS)
    else:
        allc = pd.concat(curves, ignore_index=True)
    phases, status = detect_phases(allc, n_boot=n_boot, seed=seed, rules=rules)
    store.write("phases", phases)
    store.write("phase_summary", phase_summary(passk, phases, status, names))
    # each curve's status and point count, for the verdicts' "N eval points; change points need M" (rule R0)
    store.write("phase_status", status.assign(min_points=rules.min_points))
    train = allc[allc["source"] == "train"][["run", "metric", "step", "value"]]
    store.write("training_curves", train.reset_index(drop=True))
    return phases

