"""RL's Razor (Shenfeld et al. 2025, arXiv 2509.04259): does the KL to the base on the task's own distribution
predict forgetting along a series better than the size of the weight change does? -> `razor` table.

Rules, stated once:
- Z1 forgetting. For every retention metric (probe, metric) other than the task probes, its loss against the base
  at each checkpoint, signed so that larger means more forgotten (accuracy: base - value; KL, NLL, perplexity:
  value - base). Only checkpoints that have both the metric and the predictor count; the base itself is left out
  (its loss and KL are 0 by definition and would add a free concordant point).
- Z2 predictors per checkpoint: `task_kl`, the task probe's KL per token on the task's prompts (retention rows of
  `task_probes`): the paper's E_{x~task}[KL(pi_0 || pi)] (its section 1, "forward KL"; section 6 finds the reverse
  direction a weaker predictor), i.e. metric `kl_forward`, on the base's own completions; a store from before that
  metric has only `kl`, KL(pi_t || pi_0) on the checkpoint's completions, which is used then (column
  `task_kl_metric` says which); `rel_norm`, the median over modules of spectra's ||dW|| / ||W_0||.
- Z3 association: Spearman's rho (scipy.stats.spearmanr) of predictor and loss over one run's checkpoints, and over
  all runs' checkpoints pooled ("all runs", the paper's across-model comparison); 95% CI by a percentile bootstrap
  over checkpoints. Fewer than MIN_POINTS checkpoints: no rho, the note says why.
- Z4 which predicts better: rho(task_kl) - rho(rel_norm) on the same checkpoints, with a paired bootstrap CI;
  "task_kl" when the CI lies above 0, "rel_norm" when below, else "neither shown".
- Z5 the paper's own statistic beside rho: R^2 of a second-degree polynomial fit of the loss on each predictor
  (its Table 1, "R^2 (2nd deg. polynomial)"), same checkpoints, bootstrap CI over checkpoints (`statistic` column
  "r2_quadratic"; rho rows say "spearman"). Needs MIN_POINTS checkpoints too; descriptive, no verdict.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy import stats

from tina_probe.slow_paths import slow_paths

log = logging.getLogger(__name__)

MIN_POINTS = 4
N_BOOT = 1000
TASK_PROBES = ("kl_task", "kl_task_real")
LOWER_IS_LOSS = ("acc", "acc_norm", "exact_match", "accuracy")  # metrics where a fall is forgetting
COLUMNS = ["scope", "kind", "probe", "metric", "predictor", "statistic", "n_points", "value", "ci_low", "ci_high",
           "p_value", "verdict", "note", "task_kl_metric"]


def forgetting_frame(retention: pd.DataFrame, spectra: pd.DataFrame | None,
                     task_probes=TASK_PROBES) -> pd.DataFrame:
    """One row per (run, step, probe, metric) of a trained checkpoint: loss vs base, task_kl and rel_norm (Z1, Z2)."""
    r = retention.copy()
    r["step"] = r["step"].astype(int)
    on_task = r[r.probe.isin(task_probes)]
    metric_used = "kl_forward" if (on_task.metric == "kl_forward").any() else "kl"
    task = on_task[on_task.metric == metric_used].groupby(["run", "step"])["value"].mean()
    older = sorted(set(zip(on_task["run"], on_task["step"])) - set(task.index))
    older = [(run, step) for run, step in older if step > 0]
    if older:  # a store that mixes task-KL rows from before kl_forward with newer ones: say who is left out (Z1)
        log.warning("razor: %d checkpoint(s) have the task KL only as `kl` (rows from before `kl_forward`) and are "
                    "left out of the fit; rerun `tina-probe retention` on them: %s", len(older),
                    ", ".join(f"{run}@{step}" for run, step in older[:6]) + (" ..." if len(older) > 6 else ""))
    rest = r[~r.probe.isin(task_probes)]
    base = rest[rest.step == 0].groupby(["run", "probe", "metric"])["value"].first()
    rows = []
    for (run, step, probe, metric), value in rest[rest.step > 0].groupby(["run", "step", "probe", "metric"])["value"]:
        b = base.get((run, probe, metric))
        if b is None or pd.isna(b):
            continue
        v = float(value.iloc[0])
        loss = (b - v) if str(metric).split(",")[0] in LOWER_IS_LOSS else (v - b)
        kind = r[(r.run == run) & (r.step == step)]["kind"].iloc[0]
        rows.append({"run": run, "step": step, "kind": kind, "probe": probe, "metric": metric, "loss": loss,
                     "task_kl": task.get((run, step), np.nan), "task_kl_metric": metric_used})
    df = pd.DataFrame(rows, columns=["run", "step", "kind", "probe", "metric", "loss", "task_kl", "task_kl_metric"])
    if spectra is not None and not spectra.empty and "rel_norm" in spectra.columns:
        norm = spectra.groupby(["run", "step"])["rel_norm"].median().rename("rel_norm").reset_index()
        norm["step"] = norm["step"].astype(int)
        df = df.merge(norm, on=["run", "step"], how="left")
    else:
        df["rel_norm"] = np.nan
    return df


def _rho(x, y) -> float:
    with np.errstate(invalid="ignore", divide="ignore"):
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            return np.nan
        return float(stats.spearmanr(x, y).statistic)


def rho_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row of x against the same row of y (2-D, one resample a row); nan where a row is
    constant. Equal bit for bit to `_rho` (scipy.stats.spearmanr) row by row.

    Written by hand because spearmanr takes one pair at a time (about 1 ms a call: a study's bootstraps made 100k
    calls, most of `dynamics`) or, given many columns, the whole cross-correlation matrix with its p-values. The ranks
    come from scipy.stats.rankdata; the correlation repeats np.corrcoef's steps in its order (centre, sums of
    products times 1/(n-1), divide by the two standard deviations, clip). Ranks are integers or halves, so the centred
    values, their products and sums are exact in float64 whatever the summation order: only the same final
    operations round, in the same order, hence the same bits (tests/test_razor.py checks it on ties and sizes)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = x.shape[1]
    rx, ry = stats.rankdata(x, axis=1), stats.rankdata(y, axis=1)
    cx = rx - rx.mean(axis=1, keepdims=True)
    cy = ry - ry.mean(axis=1, keepdims=True)
    inv = np.true_divide(1, n - 1)
    cxy, cxx, cyy = (cx * cy).sum(axis=1) * inv, (cx * cx).sum(axis=1) * inv, (cy * cy).sum(axis=1) * inv
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.clip((cxy / np.sqrt(cyy)) / np.sqrt(cxx), -1, 1)  # corrcoef's [1, 0]: row y first, then column x
    constant = (np.ptp(x, axis=1) == 0) | (np.ptp(y, axis=1) == 0)
    return np.where(constant, np.nan, rho)


def _r2_quadratic(x, y) -> float:
    """R^2 of the least-squares fit y ~ a + b x + c x^2 (rule Z5); nan when x or y is constant."""
    if np.ptp(x) == 0 or np.ptp(y) == 0 or len(np.unique(x)) < 3:
        return np.nan
    fitted = np.polyval(np.polyfit(x, y, 2), x)
    return float(1.0 - np.sum((y - fitted) ** 2) / np.sum((y - np.mean(y)) ** 2))


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """The bootstrap's checkpoint indices, one resample a row, drawn one resample at a time as _boot always drew
    them (one call per resample: a single call of n_boot * n draws gives another stream)."""
    rng = np.random.default_rng(seed)
    return np.array([rng.integers(0, n, n) for _ in range(n_boot)]).reshape(n_boot, n)


def _percentile_ci(dist: np.ndarray, n_boot: int) -> tuple[float, float]:
    """2.5 and 97.5 percentiles of the defined resampled statistics; nan when fewer than half are defined."""
    dist = dist[~np.isnan(dist)]
    if len(dist) < n_boot // 2:
        return np.nan, np.nan
    lo, hi = np.percentile(dist, [2.5, 97.5])
    return float(lo), float(hi)


def _boot(stat, n: int, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile CI of stat(idx) over resampled checkpoints. Hand-rolled rather than scipy.stats.bootstrap: with a
    handful of checkpoints many resamples repeat one point and rho is undefined; those resamples are dropped here,
    where scipy would return a nan interval."""
    return _percentile_ci(np.array([stat(i) for i in _resamples(n, n_boot, seed)]), n_boot)


def _boot_rho(n: int, n_boot: int, seed: int, x, y, minus: tuple | None = None) -> tuple[float, float]:
    """_boot of rho(x, y), or of rho(x, y) - rho(*minus), every resample at once (rho_rows): the same resamples and
    the same values as _boot with _rho."""
    if slow_paths():  # the path before the speed work: one spearmanr call per resample
        if minus is None:
            return _boot(lambda i: _rho(x[i], y[i]), n, n_boot, seed)
        return _boot(lambda i: _rho(x[i], y[i]) - _rho(minus[0][i], minus[1][i]), n, n_boot, seed)
    idx = _resamples(n, n_boot, seed)
    dist = rho_rows(x[idx], y[idx])
    if minus is not None:
        dist = dist - rho_rows(minus[0][idx], minus[1][idx])
    return _percentile_ci(dist, n_boot)


def association_rows(frame: pd.DataFrame, scope: str, kind: str, probe: str, metric: str, *,
                     n_boot: int = N_BOOT, seed: int = 0) -> list[dict]:
    """Rules Z3 and Z4 for one scope (a run, or all runs) and one retention metric."""
    base = {"scope": scope, "kind": kind, "probe": probe, "metric": metric}
    rows = []
    for predictor in ("task_kl", "rel_norm"):
        d = frame.dropna(subset=["loss", predictor])
        n = len(d)
        if n < MIN_POINTS:
            rows.append({**base, "predictor": predictor, "statistic": "spearman", "n_points": n, "verdict": "inconclusive",
                         "note": f"{n} checkpoints with both {predictor} and this metric; rho needs {MIN_POINTS}"})
            continue
        x, y = d[predictor].to_numpy(float), d["loss"].to_numpy(float)
        rho = _rho(x, y)
        p = float(stats.spearmanr(x, y).pvalue) if not np.isnan(rho) else np.nan
        lo, hi = _boot_rho(n, n_boot, seed, x, y)
        rows.append({**base, "predictor": predictor, "statistic": "spearman", "n_points": n, "value": rho,
                     "ci_low": lo, "ci_high": hi, "p_value": p, "verdict": "",
                     "note": "constant predictor or loss" if np.isnan(rho) else ""})
        r2 = _r2_quadratic(x, y)
        with np.errstate(invalid="ignore", divide="ignore"):
            lo2, hi2 = _boot(lambda i: _r2_quadratic(x[i], y[i]), n, n_boot, seed)
        rows.append({**base, "predictor": predictor, "statistic": "r2_quadratic", "n_points": n, "value": r2,
                     "ci_low": lo2, "ci_high": hi2, "verdict": "",
                     "note": "the paper's statistic (rule Z5)" if not np.isnan(r2) else "too few distinct values"})
    both = frame.dropna(subset=["loss", "task_kl", "rel_norm"])
    n = len(both)
    if n >= MIN_POINTS:
        k, w, y = (both[c].to_numpy(float) for c in ("task_kl", "rel_norm", "loss"))
        diff = _rho(k, y) - _rho(w, y)
        lo, hi = _boot_rho(n, n_boot, seed, k, y, minus=(w, y))
        verdict = ("task_kl" if lo > 0 else "rel_norm" if hi < 0 else "neither shown") if not np.isnan(lo) \
            else "inconclusive"
        rows.append({**base, "predictor": "task_kl - rel_norm", "statistic": "spearman", "n_points": n, "value": diff,
                     "ci_low": lo,
                     "ci_high": hi, "verdict": verdict, "note": "which predicts forgetting better (rule Z4)"})
    return rows


def razor_table(retention: pd.DataFrame, spectra: pd.DataFrame | None, *, task_probes=TASK_PROBES,
                n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """Per run and over all runs, per retention metric: rules Z1-Z4."""
    if retention is None or retention.empty:
        return pd.DataFrame(columns=COLUMNS)
    frame = forgetting_frame(retention, spectra, task_probes)
    rows = []
    for (probe, metric), part in frame.groupby(["probe", "metric"]):
        for run, one in part.groupby("run"):
            rows += association_rows(one, run, str(one["kind"].iloc[0]), probe, metric, n_boot=n_boot, seed=seed)
        rows += association_rows(part, "all runs", "/".join(sorted(part["kind"].unique())), probe, metric,
                                 n_boot=n_boot, seed=seed)
    out = pd.DataFrame(rows, columns=COLUMNS)
    out["task_kl_metric"] = frame["task_kl_metric"].iloc[0] if len(frame) else ""
    return out
