"""Change points on training and evaluation curves: when does a run's format (and its accuracy) shift, and where
does its best checkpoint sit relative to that shift.

A curve is modelled as piecewise constant plus noise. Change points come from ruptures (PELT and binary
segmentation) with a BIC-style penalty scaled by a noise estimate; each change point gets a range from a moving
block bootstrap of the residuals around the fitted steps. Tables written: `phases` (one row per change point and
method), `phase_summary` (one row per run), `training_curves` (the tidy training logs, for the report).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import ruptures as rpt
from ruptures.base import BaseCost
from ruptures.exceptions import BadSegmentationParameters
from tqdm import tqdm

from analysis.selection import BestChoice, best_choice, selection_table
from tina_probe.errors import TinaError
from tina_probe.runs import training_log
from tina_probe.store import Store

log = logging.getLogger(__name__)

Z975 = 1.959964  # normal quantile of a two-sided 95% interval (eval CIs are 95%)
# Penalty per change point = PENALTY_C * sigma^2 * log(n): the MBIC-like constant 3 (Zhang & Siegmund 2007;
# R's changepoint package uses 3 log n for MBIC). Measured here on pure Gaussian noise with known sigma: 2-3% of
# curves of 8-100 points get a spurious change; with sigma estimated (fitted_sigma): 10% at 13 points, 3% at 30,
# 2% at 100.
PENALTY_C = 3.0
MIN_POINTS = 6  # curves with fewer points are not segmented (a warning names them)
MIN_SIZE = 2  # shortest segment, in points
MAX_GRID = 200  # longer curves place change points on a grid of about this many positions (ruptures' jump)
N_BOOT = 200  # bootstrap refits per curve and method
CI_LEVEL = 95.0  # the range of a change point is the central CI_LEVEL% of its bootstrap positions
METHODS = ("pelt", "binseg")
PRIMARY_METHOD = "pelt"  # the method whose rows phase_summary and the hypothesis tests read

TRAIN_METRICS = ("format_reward", "accuracy_reward", "reward", "completion_length", "clipped_ratio", "kl",
                 "entropy", "frac_reward_zero_std", "clip_ratio", "loss")
# training dynamics read beside the format transition (phase_summary: each one's largest change and its lag)
DYNAMICS_METRICS = ("entropy", "completion_length", "clipped_ratio", "kl", "frac_reward_zero_std")
EVAL_METRICS = ("pass1_strict", "pass1_lenient", "format_rate")
FORMAT_METRICS = (("eval", "format_rate"), ("train", "format_reward"))  # preference order of the format curve

PHASE_COLUMNS = ["run", "metric", "change_step", "change_step_low", "change_step_high", "method", "size",
                 "n_points", "source", "benchmark", "support", "sigma", "penalty"]
CURVE_COLUMNS = ["run", "source", "benchmark", "metric", "step", "value", "sigma"]


# ----------------------------------------------------------------------------- detection


class CostMeanShift(BaseCost):
    """Least-squares cost of a constant-mean segment from prefix sums.

    ruptures' CostL2 gives the same numbers but recomputes each slice's variance (O(n) per segment), which makes
    the bootstrap's hundreds of PELT refits about 8x slower; prefix sums make each segment O(1)."""

    model = "l2_prefix"
    min_size = 1

    def fit(self, signal) -> "CostMeanShift":
        """Precompute prefix sums of the (centred, for float precision) signal."""
        y = np.asarray(signal, dtype=float).reshape(len(signal), -1)[:, 0]
        y = y - y.mean()
        self.signal = y.reshape(-1, 1)
        self._s1 = np.concatenate([[0.0], np.cumsum(y)])
        self._s2 = np.concatenate([[0.0], np.cumsum(y * y)])
        return self

    def error(self, start, end) -> float:
        """Sum of squared deviations from the segment mean on [start, end)."""
        n = end - start
        s = self._s1[end] - self._s1[start]
        return max(0.0, float(self._s2[end] - self._s2[start] - s * s / n))


def diff_sigma(values) -> float:
    """Noise standard deviation from first differences, sd(diff) / sqrt(2): an upper bound when the curve jumps."""
    d = np.diff(np.asarray(values, dtype=float))
    return float(np.std(d)) / math.sqrt(2) if len(d) else 0.0


def fitted_sigma(values, method: str = "pelt", *, penalty_c: float = PENALTY_C, min_size: int = MIN_SIZE,
                 max_grid: int = MAX_GRID, max_iter: int = 20) -> float:
    """Noise standard deviation as the residual sd of the curve's own segmentation, iterated to a fixed point.

    Starts from diff_sigma (too high when there are jumps, so few change points), segments, takes the residual
    sd (one degree of freedom per segment mean), and repeats until it settles. Measured against the MAD of
    first differences on Gaussian noise: spurious changes in 10% vs 16% of 13-point curves, 3% vs 10% at 30
    points; the MAD, which uses only the middle of the differences, is too noisy on short curves."""
    y = np.asarray(values, dtype=float)
    n = len(y)
    sigma = diff_sigma(y)
    for _ in range(max_iter):
        if sigma <= 0:
            return 0.0
        det = StepDetector(method, sigma=sigma, penalty_c=penalty_c, min_size=min_size, max_grid=max_grid)
        bkps = det.fit_predict(y)
        resid = y - piecewise_means(y, bkps)
        new = math.sqrt(float(resid @ resid) / max(n - len(bkps), 1))
        settled = abs(new - sigma) <= 1e-3 * sigma
        sigma = new
        if settled:
            break
    return sigma


def bic_penalty(sigma: float, n: int, c: float = PENALTY_C) -> float:
    """Penalty per change point for a least-squares cost: c * sigma^2 * log(n)."""
    return c * sigma * sigma * math.log(max(n, 2))


class StepDetector:
    """Mean-shift change points with a noise-scaled penalty; fit/predict like ruptures' estimators.

    predict() returns ruptures' breakpoints: sorted indices where a new segment starts, the last being n."""

    def __init__(self, method: str = PRIMARY_METHOD, *, sigma: float | None = None, penalty_c: float = PENALTY_C,
                 min_size: int = MIN_SIZE, max_grid: int = MAX_GRID):
        if method not in METHODS:
            raise TinaError(f"method {method!r}: unknown; choose one of {', '.join(METHODS)}")
        self.method, self.sigma, self.penalty_c = method, sigma, penalty_c
        self.min_size, self.max_grid = min_size, max_grid

    def fit(self, signal) -> "StepDetector":
        """Estimate the noise (unless given) and the penalty, and fit the ruptures estimator."""
        y = np.asarray(signal, dtype=float)
        self.n_, self.signal_ = len(y), y
        self.sigma_ = (float(self.sigma) if self.sigma is not None else
                       fitted_sigma(y, self.method, penalty_c=self.penalty_c, min_size=self.min_size,
                                    max_grid=self.max_grid))
        self.penalty_ = bic_penalty(self.sigma_, self.n_, self.penalty_c)
        self.jump_ = max(1, math.ceil(self.n_ / self.max_grid))
        algo = rpt.Pelt if self.method == "pelt" else rpt.Binseg
        self.algo_ = algo(custom_cost=CostMeanShift(), min_size=self.min_size, jump=self.jump_)
        self.algo_.fit(y)
        return self

    def predict(self, pen: float | None = None) -> list[int]:
        """Breakpoints for the fitted signal; `pen` overrides the noise-scaled penalty."""
        pen = self.penalty_ if pen is None else pen
        if self.n_ < max(MIN_POINTS, 2 * self.min_size):
            return [self.n_]  # too short to segment
        if pen <= 0:  # a noiseless curve: every change of value is a change point
            return [int(i) + 1 for i in np.flatnonzero(np.diff(self.signal_) != 0)] + [self.n_]
        try:
            return [int(b) for b in self.algo_.predict(pen=pen)]
        except BadSegmentationParameters:
            return [self.n_]

    def fit_predict(self, signal, pen: float | None = None) -> list[int]:
        """fit then predict."""
        return self.fit(signal).predict(pen)


def piecewise_means(values, bkps: list[int]) -> np.ndarray:
    """The piecewise-constant fit: each segment replaced by its mean."""
    y = np.asarray(values, dtype=float)
    fit = np.empty_like(y)
    start = 0
    for end in bkps:
        fit[start:end] = y[start:end].mean()
        start = end
    return fit


def block_bootstrap_index(n: int, block: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of a moving block bootstrap: random blocks of consecutive positions, concatenated, cut to n."""
    block = max(1, min(block, n))
    starts = rng.integers(0, n - block + 1, size=math.ceil(n / block))
    return (starts[:, None] + np.arange(block)[None, :]).reshape(-1)[:n]


@dataclass(frozen=True)
class ChangePoint:
    """One change of a curve: where (as an index and a step), its bootstrap range, and the jump in level."""

    index: int  # first point of the new segment
    change_step: float
    change_step_low: float
    change_step_high: float
    size: float  # mean after - mean before (adjacent segments)
    support: float  # share of bootstrap refits that found a change in this change point's neighbourhood


def curve_change_points(steps, values, *, method: str = PRIMARY_METHOD, sigma: float | None = None,
                        n_boot: int = N_BOOT, seed: int = 0) -> tuple[list[ChangePoint], float, float]:
    """Change points of one curve with bootstrap ranges; returns (change points, sigma, penalty).

    The range: residuals around the fitted steps are resampled in blocks of ~n^(1/3) points (the usual block
    length rule, which keeps short-range autocorrelation), added back to the fit, and refitted with the same
    penalty; each change point takes the nearest refitted change inside its neighbourhood (half way to the next
    change point on either side). The range is the central CI_LEVEL% of those positions, widened to hold the
    estimate itself."""
    steps = np.asarray(steps, dtype=float)
    y = np.asarray(values, dtype=float)
    det = StepDetector(method, sigma=sigma).fit(y)
    bkps = det.predict()
    cps_idx = bkps[:-1]
    if not cps_idx:
        return [], det.sigma_, det.penalty_
    fit = piecewise_means(y, bkps)
    resid = y - fit
    n = len(y)
    rng = np.random.default_rng(seed)
    block = max(1, round(n ** (1 / 3)))
    edges = [0.0] + [(a + b) / 2 for a, b in zip(cps_idx[:-1], cps_idx[1:])] + [float(n)]
    found: list[list[int]] = [[] for _ in cps_idx]
    refit = StepDetector(method, sigma=det.sigma_)
    for _ in range(n_boot):
        y_star = fit + resid[block_bootstrap_index(n, block, rng)]
        star = np.array(refit.fit(y_star).predict(det.penalty_)[:-1])
        for j, cp in enumerate(cps_idx):
            near = star[(star > edges[j]) & (star <= edges[j + 1])] if len(star) else star
            if len(near):
                found[j].append(int(near[np.argmin(np.abs(near - cp))]))
    tail = (100.0 - CI_LEVEL) / 2
    out = []
    seg_edges = [0] + bkps
    for j, cp in enumerate(cps_idx):
        est = steps[cp]
        if found[j]:
            pos = steps[np.array(found[j])]
            low = min(est, float(np.percentile(pos, tail, method="lower")))
            high = max(est, float(np.percentile(pos, 100 - tail, method="higher")))
        else:
            low = high = est
        before = y[seg_edges[j]:cp].mean()
        after = y[cp:seg_edges[j + 2]].mean()
        out.append(ChangePoint(index=int(cp), change_step=float(est), change_step_low=low, change_step_high=high,
                               size=float(after - before), support=len(found[j]) / n_boot if n_boot else np.nan))
    return out, det.sigma_, det.penalty_


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


def eval_curves(passk: pd.DataFrame, fmt: pd.DataFrame, run: str) -> pd.DataFrame:
    """Per-checkpoint eval curves of one run: strict and lenient pass@1 and format_rate per benchmark.

    Each point carries the noise sigma implied by its 95% CI ((high - low) / (2 * 1.96))."""
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
        sigma = np.nan
    return df.assign(source="eval", sigma=sigma)[CURVE_COLUMNS]


def detect_phases(curves: pd.DataFrame, *, methods=METHODS, n_boot: int = N_BOOT,
                  seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Change points of every curve: (phases rows, one status row per curve and method).

    Eval curves use the median CI-implied sigma when CIs exist (for pass@1, whose CIs resample problems, this is
    conservative: it includes the between-problem spread that checkpoints of one run share); other curves, and
    eval curves without CIs, use fitted_sigma."""
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
        if n < MIN_POINTS:
            too_short.setdefault(str(run), []).append(n)
            status += [base | {"method": m, "n_changes": 0, "status": "too short"} for m in methods]
            continue
        ci_sigma = curve["sigma"].to_numpy(dtype=float) if "sigma" in curve.columns else np.array([np.nan])
        ci_sigma = ci_sigma[np.isfinite(ci_sigma) & (ci_sigma > 0)]
        sigma = float(np.median(ci_sigma)) if len(ci_sigma) else None
        for method in methods:
            cps, sig, pen = curve_change_points(curve["step"], curve["value"], method=method, sigma=sigma,
                                                n_boot=n_boot, seed=seed)
            status.append(base | {"method": method, "n_changes": len(cps),
                                  "status": "changes" if cps else "no change"})
            for cp in cps:
                rows.append(base | {"method": method, "change_step": cp.change_step,
                                    "change_step_low": cp.change_step_low, "change_step_high": cp.change_step_high,
                                    "size": cp.size, "support": cp.support, "sigma": sig, "penalty": pen})
    phases = pd.DataFrame(rows, columns=PHASE_COLUMNS)
    for run, counts in too_short.items():
        log.warning("run %s: %d curves of %d-%d points, fewer than %d; no change points tried on them", run,
                    len(counts), min(counts), max(counts), MIN_POINTS)
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


def run_phase(run_dirs: list[str], out: Path, *, n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """`tina-probe phase`: change points of every run's training and eval curves -> phases, phase_summary and
    training_curves tables in the store at `out`; returns the phases table."""
    store = Store(out)
    passk, fmt = store.read("passk"), store.read("format")
    curves, names = [], []
    for d in run_dirs:
        run_dir = Path(d)
        if not run_dir.is_dir():
            raise TinaError(f"{run_dir}: no such run folder")
        name = run_name(run_dir)
        names.append(name)
        tc = train_curves(load_training_log(run_dir), name)
        ec = eval_curves(passk, fmt, name)
        if ec.empty:
            log.warning("run %s: no eval results in %s (run `tina-probe eval`); training curves only", name, out)
        curves += [c for c in (tc, ec) if not c.empty]
    if not curves:
        log.warning("no training logs or eval results for %s; writing empty tables", ", ".join(names) or "no runs")
        allc = pd.DataFrame(columns=CURVE_COLUMNS)
    else:
        allc = pd.concat(curves, ignore_index=True)
    phases, status = detect_phases(allc, n_boot=n_boot, seed=seed)
    store.write("phases", phases)
    store.write("phase_summary", phase_summary(passk, phases, status, names))
    train = allc[allc["source"] == "train"][["run", "metric", "step", "value"]]
    store.write("training_curves", train.reset_index(drop=True))
    return phases

