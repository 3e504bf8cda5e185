"""Unbiased pass@k (Chen et al. 2021), bootstrap CIs over problems, Wilson CIs, and the passk / format tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from tina_probe.errors import TinaError

GROUP_COLS = ("run", "step", "kind", "benchmark")
CORRECT_COLS = {"strict": "correct_strict", "lenient": "correct_lenient"}
# format-table metrics that are a share of samples (Wilson CI): metric -> samples column (or the boxed test)
_RATE_METRICS = {
    "format_rate": "well_formatted",
    "think_closed": "think_closed",
    "boxed_one": "boxed",
    "answer_tag": "answer_tag",
    "truncation_rate": "truncated",
}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from c correct of n samples: 1 - C(n-c, k)/C(n, k) as a stable product."""
    if not (n >= 1 and 0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k: need 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def ks_for(n: int) -> list[int]:
    """The k values reported for n samples: powers of two up to n, plus n itself."""
    if n < 1:
        raise ValueError(f"ks_for: need n >= 1, got {n}")
    ks = [2**i for i in range(int(n).bit_length()) if 2**i <= n]
    return ks if ks[-1] == n else ks + [n]


def _ratio(num: np.ndarray, den: np.ndarray, axis: int = -1) -> np.ndarray:
    """sum(num) / sum(den) along axis: the pooled mean of per-problem totals."""
    return np.sum(num, axis=axis) / np.sum(den, axis=axis)


def ratio_ci(
    num: np.ndarray, den: np.ndarray, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """sum(num)/sum(den) over problems with a percentile bootstrap CI that resamples problems (nan CI if < 2)."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    if len(num) == 0:
        return (np.nan, np.nan, np.nan)
    value = float(_ratio(num, den))
    if len(num) < 2:  # one problem gives no spread to resample
        return (value, np.nan, np.nan)
    if np.all(num == num[0]) and np.all(den == den[0]):  # every resample gives the same value
        return (value, value, value)
    res = stats.bootstrap(
        (num, den),
        _ratio,
        paired=True,  # a problem's numerator and denominator are resampled together
        vectorized=True,
        n_resamples=n_boot,
        confidence_level=1 - alpha,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return (value, float(res.confidence_interval.low), float(res.confidence_interval.high))


def passk_with_ci(
    correct: np.ndarray, k: int, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """Mean pass@k over problems of a [problems x samples] bool matrix, with a bootstrap CI over problems."""
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim != 2:
        raise ValueError(f"passk_with_ci: need a [problems x samples] matrix, got shape {correct.shape}")
    n = correct.shape[1]
    values = np.array([pass_at_k(n, int(c), k) for c in correct.sum(axis=1)])
    return ratio_ci(values, np.ones_like(values), n_boot=n_boot, seed=seed, alpha=alpha)


def wilson_ci(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion; (nan, nan) for no trials."""
    if n == 0:
        return (np.nan, np.nan)
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=1 - alpha, method="wilson")
    return (float(ci.low), float(ci.high))


def _check_columns(samples: pd.DataFrame, needed: Sequence[str]) -> None:
    """Raise a TinaError naming the columns the samples table lacks or leaves empty."""
    missing = [c for c in needed if c not in samples.columns]
    if missing:
        raise TinaError(f"samples table: missing columns {missing}")
    empty = [c for c in needed if samples[c].isna().any()]
    if empty:
        raise TinaError(f"samples table: empty values in columns {empty}")


def _groups(samples: pd.DataFrame, group_cols: Sequence[str]):
    """(key dict, sub-frame) for each group, nulls kept as their own group."""
    for key, frame in samples.groupby(list(group_cols), dropna=False, sort=True):
        yield dict(zip(group_cols, key)), frame


def _per_problem(frame: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    """Per problem: its sample count n and the sum of each column."""
    by = frame.groupby("problem_id", sort=True)
    out = by[list(cols)].sum()
    out["n"] = by.size()
    return out


def per_k_counts(samples: pd.DataFrame, group_cols: Sequence[str], correct_cols: Mapping[str, str]):
    """(group key, grading, k, n per problem, correct per problem) for every group, grading and k in ks_for(max n),
    keeping only the problems with at least k samples: the loop the pass@k-like tables share."""
    group_cols = list(group_cols)
    _check_columns(samples, group_cols + ["problem_id", *correct_cols.values()])
    flags = samples.assign(**{col: samples[col].astype(bool) for col in correct_cols.values()})
    for key, frame in _groups(flags, group_cols):
        problems = _per_problem(frame, list(correct_cols.values()))
        ns = problems["n"].to_numpy()
        for grading, col in correct_cols.items():
            cs = problems[col].to_numpy()
            for k in ks_for(int(ns.max())):
                use = ns >= k
                yield key, grading, k, ns[use], cs[use]


def passk_table(
    samples: pd.DataFrame,
    group_cols: Sequence[str] = GROUP_COLS,
    correct_cols: Mapping[str, str] = CORRECT_COLS,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """The passk table: pass@k per group and grading for k in ks_for(max n), with bootstrap CIs over problems.

    Problems with fewer samples than k are left out of that k; the n column is the smallest sample count
    among the problems used, and n_problems how many were used.
    """
    group_cols = list(group_cols)
    rows = []
    for key, grading, k, ns, cs in per_k_counts(samples, group_cols, correct_cols):
        values = np.array([pass_at_k(int(n), int(c), k) for n, c in zip(ns, cs)])
        value, lo, hi = ratio_ci(values, np.ones_like(values), n_boot=n_boot, seed=seed, alpha=alpha)
        rows.append({**key, "grading": grading, "k": k, "n": int(ns.min()),
                     "value": value, "ci_low": lo, "ci_high": hi, "n_problems": len(ns)})
    columns = group_cols + ["grading", "k", "n", "value", "ci_low", "ci_high", "n_problems"]
    return pd.DataFrame(rows, columns=columns)


def format_table(
    samples: pd.DataFrame,
    group_cols: Sequence[str] = GROUP_COLS,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """The format table: format shares with Wilson CIs; mean accuracy and tokens with bootstrap CIs over problems."""
    group_cols = list(group_cols)
    means = {"mean_accuracy_strict": "correct_strict", "mean_accuracy_lenient": "correct_lenient",
             "mean_tokens": "n_tokens"}
    _check_columns(samples, group_cols + ["problem_id", *_RATE_METRICS.values(), *means.values()])
    flags = samples.assign(
        **{col: samples[col].astype(bool) for col in _RATE_METRICS.values() if col != "boxed"},
        boxed=samples["boxed"] == 1,  # exactly one boxed answer after </think>
        correct_strict=samples["correct_strict"].astype(float),
        correct_lenient=samples["correct_lenient"].astype(float),
        n_tokens=samples["n_tokens"].astype(float),
    )
    rows = []
    for key, frame in _groups(flags, group_cols):
        for metric, col in _RATE_METRICS.items():
            hits, n = int(frame[col].sum()), len(frame)
            lo, hi = wilson_ci(hits, n, alpha=alpha)
            rows.append({**key, "metric": metric, "value": hits / n, "ci_low": lo, "ci_high": hi})
        problems = _per_problem(frame, list(means.values()))
        for metric, col in means.items():
            value, lo, hi = ratio_ci(problems[col].to_numpy(), problems["n"].to_numpy(),
                                     n_boot=n_boot, seed=seed, alpha=alpha)
            rows.append({**key, "metric": metric, "value": value, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows, columns=group_cols + ["metric", "value", "ci_low", "ci_high"])
