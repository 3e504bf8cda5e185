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


def _r2_quadratic(x, y) -> float:
    """R^2 of the least-squares fit y ~ a + b x + c x^2 (rule Z5); nan when x or y is constant."""
    if np.ptp(x) == 0 or np.ptp(y) == 0 or len(np.unique(x)) < 3:
        return np.nan
    fitted = np.polyval(np.polyfit(x, y, 2), x)
    return float(1.0 - np.sum((y - fitted) ** 2) / np.sum((y - np.mean(y)) ** 2))


def _boot(stat, n: int, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile CI of stat(idx) over resampled checkpoints. Hand-rolled rather than scipy.stats.bootstrap: with a
    handful of checkpoints many resamples repeat one point and rho is undefined; those resamples are dropped here,
    where scipy would return a nan interval."""
    rng = np.random.default_rng(seed)
    dist = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)])
    dist = dist[~np.isnan(dist)]
    if len(dist) < n_boot // 2:
        return np.nan, np.nan
    lo, hi = np.percentile(dist, [2.5, 97.5])
    return float(lo), float(hi)


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
        lo, hi = _boot(lambda i: _rho(x[i], y[i]), n, n_boot, seed)
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
        lo, hi = _boot(lambda i: _rho(k[i], y[i]) - _rho(w[i], y[i]), n, n_boot, seed)
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
