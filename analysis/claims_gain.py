"""gain_decomposition (rule R4) and strict_gain (rule R5): how much of the strict pass@1 gain from base to best is
the format, and is there a gain at all. Pure over per-problem shares (analysis/claim.per_problem)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from analysis.claim import ClaimRow, fmt, paired, paired_change
from analysis.rules import VerdictRules

STATISTIC = "format_share_of_strict_gain"


def decomposition_stat(f0, s0, l0, f1, s1, l1, *, lenient_c: bool, threshold: float, axis=-1):
    """(gain, format part, correctness part, share, D) of the strict gain, rule R4.

    Shapley split of F1 C1 - F0 C0: format part (F1 - F0)(C0 + C1)/2, correctness part (C1 - C0)(F0 + F1)/2.
    C = S / F, or lenient accuracy L when `lenient_c` (the base rarely formats, so S0 / F0 is not estimable); a
    resample with no formatted sample at a step reads C there as L too. D = format part - threshold * (format part
    + correctness part): D > 0 <=> the format carries more than `threshold` of the gain."""
    F0, S0, L0, F1, S1, L1 = (np.mean(x, axis=axis) for x in (f0, s0, l0, f1, s1, l1))
    with np.errstate(invalid="ignore", divide="ignore"):
        if lenient_c:
            C0, C1 = L0, L1
        else:
            C0 = np.where(F0 > 0, S0 / np.where(F0 > 0, F0, 1), L0)
            C1 = np.where(F1 > 0, S1 / np.where(F1 > 0, F1, 1), L1)
        fmt_part = (F1 - F0) * (C0 + C1) / 2
        cor_part = (C1 - C0) * (F0 + F1) / 2
        total = fmt_part + cor_part
        share = np.where(total != 0, fmt_part / np.where(total != 0, total, 1), np.nan)
        d = fmt_part - threshold * total
    return np.stack([S1 - S0, fmt_part, cor_part, share, d])


NAMES = ("gain", "format_part", "correct_part", "share", "d")


def gain_decomposition(base: pd.DataFrame, best: pd.DataFrame, rules: VerdictRules = VerdictRules(), *,
                       seed: int = 0) -> dict:
    """Rule R4's numbers with percentile bootstrap CIs ((1 - 2 alpha), matching one-sided decisions at alpha)
    resampling problems, paired across the two steps."""
    base, best = paired(base, best)
    formatted_base = int(round(float((base["wf"] * base["n"]).sum()))) if "n" in base.columns else \
        int(round(float(base["wf"].sum())))
    lenient_c = formatted_base < rules.min_formatted_base
    arrays = [base["wf"].to_numpy(), base["strict"].to_numpy(), base["lenient"].to_numpy(),
              best["wf"].to_numpy(), best["strict"].to_numpy(), best["lenient"].to_numpy()]
    kw = {"lenient_c": lenient_c, "threshold": rules.share_threshold}
    point = decomposition_stat(*arrays, **kw)
    F0, S0, L0, F1, S1, L1 = (float(np.mean(a)) if len(a) else math.nan for a in arrays)
    out = {"n_problems": len(base), "formatted_base_samples": formatted_base,
           "conditional": "lenient accuracy" if lenient_c else "correct given formatted",
           "format_base": F0, "format_best": F1, "strict_base": S0, "strict_best": S1, "lenient_base": L0,
           "lenient_best": L1, "cond_base": L0 if lenient_c else (S0 / F0 if F0 else np.nan),
           "cond_best": L1 if lenient_c else (S1 / F1 if F1 else np.nan)}
    out |= {n: float(v) for n, v in zip(NAMES, point)}
    if len(base) < 3:
        return out | {f"{n}_{e}": np.nan for n in NAMES for e in ("low", "high")}
    with warnings.catch_warnings():  # a resample without gain has a nan share; its interval leaves those out
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap(arrays, lambda *a, axis=-1: decomposition_stat(*a, axis=axis, **kw), paired=True,
                              vectorized=True, n_resamples=rules.n_boot, confidence_level=1 - 2 * rules.alpha,
                              method="percentile", rng=np.random.default_rng(seed))
    dist = res.bootstrap_distribution
    tail = 100 * rules.alpha
    for i, n in enumerate(NAMES):
        d = dist[i][np.isfinite(dist[i])]
        lo, hi = np.percentile(d, [tail, 100 - tail]) if len(d) else (np.nan, np.nan)
        out[f"{n}_low"], out[f"{n}_high"] = float(lo), float(hi)
    return out


def gain_claim(run: str, dec: dict, rules: VerdictRules = VerdictRules()) -> ClaimRow:
    """Rule R4: supported when the gain's and D's intervals lie above 0; not supported when the gain's lies above 0
    and D's below (correctness carries the gain); otherwise inconclusive."""
    detail = (f"strict {fmt(dec['strict_base'])} -> {fmt(dec['strict_best'])} (gain {fmt(dec['gain'])} "
              f"[{fmt(dec['gain_low'])}, {fmt(dec['gain_high'])}]); format part {fmt(dec['format_part'])}, "
              f"correctness part {fmt(dec['correct_part'])}; P(wf) {fmt(dec['format_base'])} -> "
              f"{fmt(dec['format_best'])}; C = {dec['conditional']}: {fmt(dec['cond_base'])} -> "
              f"{fmt(dec['cond_best'])}; {dec['n_problems']} problems, {dec['formatted_base_samples']} formatted "
              f"base samples (C is read as lenient accuracy below {rules.min_formatted_base}); threshold "
              f"{rules.share_threshold}; {100 * (1 - 2 * rules.alpha):.0f}% bootstrap intervals")
    if not np.isfinite(dec.get("gain_low", np.nan)):
        verdict, detail = "inconclusive", f"too few problems ({dec['n_problems']}) for an interval; " + detail
    elif dec["gain_low"] <= 0:
        verdict, detail = "inconclusive", "no clear strict gain; " + detail
    elif dec["d_low"] > 0:
        verdict = "supported"
    elif dec["d_high"] < 0:
        verdict, detail = "not supported", "correctness carries the gain; " + detail
    else:
        verdict = "inconclusive"
    return ClaimRow(run, "gain_decomposition", STATISTIC, dec["share"], dec.get("share_low", np.nan),
                    dec.get("share_high", np.nan), np.nan, verdict, detail, "R4")


def strict_gain_claim(run: str, base: pd.DataFrame, best: pd.DataFrame,
                      rules: VerdictRules = VerdictRules()) -> ClaimRow:
    """Rule R5: paired t test of per-problem strict accuracy; supported when the two-sided (1 - alpha) CI lies above
    0, not supported when it lies below accuracy_margin, otherwise (or untestable) inconclusive. Two-sided, as a
    claim of superiority is made by convention: at zero true gain it is wrong in alpha / 2 of series, where a
    one-sided test at alpha would be wrong in alpha itself, i.e. at the calibration goal's bound (bench_verdicts)."""
    base, best = paired(base, best)
    ch = paired_change(base["strict"], best["strict"], rules.accuracy_margin, rules.alpha / 2)
    detail = (f"strict accuracy {fmt(float(base['strict'].mean()))} -> {fmt(float(best['strict'].mean()))} "
              f"(change {fmt(ch.diff)}, {100 * (1 - rules.alpha):.0f}% CI [{fmt(ch.ci_low)}, {fmt(ch.ci_high)}], "
              f"paired t p {fmt(ch.p_two_sided, 4)}, "
              f"{ch.n} problems)")
    if not ch.testable:
        verdict, detail = "inconclusive", detail + "; too few problems or no variation: no test"
    elif ch.ci_low > 0:
        verdict = "supported"
    elif ch.ci_high < rules.accuracy_margin:
        verdict, detail = "not supported", detail + f"; any gain is below {rules.accuracy_margin}"
    else:
        verdict = "inconclusive"
    return ClaimRow(run, "strict_gain", "strict_pass1_change", ch.diff, ch.ci_low, ch.ci_high, ch.p_two_sided,
                    verdict, detail, "R5")
