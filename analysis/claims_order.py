"""format_first (rule R3 of analysis/rules.py): does the format transition start before lenient accuracy moves?

Reads the phases of the run's eval curves on its test benchmark (format_rate and pass1_lenient, both with the
noise of rule R2) and, where change points cannot decide, the per-problem samples."""

from __future__ import annotations

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from analysis.claim import ClaimRow, fmt, paired, paired_change, per_problem
from analysis.changepoints import PRIMARY_METHOD
from analysis.transitions import main_change, merge_staircase
from analysis.rules import VerdictRules

STATISTIC = "lenient_change_minus_format_transition_steps"


def _window(samples: pd.DataFrame, run: str, steps) -> pd.DataFrame:
    """Per-problem shares pooled over several steps (a problem's mean over the window's steps)."""
    frames = [per_problem(samples, run, int(s)) for s in steps]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=["wf", "strict", "lenient"])
    return pd.concat(frames).groupby(level=[0, 1]).mean()


def _no_rise(run: str, samples: pd.DataFrame, best_step: int | None, why: str, rules: VerdictRules) -> ClaimRow:
    """No format transition found: not supported only when the format change base -> best is shown to stay below
    min_rise (its (1 - 2 alpha) CI's top under it); otherwise inconclusive."""
    if best_step is None or samples is None or samples.empty:
        return ClaimRow(run, "format_first", STATISTIC, detail=f"{why}; no per-problem samples to bound the format "
                        "change", rule="R3")
    b0, b1 = paired(per_problem(samples, run, 0), per_problem(samples, run, best_step))
    formatted, n = float((b0["wf"] * b0["n"]).sum()), float(b0["n"].sum())
    if n:
        low = float(proportion_confint(round(formatted), round(n), alpha=2 * rules.alpha, method="wilson")[0])
        if low > 1 - rules.min_rise:  # the base already formats: no room left for a rise of min_rise
            return ClaimRow(run, "format_first", STATISTIC, formatted / n, low, np.nan, np.nan, "not supported",
                            f"the format did not rise: {why}; the base already formats {formatted / n:.3f} of "
                            f"{int(n)} samples (Wilson lower bound {low:.3f} > 1 - min rise {rules.min_rise})", "R3")
    ch = paired_change(b0["wf"], b1["wf"], rules.min_rise, rules.alpha)
    text = (f"{why}; format rate {fmt(float(b0['wf'].mean()))} -> {fmt(float(b1['wf'].mean()))} at step "
            f"{best_step} (change {fmt(ch.diff)} [{fmt(ch.ci_low)}, {fmt(ch.ci_high)}], {ch.n} problems); "
            f"min rise {rules.min_rise}")
    if ch.testable and ch.ci_high < rules.min_rise:
        return ClaimRow(run, "format_first", STATISTIC, ch.diff, ch.ci_low, ch.ci_high, ch.p_two_sided,
                        "not supported", "the format did not rise: " + text, "R3")
    return ClaimRow(run, "format_first", STATISTIC, ch.diff, ch.ci_low, ch.ci_high, ch.p_two_sided,
                    "inconclusive", text, "R3")


def first_lenient_move(phases: pd.DataFrame, run: str, benchmark: str | None, margin: float) -> dict | None:
    """The earliest lenient pass@1 transition (a staircase of same-sign change points, phase.merge_staircase) whose
    size reaches `margin`: a smaller change lies within the equivalence margin, so it does not count as lenient
    accuracy moving (a -0.008 step on a 98% curve is a change point, not a change of what the model knows)."""
    df = phases[(phases["run"] == run) & (phases["metric"] == "pass1_lenient") & (phases["source"] == "eval")] \
        if phases is not None and not phases.empty else pd.DataFrame()
    if not df.empty and "method" in df.columns:
        df = df[df["method"] == PRIMARY_METHOD]
    if benchmark is not None and not df.empty:
        df = df[df["benchmark"] == benchmark]
    moves = [t for t in (merge_staircase(df) if not df.empty else []) if abs(t["size"]) >= margin]
    return min(moves, key=lambda t: t["first_step"]) if moves else None


def _moved(confirm: pd.DataFrame, run: str, steps: list, rules: VerdictRules) -> tuple:
    """Paired changes base -> window (steps pooled per problem) of the format rate and lenient accuracy."""
    b0, b1 = paired(per_problem(confirm, run, 0), _window(confirm, run, steps))
    return (paired_change(b0["wf"], b1["wf"], rules.accuracy_margin, rules.alpha),
            paired_change(b0["lenient"], b1["lenient"], rules.accuracy_margin, rules.alpha), b0, b1)


def format_first_claim(run: str, phases: pd.DataFrame, status: dict, benchmark: str | None,
                       samples: pd.DataFrame | None, best_step: int | None,
                       rules: VerdictRules = VerdictRules(), confirm: pd.DataFrame | None = None,
                       confirm_on: str | None = None) -> ClaimRow:
    """Rule R3. `status`: eval metric -> (status, n_points, min_points) on the test benchmark, from `phase`.
    The change points come from the test benchmark's curves; the order they suggest is confirmed by paired tests
    on `confirm` (the held-out benchmark's samples: independent of the data that placed the change points),
    else on `samples` themselves (flagged: then the confirmation reuses the data that placed them)."""
    fs = status.get("format_rate")
    if fs is None:
        return ClaimRow(run, "format_first", STATISTIC, detail="no eval format curve analysed (run `tina-probe "
                        "eval`, then `tina-probe phase`)", rule="R0")
    code, n_points, min_points = fs
    if code == "too short":
        return ClaimRow(run, "format_first", STATISTIC, detail=f"{n_points} eval points; change points need "
                        f"{min_points}", rule="R0")
    rise = main_change(phases, run, "format_rate", source="eval", benchmark=benchmark, direction=1)
    if rise is None or rise["size"] < rules.min_rise:
        why = ("no format transition (rise) on the eval curve" if rise is None else
               f"the largest format rise ({fmt(rise['size'])}) is below min rise {rules.min_rise}")
        return _no_rise(run, samples, best_step, why, rules)
    f0, f_lo, f_hi = rise["first_step"], rise["first_low"], rise["first_high"]
    where = (f"format transition (eval format_rate, size {fmt(rise['size'])}) starts at step {fmt(f0, 0)} "
             f"[{fmt(f_lo, 0)}, {fmt(f_hi, 0)}]")
    lenient = first_lenient_move(phases, run, benchmark, rules.accuracy_margin)
    if lenient is None and status.get("pass1_lenient", ("",))[0] not in ("no change", "changes"):
        return ClaimRow(run, "format_first", STATISTIC, detail=f"{where}; lenient pass@1 curve not analysed",
                        rule="R0")
    if confirm is None or confirm.empty:
        confirm, confirm_on = samples, f"{benchmark} itself (no held-out benchmark: optimistic)"
    steps = sorted(int(s) for s in confirm.loc[confirm["run"] == run, "step"].unique()) \
        if confirm is not None and not confirm.empty else []
    where += f"; confirmed on {confirm_on}"
    lead = lo = hi = np.nan
    if lenient is not None:
        lead = lenient["first_step"] - f0
        lo, hi = lenient["first_low"] - f_hi, lenient["first_high"] - f_lo
        where += (f"; first lenient pass@1 change at step {fmt(lenient['first_step'], 0)} "
                  f"[{fmt(lenient['first_low'], 0)}, {fmt(lenient['first_high'], 0)}], size {fmt(lenient['size'])}")
        if hi < 0:
            # against: the lenient change lies wholly before the format onset, and on the steps between, lenient
            # accuracy differs from the base's while the format rate has not yet risen by min_rise
            between = [s for s in steps if lenient["first_high"] <= s < f_lo and s > 0]
            if not between:
                return ClaimRow(run, "format_first", STATISTIC, lead, lo, hi, np.nan, "inconclusive", where +
                                "; no checkpoint between the lenient change and the format onset", "R3")
            fc, lc, _, _ = _moved(confirm, run, between, rules)
            text = (f"{where}; steps {between[0]}-{between[-1]} vs base: lenient {fmt(lc.diff)} [{fmt(lc.ci_low)}, "
                    f"{fmt(lc.ci_high)}], format {fmt(fc.diff)} [{fmt(fc.ci_low)}, {fmt(fc.ci_high)}]")
            moved = lc.testable and (lc.ci_low > 0 or lc.ci_high < 0) and fc.testable and fc.ci_high < rules.min_rise
            return ClaimRow(run, "format_first", STATISTIC, lead, lo, hi, lc.p_two_sided,
                            "not supported" if moved else "inconclusive",
                            text + ("; lenient accuracy moved first" if moved else "; not shown to have moved first"),
                            "R3")
        if lo <= 0:
            return ClaimRow(run, "format_first", STATISTIC, lead, lo, hi, np.nan, "inconclusive",
                            where + "; the ranges overlap (a tie counts for neither side)", "R3")
    # for: after the format transition (up to any later lenient change) the format rate has risen by min_rise
    # while lenient accuracy is equivalent to the base's: the format moved and lenient accuracy did not
    end = lenient["first_low"] if lenient is not None else np.inf
    after = [s for s in steps if f_hi <= s < end and s > 0]
    if not after:
        return ClaimRow(run, "format_first", STATISTIC, lead, lo, hi, np.nan, "inconclusive", where +
                        "; no evaluated step after the format transition (and before any lenient change) to show "
                        "lenient accuracy flat", "R0")
    fc, lc, b0, b1 = _moved(confirm, run, after, rules)
    detail = (f"{where}; steps {after[0]}-{after[-1]} vs base: format {fmt(fc.diff)} [{fmt(fc.ci_low)}, "
              f"{fmt(fc.ci_high)}], lenient {fmt(float(b0['lenient'].mean()))} -> {fmt(float(b1['lenient'].mean()))} "
              f"(change {fmt(lc.diff)} [{fmt(lc.ci_low)}, {fmt(lc.ci_high)}], TOST p {fmt(lc.p_tost, 4)} within "
              f"+-{rules.accuracy_margin}, {lc.n} problems)")
    rose = fc.testable and fc.ci_low > 0 and fc.diff >= rules.min_rise
    flat = lc.testable and lc.p_tost < rules.alpha
    verdict = "supported" if rose and flat else "inconclusive"
    if not rose:
        detail += "; the format rise is not confirmed there"
    elif not flat:
        detail += "; lenient accuracy not shown flat across the format transition"
    return ClaimRow(run, "format_first", STATISTIC, lead, lo, hi, lc.p_tost, verdict, detail, "R3")
