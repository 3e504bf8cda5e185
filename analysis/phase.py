"""Change points on training and evaluation curves: when does a run's format (and its accuracy) shift, and where
does its best checkpoint sit relative to that shift.

A curve is modelled as piecewise constant plus noise. Change points come from ruptures (PELT and binary
segmentation) with a BIC-style penalty scaled by a noise estimate; each change point gets a range from a moving
block bootstrap of the residuals around the fitted steps (analysis/changepoints.py); transitions and the best
checkpoint against them are analysis/transitions.py. Tables written: `phases` (one row per change point and
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
from analysis.claim import well_formatted
from analysis.process_map import process_map
from analysis.rules import PhaseRules
from analysis.selection import best_choice, selection_table
from analysis.transitions import (  # noqa: F401  (re-exported: these lived here before the split)
    DYNAMICS_METRICS, FORMAT_METRICS, PHASE_COLUMNS, accuracy_change, best_step, best_vs_transition,
    dynamics_changes, format_transition, main_change, merge_staircase, one_sampling, strict_curve)
from tina_probe.errors import TinaError
from tina_probe.runs import training_log
from tina_probe.store import Store

log = logging.getLogger(__name__)

Z975 = 1.959964  # normal quantile of a two-sided 95% interval (eval CIs are 95%)
TRAIN_METRICS = ("format_reward", "accuracy_reward", "reward", "completion_length", "clipped_ratio", "kl",
                 "entropy", "frac_reward_zero_std", "clip_ratio", "loss")
EVAL_METRICS = ("pass1_strict", "pass1_lenient", "format_rate")

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


SAMPLE_COLUMN = {"pass1_strict": "correct_strict", "pass1_lenient": "correct_lenient", "format_rate": "well_formatted"}


def per_problem_means(samples: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per (benchmark, problem_id) x step: the mean of a samples column (a problem's share of correct or
    well-formatted samples). Without a well_formatted column it is rebuilt as FormatReport defines it."""
    values = well_formatted(samples) if column == "well_formatted" else samples[column]
    return (samples.assign(_v=values.astype(float))
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
        if column not in df.columns and column != "well_formatted":  # well_formatted is rebuilt when absent
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


def _curve_rows(job: tuple) -> tuple[list[dict], list[dict], int | None]:
    """One curve's phases rows, its status rows, and its point count when too short to try (else None), from
    (key, curve, methods, n_boot, seed, rules). Pure: every curve's bootstrap starts from `seed`, so curves give the
    same rows in any process and order."""
    key, curve, methods, n_boot, seed, rules = job
    run, source, bench, metric = key
    bench = None if pd.isna(bench) else bench
    label = f"run {run} {source} {metric}" + (f" ({bench})" if bench else "")
    curve = _clean_curve(curve, label)
    n = len(curve)
    base = {"run": run, "source": source, "benchmark": bench, "metric": metric, "n_points": n}
    if n < rules.min_points:
        return [], [base | {"method": m, "n_changes": 0, "status": "too short"} for m in methods], n
    ci_sigma = curve["sigma"].to_numpy(dtype=float) if "sigma" in curve.columns else np.array([np.nan])
    ci_sigma = ci_sigma[np.isfinite(ci_sigma) & (ci_sigma > 0)]
    sigma = float(np.median(ci_sigma)) if len(ci_sigma) else None
    rows, status = [], []
    for method in methods:
        cps, sig, pen = curve_change_points(curve["step"], curve["value"], method=method, sigma=sigma,
                                            n_boot=n_boot, seed=seed, rules=rules)
        status.append(base | {"method": method, "n_changes": len(cps),
                              "status": "changes" if cps else "no change"})
        for cp in cps:
            rows.append(base | {"method": method, "change_step": cp.change_step,
                                "change_step_low": cp.change_step_low, "change_step_high": cp.change_step_high,
                                "size": cp.size, "support": cp.support, "sigma": sig, "penalty": pen})
    return rows, status, None


def detect_phases(curves: pd.DataFrame, *, methods=METHODS, n_boot: int | None = None, seed: int = 0,
                  rules: PhaseRules = PhaseRules(), workers: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Change points of every curve: (phases rows, one status row per curve and method).

    Eval curves use the median of their points' sigma (rule R2 when `phase` had the samples, else CI-implied);
    training curves, and eval curves without either, use fitted_sigma. `rules` holds min_points, min_size,
    penalty_c and n_boot (analysis/rules.py). `workers` > 1 spreads the curves over that many processes (ruptures'
    PELT refits are pure Python, so threads would not help); the rows are the same, in the same order."""
    n_boot = rules.n_boot if n_boot is None else n_boot
    rows, status = [], []
    too_short: dict[str, list[int]] = {}  # run -> point counts of its curves too short to try (one line per run)
    keys = ["run", "source", "benchmark", "metric"]
    groups = curves.groupby(keys, dropna=False, sort=True)
    jobs = [(key, curve, methods, n_boot, seed, rules) for key, curve in groups]
    results = process_map(_curve_rows, jobs, workers)
    for job, (curve_rows, curve_status, short) in tqdm(zip(jobs, results), total=len(jobs), desc="phase curves",
                                                       unit="curve", disable=None):
        rows += curve_rows
        status += curve_status
        if short is not None:
            too_short.setdefault(str(job[0][0]), []).append(short)
    phases = pd.DataFrame(rows, columns=PHASE_COLUMNS)
    for run, counts in too_short.items():
        log.warning("run %s: %d curves of %d-%d points, fewer than %d; no change points tried on them", run,
                    len(counts), min(counts), max(counts), rules.min_points)
    return phases, pd.DataFrame(status, columns=keys + ["n_points", "method", "n_changes", "status"])


# ----------------------------------------------------------------------------- summary


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
              rules: PhaseRules = PhaseRules(), workers: int = 1) -> pd.DataFrame:
    """`tina-probe phase`: change points of every run's training and eval curves -> phases, phase_summary and
    training_curves tables in the store at `out` (the curves over `workers` processes); returns the phases table."""
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
    phases, status = detect_phases(allc, n_boot=n_boot, seed=seed, rules=rules, workers=workers)
    store.write("phases", phases)
    store.write("phase_summary", phase_summary(passk, phases, status, names))
    # each curve's status and point count, for the verdicts' "N eval points; change points need M" (rule R0)
    store.write("phase_status", status.assign(min_points=rules.min_points))
    train = allc[allc["source"] == "train"][["run", "metric", "step", "value"]]
    store.write("training_curves", train.reset_index(drop=True))
    return phases

