"""The format-adaptation hypothesis tests: did RL mostly teach the output format rather than the reasoning?

Reads the store (samples, passk, phases, phase_summary, retention, spectra) and writes the `hypothesis` table
(run, claim, statistic, value, ci_low, ci_high, p_value, verdict, detail) and the `gain_decomposition` table.
Verdicts are "supported", "not supported" or "inconclusive"; each claim's docstring says which is which.

The best checkpoint: when the store holds a held-out benchmark beside the test one (the `selection` table of
`tina-probe dynamics`, else the default pairing lab-probe -> lab-test of analysis/selection.py), the step with the
highest strict pass@1 on the held-out benchmark, and the tests read the test benchmark only. Otherwise the trained
step with the highest strict pass@1 on the same samples that the tests then read; that choice favours the best step
(winner's curse), so strict gains are then optimistic. Every row says which was used (best_step,
best_chosen_on: the held-out benchmark's name, or the test benchmark's own when picked on the test itself).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.phase import best_step, format_transition, main_change, one_sampling
from analysis.selection import best_choice, selection_table
from tina_probe.errors import TinaError
from tina_probe.store import Store

log = logging.getLogger(__name__)

ALPHA = 0.05  # significance level of every test here
SHARE_THRESHOLD = 0.5  # the format part must explain more than half of the strict gain
EQUIV_MARGIN = 0.05  # TOST margin, absolute, on proportion metrics (retention accuracy)
N_BOOT = 2000  # bootstrap resamples over problems
CLAIMS = ("format_first", "gain_decomposition", "mcnemar_strict", "mcnemar_lenient", "knowledge_kept",
          "update_geometry", "format_adaptation")
HYPOTHESIS_COLUMNS = ["run", "claim", "statistic", "value", "ci_low", "ci_high", "p_value", "verdict", "detail",
                      "best_step", "best_chosen_on"]
CROSS_RUN = "lora_vs_full"  # the run label of the claims that compare LoRA runs with full-FT runs
LOWER_IS_BETTER = ("kl", "perplexity", "ppl", "loss", "nll", "bits")  # retention metrics the TOST leaves out
Z = stats.norm.ppf


@dataclass(frozen=True)
class ClaimRow:
    """One row of the hypothesis table."""

    run: str
    claim: str
    statistic: str
    value: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    verdict: str = "inconclusive"
    detail: str = ""


def _f(x: float, nd: int = 3) -> str:
    """A number for detail text."""
    return "nan" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


# ----------------------------------------------------------------------------- per-problem data


def per_problem(samples: pd.DataFrame, run: str, step: int) -> pd.DataFrame:
    """Per (benchmark, problem_id): the shares of well-formatted, strictly correct and leniently correct samples.

    Without a well_formatted column it is rebuilt from think_closed, boxed == 1 and not truncated (the
    FormatReport definition)."""
    df = one_sampling(samples, run)
    df = df[df["step"] == step]
    if df.empty:
        return pd.DataFrame(columns=["wf", "strict", "lenient"])
    if "well_formatted" in df.columns:
        wf = df["well_formatted"].astype(bool)
    else:
        wf = df["think_closed"].astype(bool) & (df["boxed"].astype(int) == 1) & ~df["truncated"].astype(bool)
    flat = pd.DataFrame({"benchmark": df["benchmark"], "problem_id": df["problem_id"], "wf": wf.astype(float),
                         "strict": df["correct_strict"].astype(float),
                         "lenient": df["correct_lenient"].astype(float)})
    return flat.groupby(["benchmark", "problem_id"]).mean()


def paired(base: pd.DataFrame, best: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The problems both steps answered, in the same order."""
    common = base.index.intersection(best.index)
    return base.loc[common], best.loc[common]


# ----------------------------------------------------------------------------- the claims (pure)


def _decomposition_stat(f0, s0, f1, s1, axis=-1):
    """(strict gain, format part, correctness part, format share) of P(strict) = P(wf) * P(correct | wf).

    Shapley split of S1 - S0 = F1*C1 - F0*C0: format part (F1 - F0)(C0 + C1)/2, correctness part
    (C1 - C0)(F0 + F1)/2; they sum to the gain exactly. C = S / F; where nothing was formatted (F = 0) C is
    unknown and takes the other step's value, which credits that step's gain to the format."""
    F0, S0, F1, S1 = (np.mean(x, axis=axis) for x in (f0, s0, f1, s1))
    with np.errstate(invalid="ignore", divide="ignore"):
        C0 = np.where(F0 > 0, S0 / np.where(F0 > 0, F0, 1), np.nan)
        C1 = np.where(F1 > 0, S1 / np.where(F1 > 0, F1, 1), np.nan)
        C0, C1 = np.where(np.isnan(C0), C1, C0), np.where(np.isnan(C1), C0, C1)
        C0, C1 = np.nan_to_num(C0), np.nan_to_num(C1)
        gain = S1 - S0
        fmt = (F1 - F0) * (C0 + C1) / 2
        cor = (C1 - C0) * (F0 + F1) / 2
        share = np.where(gain != 0, fmt / np.where(gain != 0, gain, 1), np.nan)
    return np.stack([gain, fmt, cor, share])


def gain_decomposition(base: pd.DataFrame, best: pd.DataFrame, *, n_boot: int = N_BOOT, seed: int = 0,
                       alpha: float = ALPHA) -> dict:
    """Split the strict pass@1 gain from base to best into a format part and a correctness-given-format part,
    with percentile bootstrap CIs that resample problems (paired across the two steps)."""
    base, best = paired(base, best)
    arrays = [base["wf"].to_numpy(), base["strict"].to_numpy(), best["wf"].to_numpy(), best["strict"].to_numpy()]
    point = _decomposition_stat(*arrays)
    F0, S0, F1, S1 = (float(np.mean(a)) for a in arrays)
    out = {"n_problems": len(base), "format_base": F0, "format_best": F1, "strict_base": S0, "strict_best": S1,
           "cond_base": S0 / F0 if F0 else np.nan, "cond_best": S1 / F1 if F1 else np.nan,
           "gain": float(point[0]), "format_part": float(point[1]), "correct_part": float(point[2]),
           "share": float(point[3])}
    names = ["gain", "format_part", "correct_part", "share"]
    if len(base) < 2:
        return out | {f"{n}_{e}": np.nan for n in names for e in ("low", "high")}
    with warnings.catch_warnings():  # a resample without gain has a nan share; its CI is recomputed below
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap(arrays, _decomposition_stat, paired=True, vectorized=True, n_resamples=n_boot,
                              confidence_level=1 - alpha, method="percentile", rng=np.random.default_rng(seed))
    dist = res.bootstrap_distribution  # shares are nan where a resample has no gain; leave those out
    for i, n in enumerate(names):
        d = dist[i][np.isfinite(dist[i])]
        lo, hi = (np.percentile(d, [100 * alpha / 2, 100 * (1 - alpha / 2)]) if len(d) else (np.nan, np.nan))
        out[f"{n}_low"], out[f"{n}_high"] = float(lo), float(hi)
    return out


def gain_claim(run: str, dec: dict, *, threshold: float = SHARE_THRESHOLD) -> ClaimRow:
    """gain_decomposition: supported when the strict gain is positive (CI low > 0) and the format share's CI lies
    above `threshold`; not supported when the share's CI lies below it; otherwise inconclusive."""
    detail = (f"strict {_f(dec['strict_base'])} -> {_f(dec['strict_best'])} (gain {_f(dec['gain'])} "
              f"[{_f(dec['gain_low'])}, {_f(dec['gain_high'])}]); format part {_f(dec['format_part'])}, "
              f"correct-given-format part {_f(dec['correct_part'])}; P(wf) {_f(dec['format_base'])} -> "
              f"{_f(dec['format_best'])}, P(correct|wf) {_f(dec['cond_base'])} -> {_f(dec['cond_best'])}; "
              f"{dec['n_problems']} problems; threshold {threshold}")
    if not (np.isfinite(dec["gain_low"]) and dec["gain_low"] > 0):
        verdict = "inconclusive"
        detail = "no clear strict gain; " + detail
    elif dec["share_low"] > threshold:
        verdict = "supported"
    elif dec["share_high"] < threshold:
        verdict = "not supported"
    else:
        verdict = "inconclusive"
    return ClaimRow(run, "gain_decomposition", "format_share_of_strict_gain", dec["share"], dec["share_low"],
                    dec["share_high"], math.nan, verdict, detail)


def mcnemar(base_ok: np.ndarray, best_ok: np.ndarray, alpha: float = ALPHA) -> dict:
    """Exact McNemar test of paired binary outcomes, and the difference in proportions with a Wald CI.

    scipy.stats has no McNemar test; the exact one is a binomial test of the discordant pairs (c of b + c
    problems went wrong -> right) against 1/2. The CI is the Wald interval for paired proportions (Agresti,
    Categorical Data Analysis, 10.1)."""
    base_ok, best_ok = np.asarray(base_ok, bool), np.asarray(best_ok, bool)
    n = len(base_ok)
    b = int(np.sum(base_ok & ~best_ok))
    c = int(np.sum(~base_ok & best_ok))
    p = stats.binomtest(c, b + c, 0.5).pvalue if b + c else 1.0
    diff = (c - b) / n if n else math.nan
    se = math.sqrt(max((b + c) - (c - b) ** 2 / n, 0.0)) / n if n else math.nan
    z = Z(1 - alpha / 2)
    return {"n": n, "b": b, "c": c, "diff": diff, "ci_low": diff - z * se, "ci_high": diff + z * se, "p": float(p)}


def mcnemar_claim(run: str, grading: str, base: pd.DataFrame, best: pd.DataFrame, *,
                  alpha: float = ALPHA) -> ClaimRow:
    """mcnemar_<grading>: claim "<grading> accuracy differs between base and best checkpoint".

    A problem counts as solved when most of its samples are correct; supported when the exact McNemar p < alpha,
    not supported otherwise. The detail adds a Wilcoxon signed-rank test on the per-problem accuracies."""
    base, best = paired(base, best)
    x0, x1 = base[grading].to_numpy(), best[grading].to_numpy()
    m = mcnemar(x0 > 0.5, x1 > 0.5, alpha)
    d = x1 - x0
    if np.any(d != 0):
        w_p = float(stats.wilcoxon(d).pvalue)
    else:
        w_p = 1.0  # identical per-problem accuracies: no evidence of a change
    detail = (f"claim: {grading} accuracy differs; majority-correct {_f(float(np.mean(x0 > 0.5)))} -> "
              f"{_f(float(np.mean(x1 > 0.5)))}; discordant {m['b']} lost, {m['c']} gained of {m['n']} problems; "
              f"mean accuracy {_f(float(x0.mean()))} -> {_f(float(x1.mean()))}, Wilcoxon p {w_p:.3g}")
    verdict = "supported" if m["p"] < alpha else "not supported"
    return ClaimRow(run, f"mcnemar_{grading}", "diff_majority_correct", m["diff"], m["ci_low"], m["ci_high"],
                    m["p"], verdict, detail)


def format_first_claim(run: str, phases: pd.DataFrame, curve_status: dict, benchmark: str | None) -> ClaimRow:
    """format_first: the format transition starts before or with the first change in lenient pass@1.

    Both sides are onsets: the format transition is the largest rise of the format curve (a staircase of
    same-sign steps taken whole), and its start is that staircase's first step; the lenient side is the first
    step of its earliest change. value = lenient onset - format onset (>= 0: format first), range from both
    bootstrap ranges. Supported when the range is >= 0, or when the format changed and the lenient curve
    (analysed) did not; not supported when the range is < 0 or the format never rose; inconclusive otherwise,
    or when the curves were not analysed (run `tina-probe phase`)."""
    stat = "lenient_change_minus_format_transition_steps"
    if not curve_status:
        return ClaimRow(run, "format_first", stat, detail="run not in phase_summary (run `tina-probe phase`)")
    fmt = format_transition(phases, run, benchmark)
    if fmt is None:
        analysed = any(curve_status.get(m) in ("changes", "no change") for m in ("format_rate", "format_reward"))
        if not analysed:
            return ClaimRow(run, "format_first", stat, detail="no format curve with enough points")
        return ClaimRow(run, "format_first", stat, verdict="not supported", detail="no format transition (rise)")
    where = (f"format transition ({fmt['source']} {fmt['metric']}, size {_f(fmt['size'])}) starts at step "
             f"{_f(fmt['first_step'], 0)} [{_f(fmt['first_low'], 0)}, {_f(fmt['first_high'], 0)}]"
             + (f", centre {_f(fmt['change_step'], 1)}" if fmt.get("n_changes", 1) > 1 else ""))
    lenient = main_change(phases, run, "pass1_lenient", source="eval", benchmark=benchmark, pick="earliest")
    if lenient is None:
        if curve_status.get("pass1_lenient") == "no change":
            return ClaimRow(run, "format_first", stat, verdict="supported",
                            detail=f"{where}; no lenient pass@1 change point")
        return ClaimRow(run, "format_first", stat, detail=f"{where}; lenient pass@1 curve not analysed")
    lead = lenient["first_step"] - fmt["first_step"]
    lo = lenient["first_low"] - fmt["first_high"]
    hi = lenient["first_high"] - fmt["first_low"]
    verdict = "supported" if lo >= 0 else "not supported" if hi < 0 else "inconclusive"
    detail = (f"{where}; first lenient pass@1 change at step {_f(lenient['first_step'], 0)} "
              f"[{_f(lenient['first_low'], 0)}, {_f(lenient['first_high'], 0)}], size {_f(lenient['size'])}")
    return ClaimRow(run, "format_first", stat, lead, lo, hi, math.nan, verdict, detail)


def tost(diff: float, se: float, margin: float, alpha: float = ALPHA) -> tuple[float, float, float]:
    """Two one-sided z tests of |diff| < margin: (p, low, high) with the (1 - 2 alpha) CI that matches them."""
    if not np.isfinite(se) or se < 0:
        return math.nan, math.nan, math.nan
    if se == 0:
        # a degenerate stderr (e.g. every probe item right before and after, greedy): the change is exact on
        # this item set, so it lies within the margin or not with certainty
        return (0.0 if abs(diff) < margin else 1.0), diff, diff
    p_low = stats.norm.sf((diff + margin) / se)  # H0: diff <= -margin
    p_high = stats.norm.cdf((diff - margin) / se)  # H0: diff >= +margin
    z = Z(1 - alpha)
    return float(max(p_low, p_high)), diff - z * se, diff + z * se


def _proportion_metric(metric: str, values) -> bool:
    """Whether a retention metric is a higher-is-better share in [0, 1] (the TOST margin is absolute)."""
    v = np.asarray(values, dtype=float)
    return not any(t in metric.lower() for t in LOWER_IS_BETTER) and bool(np.all((v >= 0) & (v <= 1)))


def retention_changes(retention: pd.DataFrame, run: str, step: int) -> pd.DataFrame:
    """Per probe and proportion metric: value at base (step 0), at `step` (or the nearest step retained), and the
    change with its standard error."""
    r = retention[retention["run"] == run]
    if r.empty or 0 not in set(r["step"]):
        return pd.DataFrame()
    trained = sorted(s for s in r["step"].unique() if s > 0)
    if not trained:
        return pd.DataFrame()
    at = min(trained, key=lambda s: (abs(s - step), s))
    b = r[r["step"] == 0].set_index(["probe", "metric"])
    c = r[r["step"] == at].set_index(["probe", "metric"])
    common = b.index.intersection(c.index)
    rows = []
    for probe, metric in common:
        v0, v1 = float(b.loc[(probe, metric), "value"]), float(c.loc[(probe, metric), "value"])
        if not _proportion_metric(metric, [v0, v1]):
            continue
        se0 = float(b.loc[(probe, metric), "stderr"]) if "stderr" in b.columns else math.nan
        se1 = float(c.loc[(probe, metric), "stderr"]) if "stderr" in c.columns else math.nan
        rows.append({"probe": probe, "metric": metric, "step": at, "base": v0, "ckpt": v1, "diff": v1 - v0,
                     "se": math.sqrt(se0 ** 2 + se1 ** 2)})
    return pd.DataFrame(rows)


def knowledge_claims(run: str, changes: pd.DataFrame, *, margin: float = EQUIV_MARGIN,
                     alpha: float = ALPHA) -> list[ClaimRow]:
    """knowledge_kept per probe/metric: the change from base lies within +-margin (TOST). Supported when the TOST
    p < alpha; not supported when the (1 - 2 alpha) CI lies wholly outside the margin; otherwise inconclusive."""
    rows = []
    for ch in changes.to_dict("records"):
        p, lo, hi = tost(ch["diff"], ch["se"], margin, alpha)
        if np.isfinite(p) and p < alpha:
            verdict = "supported"
        elif np.isfinite(lo) and (lo > margin or hi < -margin):
            verdict = "not supported"
        else:
            verdict = "inconclusive"
        detail = (f"{ch['probe']}/{ch['metric']}: {_f(ch['base'])} at base -> {_f(ch['ckpt'])} at step "
                  f"{ch['step']}; margin +-{margin}; {100 * (1 - 2 * alpha):.0f}% CI"
                  + ("" if np.isfinite(ch["se"]) else "; no stderr, no test"))
        rows.append(ClaimRow(run, "knowledge_kept", f"{ch['probe']}/{ch['metric']}: change from base", ch["diff"],
                             lo, hi, p, verdict, detail))
    return rows


def knowledge_lora_vs_full(changes: dict[str, pd.DataFrame], kinds: dict[str, str], *,
                           alpha: float = ALPHA) -> list[ClaimRow]:
    """knowledge_kept across kinds, per probe/metric: claim "LoRA loses less than full FT". The mean change of
    the LoRA runs minus that of the full runs, z test on the pooled standard errors: supported when p < alpha
    and LoRA's change is larger; not supported when p < alpha the other way; otherwise inconclusive."""
    frames = [c.assign(kind=kinds.get(run)) for run, c in changes.items() if not c.empty]
    if not frames:
        return []
    df = pd.concat(frames, ignore_index=True)
    rows = []
    for (probe, metric), g in df.groupby(["probe", "metric"], sort=True):
        lora, full = g[g["kind"] == "lora"], g[g["kind"] == "full"]
        if lora.empty or full.empty:
            continue
        diff = lora["diff"].mean() - full["diff"].mean()
        se = math.sqrt((lora["se"] ** 2).sum() / len(lora) ** 2 + (full["se"] ** 2).sum() / len(full) ** 2)
        if np.isfinite(se) and se > 0:
            p = float(2 * stats.norm.sf(abs(diff) / se))
            z = Z(1 - alpha / 2)
            lo, hi = diff - z * se, diff + z * se
        else:
            p = lo = hi = math.nan
        verdict = ("supported" if p < alpha and diff > 0 else "not supported" if p < alpha and diff < 0
                   else "inconclusive")
        detail = (f"claim: LoRA loses less {probe}/{metric} than full FT; mean change LoRA "
                  f"{_f(lora['diff'].mean())} ({len(lora)} runs), full {_f(full['diff'].mean())} ({len(full)} runs)")
        rows.append(ClaimRow(CROSS_RUN, "knowledge_kept", f"{probe}/{metric}: change lora - full", diff, lo, hi, p,
                             verdict, detail))
    return rows


def geometry_claims(spectra: pd.DataFrame, steps: dict[str, int], *, n_boot: int = N_BOOT, seed: int = 0,
                    alpha: float = ALPHA) -> list[ClaimRow]:
    """update_geometry: LoRA vs full-FT update matrices at each run's best (else last) checkpoint, pooled over
    layers and modules. Claims: LoRA has more intruder dimensions, and a lower energy_rank90. Mann-Whitney U
    (two-sided) p and a bootstrap CI of the difference in medians; supported when p < alpha in the claimed
    direction, not supported when p < alpha the other way, otherwise inconclusive. Modules of one run are not
    independent samples, so the p-values are optimistic."""
    if spectra.empty or "kind" not in spectra.columns:
        return []
    picked = []
    for run, g in spectra[spectra["kind"].isin(["lora", "full"])].groupby("run", sort=True):
        want = steps.get(run)
        step = want if want in set(g["step"]) else g["step"].max()
        picked.append(g[g["step"] == step])
    if not picked:
        return []
    df = pd.concat(picked, ignore_index=True)
    if "layer" in df.columns:  # the same modules on both sides: full FT's vocabulary matrices (layer -1) have no
        df = df[df["layer"] >= 0]  # LoRA counterpart in the usual recipes
    rows = []
    for column, sign, claim_text in (("intruders", 1, "LoRA has more intruder dimensions"),
                                     ("energy_rank90", -1, "LoRA updates have a lower energy_rank90")):
        if column not in df.columns:
            continue
        a = df.loc[df["kind"] == "lora", column].dropna().to_numpy(dtype=float)
        b = df.loc[df["kind"] == "full", column].dropna().to_numpy(dtype=float)
        if len(a) < 2 or len(b) < 2:
            continue
        p = float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
        diff = float(np.median(a) - np.median(b))
        res = stats.bootstrap((a, b), lambda x, y, axis=-1: np.median(x, axis=axis) - np.median(y, axis=axis),
                              vectorized=True, n_resamples=n_boot, confidence_level=1 - alpha, method="percentile",
                              rng=np.random.default_rng(seed))
        right = np.sign(diff) == sign
        verdict = "supported" if p < alpha and right else "not supported" if p < alpha else "inconclusive"
        detail = (f"claim: {claim_text}; median LoRA {_f(float(np.median(a)), 2)} ({len(a)} modules), full "
                  f"{_f(float(np.median(b)), 2)} ({len(b)} modules); Mann-Whitney U two-sided")
        rows.append(ClaimRow(CROSS_RUN, "update_geometry", f"{column}: median lora - full", diff,
                             float(res.confidence_interval.low), float(res.confidence_interval.high), p, verdict,
                             detail))
    return rows


def format_adaptation_claim(run: str, rows: dict[str, ClaimRow], *, knowledge: list[ClaimRow] = (),
                            alpha: float = ALPHA) -> ClaimRow:
    """format_adaptation, the overall verdict of a run: RL mostly taught the format and kept the knowledge.

    supported     <=> format_first is supported (the format transition starts at or before any lenient change),
                      gain_decomposition is supported (strict gain > 0, format share CI above the threshold), and
                      nothing was lost: lenient accuracy did not fall significantly (McNemar) and no
                      knowledge_kept claim is "not supported". A lenient rise is allowed: its share of the strict
                      gain is the correctness part that the decomposition already weighs.
    not supported <=> gain_decomposition is not supported (the gain is mostly correctness given format), or
                      format_first is not supported (lenient accuracy clearly changed first, or the format never
                      rose), or knowledge was lost (lenient fell significantly, or a retention TOST says so).
    inconclusive  otherwise (including missing pieces)."""
    ff, gd = rows.get("format_first"), rows.get("gain_decomposition")
    ml, ms = rows.get("mcnemar_lenient"), rows.get("mcnemar_strict")

    def moved(r, sign):
        return r is not None and np.isfinite(r.p_value) and r.p_value < alpha and np.sign(r.value) == sign

    lost = [k.statistic.split(":")[0] for k in knowledge if k.verdict == "not supported"]
    if moved(ml, -1):
        lost.append("lenient accuracy")
    parts = {k: (r.verdict if r else "missing") for k, r in
             (("format_first", ff), ("gain_decomposition", gd), ("mcnemar_lenient", ml), ("mcnemar_strict", ms))}
    detail = "; ".join(f"{k} {v}" for k, v in parts.items())
    detail += f"; knowledge lost: {', '.join(lost)}" if lost else (
        f"; no knowledge loss on {len(knowledge)} retention metric(s)" if knowledge else "; no retention measured")
    if ff and gd and ff.verdict == "supported" and gd.verdict == "supported" and not lost:
        verdict = "supported"
    elif (gd and gd.verdict == "not supported") or (ff and ff.verdict == "not supported") or lost:
        verdict = "not supported"
    else:
        verdict = "inconclusive"
    value, lo, hi = (gd.value, gd.ci_low, gd.ci_high) if gd else (math.nan, math.nan, math.nan)
    return ClaimRow(run, "format_adaptation", "format_share_of_strict_gain", value, lo, hi, math.nan, verdict,
                    detail)


# ----------------------------------------------------------------------------- the table


def _passk_from_samples(samples: pd.DataFrame) -> pd.DataFrame:
    """Strict pass@1 per run, step and benchmark from samples (mean over problems of the per-problem share)."""
    per = samples.groupby(["run", "step", "benchmark", "problem_id"])["correct_strict"].mean().reset_index()
    out = per.groupby(["run", "step", "benchmark"])["correct_strict"].mean().reset_index(name="value")
    return out.assign(k=1, grading="strict")


def _curve_status(summary: pd.DataFrame, run: str) -> dict[str, str]:
    """metric -> "changes" | "no change" | "too short" for a run, from phase_summary (eval metrics without the
    benchmark suffix); empty when the run was not analysed."""
    if summary.empty or "run" not in summary.columns or run not in set(summary["run"]):
        return {}
    row = summary[summary["run"] == run].iloc[0]
    out: dict[str, str] = {}
    for col, code in (("metrics_too_short", "too short"), ("metrics_unchanged", "no change"),
                      ("metrics_changed", "changes")):  # a later, stronger status wins across benchmarks
        for name in str(row.get(col) or "").split(", "):
            if name:
                out[name.split("[")[0]] = code
    return out


def _run_kinds(*tables: pd.DataFrame) -> dict[str, str]:
    """run -> lora | full, from the kind of its trained steps in any table."""
    kinds: dict[str, str] = {}
    for t in tables:
        if t.empty or not {"run", "kind"} <= set(t.columns):
            continue
        for run, kind in t[t["kind"].isin(["lora", "full"])][["run", "kind"]].drop_duplicates().itertuples(False):
            kinds.setdefault(run, kind)
    return kinds


def hypothesis_tables(samples: pd.DataFrame, passk: pd.DataFrame, phases: pd.DataFrame, summary: pd.DataFrame,
                      retention: pd.DataFrame, spectra: pd.DataFrame, *, margin: float = EQUIV_MARGIN,
                      alpha: float = ALPHA, n_boot: int = N_BOOT, seed: int = 0,
                      selection: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All claims for all runs: (hypothesis table, gain_decomposition table). Pure over the store's tables.

    `selection` (the dynamics command's table) names each run's held-out choice of best checkpoint; without it
    the default pairing of benchmarks decides (analysis/selection.py), and without a pair the test's own max."""
    pk = passk if not passk.empty else (_passk_from_samples(samples) if not samples.empty else passk)
    if selection is None or selection.empty:
        selection = selection_table(pk)
    runs = sorted({*(pk["run"] if not pk.empty else []), *(samples["run"] if not samples.empty else []),
                   *(phases["run"] if not phases.empty else [])})
    kinds = _run_kinds(samples, passk, retention, spectra)
    rows: list[ClaimRow] = []
    decomp, changes, bests, chosen_on = [], {}, {}, {}
    for run in runs:
        choice = best_choice(pk, run, selection)
        if choice is not None:
            step, bench, chosen_on[run] = choice.step, choice.benchmark, choice.chosen_on
            log.info("run %s: best checkpoint %d chosen on %s, tested on %s", run, step, choice.chosen_on, bench)
        else:
            step, _, bench = best_step(pk, run)
            chosen_on[run] = bench
        run_samples = samples if choice is None or samples.empty else samples[samples["benchmark"] == bench]
        found: dict[str, ClaimRow] = {}
        found["format_first"] = format_first_claim(run, phases, _curve_status(summary, run), bench)
        if step is None:
            log.warning("run %s: no strict pass@1 of a trained checkpoint; accuracy claims skipped", run)
        else:
            bests[run] = step
            if samples.empty:
                log.warning("run %s: no samples table (run `tina-probe eval`); per-problem claims skipped", run)
            else:
                base_pp, best_pp = per_problem(run_samples, run, 0), per_problem(run_samples, run, step)
                if base_pp.empty or best_pp.empty:
                    log.warning("run %s: no samples at step 0 or %d; per-problem claims skipped", run, step)
                else:
                    dec = gain_decomposition(base_pp, best_pp, n_boot=n_boot, seed=seed, alpha=alpha)
                    decomp.append({"run": run, "benchmark": bench, "base_step": 0, "best_step": step,
                                   "best_chosen_on": chosen_on[run]} | dec)
                    found["gain_decomposition"] = gain_claim(run, dec)
                    for grading in ("strict", "lenient"):
                        found[f"mcnemar_{grading}"] = mcnemar_claim(run, grading, base_pp, best_pp, alpha=alpha)
        rows += list(found.values())
        kept: list[ClaimRow] = []
        if not retention.empty and step is not None:
            changes[run] = retention_changes(retention, run, step)
            kept = knowledge_claims(run, changes[run], margin=margin, alpha=alpha)
            rows += kept
        rows.append(format_adaptation_claim(run, found, knowledge=kept, alpha=alpha))
    rows += knowledge_lora_vs_full(changes, kinds, alpha=alpha)
    rows += geometry_claims(spectra, bests, n_boot=n_boot, seed=seed, alpha=alpha)
    hyp = pd.DataFrame([asdict(r) for r in rows], columns=HYPOTHESIS_COLUMNS[:-2])
    hyp["best_step"] = hyp["run"].map(bests).astype(float)  # nan for the cross-run rows
    hyp["best_chosen_on"] = hyp["run"].map(chosen_on)
    return hyp, pd.DataFrame(decomp)


def run_hypothesis(out: Path, *, margin: float = EQUIV_MARGIN, alpha: float = ALPHA, n_boot: int = N_BOOT,
                   seed: int = 0) -> pd.DataFrame:
    """`tina-probe hypothesis`: read the store at `out`, write hypothesis and gain_decomposition tables."""
    store = Store(out)
    tables = {t: store.read(t) for t in ("samples", "passk", "phases", "phase_summary", "retention", "spectra",
                                         "selection")}
    if tables["samples"].empty and tables["passk"].empty and tables["phases"].empty:
        raise TinaError(f"{out}: no samples, passk or phases table (run `tina-probe eval` and `tina-probe phase`)")
    for name, cmd in (("phases", "phase"), ("retention", "retention"), ("spectra", "spectra")):
        if not store.table_path(name).exists():  # written but empty (e.g. no change point found) is no warning
            log.warning("%s: no %s table; run `tina-probe %s` for its claims", out, name, cmd)
    hyp, decomp = hypothesis_tables(tables["samples"], tables["passk"], tables["phases"], tables["phase_summary"],
                                    tables["retention"], tables["spectra"], margin=margin, alpha=alpha,
                                    n_boot=n_boot, seed=seed, selection=tables["selection"])
    store.write("hypothesis", hyp)
    store.write("gain_decomposition", decomp)
    return hyp
