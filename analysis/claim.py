"""What every claim shares: the hypothesis table's row, per-problem shares of a checkpoint, and paired tests over
problems (scipy / statsmodels; nothing hand-rolled)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.weightstats import ttost_paired

from analysis.transitions import one_sampling

HYPOTHESIS_COLUMNS = ["run", "claim", "statistic", "value", "ci_low", "ci_high", "p_value", "verdict", "detail",
                      "rule", "best_step", "best_chosen_on"]
VERDICTS = ("supported", "not supported", "inconclusive")


@dataclass(frozen=True)
class ClaimRow:
    """One row of the hypothesis table; `rule` names the rule of analysis/rules.py that gave the verdict."""

    run: str
    claim: str
    statistic: str
    value: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    verdict: str = "inconclusive"
    detail: str = ""
    rule: str = ""


def fmt(x, nd: int = 3) -> str:
    """A number for detail text."""
    return "nan" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def well_formatted(df: pd.DataFrame) -> pd.Series:
    """The samples' well_formatted flag, rebuilt as FormatReport defines it when the column is absent."""
    if "well_formatted" in df.columns:
        return df["well_formatted"].astype(bool)
    return df["think_closed"].astype(bool) & (df["boxed"].astype(int) == 1) & ~df["truncated"].astype(bool)


def per_problem(samples: pd.DataFrame, run: str, step: int) -> pd.DataFrame:
    """Per (benchmark, problem_id) at one step: the shares of well-formatted (wf), strictly and leniently correct
    samples, and the sample count n."""
    df = one_sampling(samples, run)
    df = df[df["step"] == step]
    if df.empty:
        return pd.DataFrame(columns=["wf", "strict", "lenient", "n"])
    flat = pd.DataFrame({"benchmark": df["benchmark"], "problem_id": df["problem_id"],
                         "wf": well_formatted(df).astype(float), "strict": df["correct_strict"].astype(float),
                         "lenient": df["correct_lenient"].astype(float), "n": 1.0})
    return flat.groupby(["benchmark", "problem_id"]).agg({"wf": "mean", "strict": "mean", "lenient": "mean",
                                                         "n": "sum"})


def paired(base: pd.DataFrame, best: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The problems both steps answered, in the same order."""
    common = base.index.intersection(best.index)
    return base.loc[common], best.loc[common]


@dataclass(frozen=True)
class PairedChange:
    """best - base over paired problems: mean, the two-sided paired t test, its (1 - 2 alpha) CI, and the one-sided
    p-values against a margin (non-inferiority: H0 change <= -margin; TOST: both sides)."""

    n: int
    diff: float
    p_two_sided: float
    ci_low: float  # (1 - 2 alpha) interval: the one that matches the one-sided tests at alpha
    ci_high: float
    p_noninferior: float
    p_tost: float

    @property
    def testable(self) -> bool:
        return np.isfinite(self.p_two_sided)


def paired_change(x0, x1, margin: float, alpha: float) -> PairedChange:
    """Paired t test (scipy) and TOST (statsmodels ttost_paired) of per-problem values x1 - x0. Needs at least 3
    problems and some variation in the differences; otherwise every p-value is nan (no test)."""
    x0, x1 = np.asarray(x0, float), np.asarray(x1, float)
    n = len(x0)
    diff = float(np.mean(x1 - x0)) if n else math.nan
    if n < 3 or np.ptp(x1 - x0) == 0:
        return PairedChange(n, diff, math.nan, math.nan, math.nan, math.nan, math.nan)
    res = stats.ttest_rel(x1, x0)
    ci = res.confidence_interval(1 - 2 * alpha)
    p_tost, lower, _ = ttost_paired(x1, x0, -margin, margin)
    return PairedChange(n, diff, float(res.pvalue), float(ci.low), float(ci.high), float(lower[1]), float(p_tost))
