"""Nothing lost, shown by equivalence: lenient_kept (rule R6, the task's own accuracy) and knowledge_kept (rule R7,
the retention probes). A rise is never a loss; missing evidence is inconclusive, never "kept"."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from analysis.claim import ClaimRow, fmt, paired, paired_change
from analysis.rules import VerdictRules

Z = stats.norm.ppf


def lenient_kept_claim(run: str, base: pd.DataFrame, best: pd.DataFrame,
                       rules: VerdictRules = VerdictRules()) -> ClaimRow:
    """Rule R6: per-problem lenient accuracy best vs base; supported when non-inferior within accuracy_margin,
    not supported when the (1 - 2 alpha) CI lies wholly below -margin."""
    base, best = paired(base, best)
    m = rules.accuracy_margin
    ch = paired_change(base["lenient"], best["lenient"], m, rules.alpha)
    detail = (f"lenient accuracy {fmt(float(base['lenient'].mean()))} -> {fmt(float(best['lenient'].mean()))} "
              f"(change {fmt(ch.diff)} [{fmt(ch.ci_low)}, {fmt(ch.ci_high)}], {ch.n} problems); non-inferiority p "
              f"{fmt(ch.p_noninferior, 4)} at margin {m}; paired t p {fmt(ch.p_two_sided, 4)}; TOST p "
              f"{fmt(ch.p_tost, 4)}")
    if not ch.testable:
        verdict, detail = "inconclusive", detail + "; too few problems or no variation: no test"
    elif ch.p_noninferior < rules.alpha:
        verdict = "supported"
    elif ch.ci_high < -m:
        verdict, detail = "not supported", "lenient accuracy fell: " + detail
    else:
        verdict = "inconclusive"
    return ClaimRow(run, "lenient_kept", "lenient_pass1_change", ch.diff, ch.ci_low, ch.ci_high,
                    ch.p_noninferior, verdict, detail, "R6")


# ----------------------------------------------------------------------------- retention (R7)

LOWER_IS_BETTER = ("kl", "nll", "ppl", "perplexity", "loss", "bits")


def metric_rule(metric: str, rules: VerdictRules) -> tuple[int, float, str]:
    """(direction of harm, margin, scale) of a retention metric: +1 when a rise is a loss (kl, nll, ppl), -1 when
    a fall is; scale 'absolute' or 'relative' (perplexity, a ratio)."""
    name = metric.lower()
    if name.startswith("kl"):
        return 1, rules.kl_margin, "absolute"
    if name.startswith("nll") or "loss" in name or "bits" in name:
        return 1, rules.nll_margin, "absolute"
    if name.startswith("ppl") or "perplexity" in name:
        return 1, rules.ppl_rel_margin, "relative"
    return -1, rules.retention_margin, "absolute"


def _items(row) -> np.ndarray | None:
    """A retention row's per-item scores (None where the table has none)."""
    v = row.get("items") if hasattr(row, "get") else None
    return None if v is None or (not isinstance(v, (list, tuple, np.ndarray))) or len(v) == 0 else np.asarray(v, float)


def retention_changes(retention: pd.DataFrame, run: str, step: int) -> pd.DataFrame:
    """Per probe and metric: value at base (step 0) and at `step` (or the nearest step retained), the change, and
    its standard error: paired over items when both rows carry the same items (lm-eval probes), else
    sqrt(se0^2 + se1^2), which bounds the paired error from above when item scores correlate positively (the same
    items before and after), so those tests are conservative. `paired` says which; `discordant` counts the items
    whose score changed."""
    r = retention[retention["run"] == run]
    if r.empty or 0 not in set(r["step"]):
        return pd.DataFrame()
    trained = sorted(s for s in r["step"].unique() if s > 0)
    if not trained:
        return pd.DataFrame()
    at = min(trained, key=lambda s: (abs(s - step), s))
    b = r[r["step"] == 0].drop_duplicates(["probe", "metric"]).set_index(["probe", "metric"])
    c = r[r["step"] == at].drop_duplicates(["probe", "metric"]).set_index(["probe", "metric"])
    rows = []
    for key in b.index.intersection(c.index):
        probe, metric = key
        rb, rc = b.loc[key], c.loc[key]
        v0, v1 = float(rb["value"]), float(rc["value"])
        i0, i1 = _items(rb), _items(rc)
        row = {"probe": probe, "metric": metric, "step": at, "base": v0, "ckpt": v1, "diff": v1 - v0,
               "paired": False, "n_items": np.nan, "discordant": np.nan}
        if i0 is not None and i1 is not None and len(i0) == len(i1) >= 3:
            d = i1 - i0
            row |= {"diff": float(d.mean()), "se": float(np.std(d, ddof=1) / math.sqrt(len(d))), "paired": True,
                    "n_items": len(d), "discordant": int(np.sum(d != 0)),
                    "binary": bool(np.isin(np.concatenate([i0, i1]), (0.0, 1.0)).all())}
        else:
            se0 = float(rb["stderr"]) if "stderr" in rb.index else math.nan
            se1 = float(rc["stderr"]) if "stderr" in rc.index else math.nan
            if metric.lower().startswith("kl") and v0 == 0:
                se0 = 0.0  # the base's KL to itself is exactly 0, not an estimate
            row["se"] = math.sqrt(se0 ** 2 + se1 ** 2)
        rows.append(row)
    return pd.DataFrame(rows)


def metric_test(ch: dict, rules: VerdictRules) -> dict:
    """One metric's test: harm = the change in the harmful direction (relative for perplexity); p_kept: one-sided
    H0 harm >= margin; p_lost: H0 harm <= margin; the (1 - 2 alpha) CI of harm."""
    sign, margin, scale = metric_rule(ch["metric"], rules)
    harm = sign * ch["diff"]
    se = ch["se"]
    if scale == "relative":
        harm, se = harm / ch["base"] if ch["base"] else math.nan, se / abs(ch["base"]) if ch["base"] else math.nan
    out = {"harm": harm, "margin": margin, "scale": scale, "sign": sign}
    if ch.get("paired") and ch.get("binary") and se == 0 and scale == "absolute":
        # no item changed its score: |change| <= the share of changed items, whose one-sided Clopper-Pearson
        # bound at alpha (0 of n changed) bounds the harm; kept when that bound is inside the margin
        bound = float(proportion_confint(0, int(ch["n_items"]), alpha=2 * rules.alpha, method="beta")[1])
        kept = bound < margin
        return out | {"p_kept": 0.0 if kept else 1.0, "p_lost": 1.0, "lo": -bound, "hi": bound,
                      "note": f"no item of {int(ch['n_items'])} changed; changed share <= {bound:.3f}"}
    if not (np.isfinite(se) and se > 0 and np.isfinite(harm)):
        return out | {"p_kept": math.nan, "p_lost": math.nan, "lo": math.nan, "hi": math.nan}
    z = Z(1 - rules.alpha)
    return out | {"p_kept": float(stats.norm.cdf((harm - margin) / se)),
                  "p_lost": float(stats.norm.sf((harm - margin) / se)), "lo": harm - z * se, "hi": harm + z * se}


def knowledge_claims(run: str, changes: pd.DataFrame, rules: VerdictRules = VerdictRules()) -> list[ClaimRow]:
    """Rule R7, one row per probe/metric (value: the change in the harmful direction, + = worse): supported when
    p_kept < alpha; not supported when the Holm-adjusted p_lost < alpha (over the run's tested metrics) and the CI
    lies wholly beyond the margin; otherwise inconclusive. ppl is shown, not tested, when the same probe has nll."""
    if changes.empty:
        return []
    tests = [(ch, metric_test(ch, rules)) for ch in changes.to_dict("records")]
    with_nll = {ch["probe"] for ch, _ in tests if ch["metric"].lower().startswith("nll")}

    def shown_only(ch, t) -> str:
        if ch["probe"] in rules.task_probes:
            return "shown, not tested: KL on the task's own prompts is how far RL moved the policy there"
        if t["scale"] == "relative" and ch["probe"] in with_nll:
            return "shown, not tested: ppl follows nll of the same probe"
        return ""

    tested = [i for i, (ch, t) in enumerate(tests) if np.isfinite(t["p_lost"]) and not shown_only(ch, t)]
    adjusted = {}
    if tested:
        reject = multipletests([tests[i][1]["p_lost"] for i in tested], alpha=rules.alpha, method="holm")[0]
        adjusted = dict(zip(tested, reject))
    rows = []
    for i, (ch, t) in enumerate(tests):
        side = "rise" if t["sign"] > 0 else "fall"
        unit = " (relative)" if t["scale"] == "relative" else ""
        paired_text = (f"paired over {int(ch['n_items'])} items ({int(ch['discordant'])} changed)" if ch.get("paired")
                       else "unpaired stderr (conservative)")
        detail = (f"{ch['probe']}/{ch['metric']}: {fmt(ch['base'])} at base -> {fmt(ch['ckpt'])} at step "
                  f"{ch['step']}; a {side} is a loss; margin {t['margin']}{unit}; {100 * (1 - 2 * rules.alpha):.0f}% "
                  f"CI of the harmful change, {paired_text}" + (f"; {t['note']}" if t.get("note") else ""))
        if shown_only(ch, t):
            verdict, detail = "inconclusive", detail + "; " + shown_only(ch, t)
        elif not np.isfinite(t["p_lost"]):
            verdict, detail = "inconclusive", detail + "; no stderr (or 0): no test"
        elif t["p_kept"] < rules.alpha:
            verdict = "supported"
        elif adjusted.get(i) and t["lo"] > t["margin"]:
            verdict, detail = "not supported", detail + "; lost (Holm over the run's metrics)"
        else:
            verdict = "inconclusive"
        rows.append(ClaimRow(run, "knowledge_kept", f"{ch['probe']}/{ch['metric']}: harmful change from base",
                             t["harm"], t["lo"], t["hi"], t["p_kept"], verdict, detail, "R7"))
    return rows


def knowledge_summary(rows: list[ClaimRow]) -> tuple[str, str]:
    """(verdict, reason) of knowledge kept over a run's tested retention rows: supported when every tested metric
    is kept, not supported when one is lost, inconclusive otherwise or with none."""
    tested = [r for r in rows if "shown, not tested" not in r.detail]
    if not tested:
        return "inconclusive", "no retention measured"
    lost = [r.statistic.split(":")[0] for r in tested if r.verdict == "not supported"]
    if lost:
        return "not supported", "knowledge lost: " + ", ".join(lost)
    open_ = [r.statistic.split(":")[0] for r in tested if r.verdict != "supported"]
    if open_:
        return "inconclusive", "knowledge not shown kept: " + ", ".join(open_)
    return "supported", f"knowledge kept on {len(tested)} retention metric(s)"
