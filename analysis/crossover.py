"""The pass@k crossover: does RL only sharpen what the base could already sample (Yue et al., 2025)?

For a checkpoint and its base on the same problems, k_star is the smallest k at which the base's mean unbiased
pass@k reaches the checkpoint's (base >= checkpoint); null when it never does within the n samples. k_star = 1
means the checkpoint is no better than the base even at pass@1. Its range comes from a percentile bootstrap that
resamples problems (paired: a problem's base and checkpoint counts move together); k_star_high is null when more
than 2.5% of the resamples never cross within n. gap_at_1 and gap_at_max_k are checkpoint minus base pass@1 and
pass@max_k (max_k: the smallest sample count among the problems used).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from tina_probe.passk import pass_at_k

CROSSOVER_COLUMNS = ["run", "step", "kind", "benchmark", "sampling", "grading", "k_star", "k_star_low",
                     "k_star_high", "gap_at_1", "gap_at_max_k", "max_k", "n_problems"]
N_BOOT = 1000
TOL = 1e-12  # "reaches": base >= checkpoint up to float rounding


def pass_curves(ns, cs, max_k: int) -> np.ndarray:
    """[problems x max_k] unbiased pass@k for k = 1..max_k of problems with n_i samples and c_i correct."""
    cache: dict[tuple[int, int], np.ndarray] = {}
    rows = []
    for n, c in zip(ns, cs):
        key = (int(n), int(c))
        if key not in cache:
            cache[key] = np.array([pass_at_k(key[0], key[1], k) for k in range(1, max_k + 1)])
        rows.append(cache[key])
    return np.vstack(rows) if rows else np.zeros((0, max_k))


def first_crossing(base_mean: np.ndarray, ckpt_mean: np.ndarray) -> np.ndarray:
    """Smallest k (1-based) with base >= checkpoint along the last axis; max_k + 1 where it never happens."""
    reached = base_mean >= ckpt_mean - TOL
    max_k = base_mean.shape[-1]
    return np.where(reached.any(axis=-1), reached.argmax(axis=-1) + 1, max_k + 1)


def crossover(base_n, base_c, ckpt_n, ckpt_c, *, n_boot: int = N_BOOT, seed: int = 0,
              alpha: float = 0.05) -> dict:
    """k_star with its bootstrap range and the gaps, for paired per-problem (n, c) of the base and a checkpoint."""
    base_n, base_c, ckpt_n, ckpt_c = (np.asarray(a, dtype=int) for a in (base_n, base_c, ckpt_n, ckpt_c))
    n_problems = len(base_n)
    out = {"k_star": np.nan, "k_star_low": np.nan, "k_star_high": np.nan, "gap_at_1": np.nan,
           "gap_at_max_k": np.nan, "max_k": 0, "n_problems": n_problems}
    if n_problems == 0:
        return out
    max_k = int(min(base_n.min(), ckpt_n.min()))
    B, C = pass_curves(base_n, base_c, max_k), pass_curves(ckpt_n, ckpt_c, max_k)
    b_mean, c_mean = B.mean(axis=0), C.mean(axis=0)
    k_star = int(first_crossing(b_mean, c_mean))
    out |= {"k_star": float(k_star) if k_star <= max_k else np.nan, "gap_at_1": float(c_mean[0] - b_mean[0]),
            "gap_at_max_k": float(c_mean[-1] - b_mean[-1]), "max_k": max_k}
    if n_problems < 2:
        return out

    def stat(idx, axis=-1):
        idx = np.asarray(idx, dtype=int)
        return first_crossing(B[idx].mean(axis=-2), C[idx].mean(axis=-2)).astype(float)

    with warnings.catch_warnings():  # a degenerate distribution (every resample crosses at one k) is fine here
        warnings.simplefilter("ignore")
        res = stats.bootstrap((np.arange(n_problems),), stat, vectorized=True, n_resamples=n_boot,
                              confidence_level=1 - alpha, method="percentile", batch=200,
                              rng=np.random.default_rng(seed))
    dist = np.asarray(res.bootstrap_distribution)  # k_star is discrete: take order statistics, not interpolations
    lo = float(np.percentile(dist, 100 * alpha / 2, method="lower"))
    hi = float(np.percentile(dist, 100 * (1 - alpha / 2), method="higher"))
    out["k_star_low"] = lo if lo <= max_k else np.nan
    out["k_star_high"] = hi if hi <= max_k else np.nan
    return out


def per_problem_counts(samples: pd.DataFrame, correct_col: str) -> pd.DataFrame:
    """Per problem_id: n samples and c correct."""
    g = samples.groupby("problem_id", sort=True)[correct_col]
    return pd.DataFrame({"n": g.size(), "c": g.sum().astype(int)})


def crossover_table(samples: pd.DataFrame, gradings: dict[str, str], *, n_boot: int = N_BOOT,
                    seed: int = 0) -> pd.DataFrame:
    """Every trained checkpoint against its run's base (step 0), per benchmark, sampling and grading."""
    rows = []
    keys = ["run", "benchmark", "sampling"]
    for (run, bench, sampling), frame in samples.groupby(keys, dropna=False, sort=True):
        steps = sorted(frame["step"].unique())
        if 0 not in steps:
            continue
        base_frame = frame[frame["step"] == 0]
        for step in (s for s in steps if s > 0):
            at = frame[frame["step"] == step]
            kind = str(at["kind"].iloc[0]) if "kind" in at.columns else None
            for grading, col in gradings.items():
                base, ckpt = per_problem_counts(base_frame, col), per_problem_counts(at, col)
                common = base.index.intersection(ckpt.index)
                base, ckpt = base.loc[common], ckpt.loc[common]
                res = crossover(base["n"], base["c"], ckpt["n"], ckpt["c"], n_boot=n_boot, seed=seed)
                rows.append({"run": run, "step": int(step), "kind": kind, "benchmark": bench, "sampling": sampling,
                             "grading": grading} | res)
    return pd.DataFrame(rows, columns=CROSSOVER_COLUMNS)
