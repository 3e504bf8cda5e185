"""G-Pass@k_tau (Liu et al. 2024, "Are Your LLMs Capable of Stable Reasoning?", arXiv 2412.13147): stability of
correctness. With c correct of n samples of a problem, it is the chance that at least ceil(tau * k) of k samples drawn
without replacement are correct: sum_{j >= ceil(tau k)} C(c, j) C(n - c, k - j) / C(n, k), a hypergeometric tail
(scipy.stats.hypergeom). tau -> 0 gives pass@k, tau = 1 asks all k correct; the paper reports tau in (0, 1].
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from tina_probe.passk import CORRECT_COLS, GROUP_COLS, per_k_counts, ratio_ci

TAUS = (0.5, 0.75, 1.0)
GPASSK_COLUMNS = [*GROUP_COLS, "grading", "k", "tau", "n", "value", "ci_low", "ci_high", "n_problems"]


def needed_correct(k: int, tau: float) -> int:
    """ceil(tau * k), with tau * k rounded first so that 0.7 * 10 asks 7, not 8 (float error)."""
    return max(1, math.ceil(round(tau * k, 9)))


def g_pass_at_k(n: int, c: int, k: int, tau: float) -> float:
    """G-Pass@k_tau of one problem with c correct of n samples: P(X >= ceil(tau k)), X ~ Hypergeom(n, c, k)."""
    if not (n >= 1 and 0 <= c <= n and 1 <= k <= n and 0 < tau <= 1):
        raise ValueError(f"g_pass_at_k: need 1 <= k <= n, 0 <= c <= n, 0 < tau <= 1; got n={n}, c={c}, k={k}, "
                         f"tau={tau}")
    return float(stats.hypergeom.sf(needed_correct(k, tau) - 1, n, c, k))


def gpassk_table(samples: pd.DataFrame, group_cols: Sequence[str] = (*GROUP_COLS, "sampling"),
                 correct_cols: Mapping[str, str] = CORRECT_COLS, taus: Sequence[float] = TAUS, n_boot: int = 1000,
                 seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Mean G-Pass@k_tau over problems per group, grading, k (as passk: powers of two up to n, and n) and tau,
    with percentile bootstrap CIs over problems; problems with fewer than k samples are left out of that k."""
    group_cols = [c for c in group_cols if c in samples.columns]
    rows = []
    for key, grading, k, ns, cs in per_k_counts(samples, group_cols, correct_cols):
        for tau in taus:
            values = stats.hypergeom.sf(needed_correct(k, tau) - 1, ns, cs, k).astype(float)
            value, lo, hi = ratio_ci(values, np.ones_like(values), n_boot=n_boot, seed=seed, alpha=alpha)
            rows.append({**key, "grading": grading, "k": k, "tau": tau, "n": int(ns.min()), "value": value,
                         "ci_low": lo, "ci_high": hi, "n_problems": len(ns)})
    columns = group_cols + [c for c in GPASSK_COLUMNS if c not in GROUP_COLS]
    return pd.DataFrame(rows, columns=columns)
