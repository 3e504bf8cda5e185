"""The format-adaptation hypothesis: did RL mostly teach the output format, and keep what the model knew?

Reads the store (samples, passk, phases, phase_status, retention, spectra, selection) and writes the `hypothesis`
table (run, claim, statistic, value, ci_low, ci_high, p_value, verdict, detail, rule, best_step, best_chosen_on)
and the `gain_decomposition` table. The rules, R0-R9, are stated once in analysis/rules.py with every threshold;
each claim lives in its own module (claims_order, claims_gain, claims_kept, claims_geometry) and this module
chooses the best checkpoint (R1) and applies the overall rule (R9).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.claim import HYPOTHESIS_COLUMNS, ClaimRow, per_problem
from analysis.claims_gain import gain_claim, gain_decomposition, strict_gain_claim
from analysis.claims_geometry import CROSS_RUN, geometry_claims, knowledge_lora_vs_full  # noqa: F401
from analysis.claims_kept import knowledge_claims, knowledge_summary, lenient_kept_claim, retention_changes
from analysis.claims_order import format_first_claim
from analysis.transitions import one_sampling
from analysis.rules import VerdictRules
from analysis.selection import best_choice, selection_table
from tina_probe.errors import TinaError
from tina_probe.store import Store

log = logging.getLogger(__name__)

CLAIMS = ("format_first", "gain_decomposition", "strict_gain", "lenient_kept", "knowledge_kept", "update_geometry",
          "format_adaptation")
PARTS = ("format_first", "gain_decomposition", "lenient_kept", "knowledge_kept")  # what the overall verdict needs


# ----------------------------------------------------------------------------- R1: the best checkpoint, held out


@dataclass(frozen=True)
class Scoring:
    """Where a run's best checkpoint was chosen and which samples score it (never the ones that chose it)."""

    step: int | None
    benchmark: str | None  # the test benchmark
    chosen_on: str | None  # held-out benchmark, or "<test> (half A)" for a split
    samples: pd.DataFrame  # the scoring samples (test benchmark, or its half B)
    note: str = ""


def split_half(problem_ids) -> np.ndarray:
    """A fixed half of the problems (True = half A, which chooses), by a hash of the id: stable across runs and
    sessions, and unrelated to the order the problems come in."""
    return np.array([hashlib.sha256(str(p).encode()).digest()[0] % 2 == 0 for p in problem_ids])


def _strict_by_step(samples: pd.DataFrame) -> pd.Series:
    per = samples.groupby(["step", "problem_id"])["correct_strict"].mean()
    return per.groupby(level="step").mean()


def choose_best(run_samples: pd.DataFrame, passk: pd.DataFrame, run: str, selection: pd.DataFrame,
                rules: VerdictRules) -> Scoring:
    """Rule R1: held-out benchmark if the selection table names one; else half A of the test problems chooses
    (highest strict pass@1 among trained steps, earliest on ties) and half B scores. `run_samples`: the run's
    samples under one sampling setting (one_sampling)."""
    choice = best_choice(passk, run, selection)
    if choice is not None and choice.held_out:
        scoring = run_samples[run_samples["benchmark"] == choice.benchmark] if not run_samples.empty else run_samples
        return Scoring(choice.step, choice.benchmark, choice.chosen_on, scoring)
    if run_samples.empty:
        return Scoring(None, None, None, run_samples, "no samples table (run `tina-probe eval`)")
    benches = sorted(run_samples["benchmark"].unique())
    bench = choice.benchmark if choice is not None else benches[0]
    df = run_samples[run_samples["benchmark"] == bench]
    ids = np.array(sorted(df["problem_id"].unique()))
    in_a = split_half(ids)
    n_a, n_b = int(in_a.sum()), int((~in_a).sum())
    if min(n_a, n_b) < rules.min_split_problems:
        return Scoring(None, bench, None, df.iloc[0:0], f"no held-out benchmark, and {len(ids)} problems split "
                       f"{n_a}/{n_b}: fewer than {rules.min_split_problems} per half to choose the best checkpoint "
                       "on one half and score it on the other")
    a = df[df["problem_id"].isin(ids[in_a])]
    curve = _strict_by_step(a[a["step"] > 0])
    if curve.empty:
        return Scoring(None, bench, None, df.iloc[0:0], "no trained checkpoint evaluated")
    step = int(curve.idxmax())
    return Scoring(step, bench, f"{bench} (half A)", df[df["problem_id"].isin(ids[~in_a])],
                   f"no held-out benchmark: chosen on {n_a} problems, scored on the other {n_b}")


# ----------------------------------------------------------------------------- R9: the overall verdict


def format_adaptation_claim(run: str, parts: dict[str, tuple[str, str]], share: ClaimRow | None) -> ClaimRow:
    """Rule R9. `parts`: part -> (verdict, reason) for format_first, gain_decomposition, lenient_kept and
    knowledge_kept. Supported iff all are supported; not supported iff format_first or gain_decomposition is not
    supported or knowledge (task or retention) was lost; inconclusive otherwise."""
    verdicts = {k: parts.get(k, ("inconclusive", "not tested"))[0] for k in PARTS}
    against = [k for k in PARTS if verdicts[k] == "not supported"]
    open_ = [k for k in PARTS if verdicts[k] == "inconclusive"]
    if not against and not open_:
        verdict, head = "supported", "every part supported"
    elif against:
        verdict, head = "not supported", "evidence against: " + ", ".join(against)
    else:
        verdict, head = "inconclusive", "not shown: " + ", ".join(open_)
    reasons = "; ".join(f"{k} {verdicts[k]}" + (f" ({parts[k][1]})" if k in parts and parts[k][1] else "")
                        for k in PARTS)
    value, lo, hi = (share.value, share.ci_low, share.ci_high) if share else (math.nan, math.nan, math.nan)
    return ClaimRow(run, "format_adaptation", "format_share_of_strict_gain", value, lo, hi, math.nan, verdict,
                    f"{head}. {reasons}", "R9")


def _reason(row: ClaimRow) -> str:
    """A claim's one-line reason for the overall detail: the detail's first clause."""
    return row.detail.split(";")[0] if row.verdict != "supported" else ""


# ----------------------------------------------------------------------------- the table


def _passk_from_samples(samples: pd.DataFrame) -> pd.DataFrame:
    """Strict pass@1 per run, step and benchmark from samples (mean over problems of the per-problem share)."""
    per = samples.groupby(["run", "step", "benchmark", "problem_id"])["correct_strict"].mean().reset_index()
    out = per.groupby(["run", "step", "benchmark"])["correct_strict"].mean().reset_index(name="value")
    return out.assign(k=1, grading="strict")


def eval_status(status: pd.DataFrame, summary: pd.DataFrame, run: str, benchmark: str | None) -> dict:
    """eval metric -> (status, n_points, min_points) of a run's curves on `benchmark`, from `phase_status`
    (older stores: parsed from phase_summary, without point counts)."""
    out: dict = {}
    if status is not None and not status.empty and "run" in status.columns:
        s = status[(status["run"] == run) & (status["source"] == "eval")]
        if "method" in s.columns:
            s = s[s["method"] == s["method"].iloc[0]] if not s.empty else s
        if benchmark is not None:
            s = s[s["benchmark"] == benchmark]
        for r in s.itertuples(index=False):
            out[r.metric] = (r.status, int(r.n_points), int(getattr(r, "min_points", 0) or 0))
        return out
    if summary is None or summary.empty or run not in set(summary.get("run", [])):
        return out
    row = summary[summary["run"] == run].iloc[0]
    for col, code in (("metrics_too_short", "too short"), ("metrics_unchanged", "no change"),
                      ("metrics_changed", "changes")):
        for name in str(row.get(col) or "").split(", "):
            if name and "[" in name:
                metric, bench = name[:-1].split("[", 1)
                if benchmark is None or bench == benchmark:
                    out[metric] = (code, -1, -1)
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


def run_claims(run: str, samples: pd.DataFrame, pk: pd.DataFrame, phases: pd.DataFrame, status: pd.DataFrame,
               summary: pd.DataFrame, retention: pd.DataFrame, selection: pd.DataFrame, rules: VerdictRules,
               seed: int) -> tuple[list[ClaimRow], dict | None, Scoring]:
    """Every claim of one run: (rows, gain decomposition record or None, the scoring used)."""
    run_samples = one_sampling(samples, run) if not samples.empty else samples  # once per run
    sc = choose_best(run_samples, pk, run, selection, rules)
    rows: list[ClaimRow] = []
    parts: dict[str, tuple[str, str]] = {}
    test_samples = run_samples
    if sc.benchmark is not None and not test_samples.empty:
        test_samples = test_samples[test_samples["benchmark"] == sc.benchmark]
    held = (run_samples[run_samples["benchmark"] == sc.chosen_on] if sc.chosen_on and not run_samples.empty
            and sc.chosen_on != sc.benchmark else None)
    ff = format_first_claim(run, phases, eval_status(status, summary, run, sc.benchmark), sc.benchmark,
                            test_samples, sc.step, rules, confirm=held, confirm_on=sc.chosen_on)
    rows.append(ff)
    parts["format_first"] = (ff.verdict, _reason(ff))
    dec, share = None, None
    if sc.step is None:
        why = sc.note or "no trained checkpoint to score"
        for claim in ("gain_decomposition", "strict_gain", "lenient_kept"):
            rows.append(ClaimRow(run, claim, "", detail=why, rule="R1"))
            parts[claim] = ("inconclusive", why)
    else:
        base_pp, best_pp = per_problem(sc.samples, run, 0), per_problem(sc.samples, run, sc.step)
        if base_pp.empty or best_pp.empty:
            why = f"no samples at step 0 or {sc.step} on {sc.benchmark}"
            for claim in ("gain_decomposition", "strict_gain", "lenient_kept"):
                rows.append(ClaimRow(run, claim, "", detail=why, rule="R0"))
                parts[claim] = ("inconclusive", why)
        else:
            dec = gain_decomposition(base_pp, best_pp, rules, seed=seed)
            share = gain_claim(run, dec, rules)
            lk = lenient_kept_claim(run, base_pp, best_pp, rules)
            rows += [share, strict_gain_claim(run, base_pp, best_pp, rules), lk]
            parts["gain_decomposition"] = (share.verdict, _reason(share))
            parts["lenient_kept"] = (lk.verdict, _reason(lk))
            if sc.note:
                rows = [r if r.claim not in ("gain_decomposition", "strict_gain", "lenient_kept") else
                        ClaimRow(**(asdict(r) | {"detail": r.detail + f"; {sc.note}"})) for r in rows]
    kept: list[ClaimRow] = []
    if not retention.empty and sc.step is not None:
        kept = knowledge_claims(run, retention_changes(retention, run, sc.step), rules)
    rows += kept
    parts["knowledge_kept"] = knowledge_summary(kept)
    rows.append(format_adaptation_claim(run, parts, share))
    return rows, dec, sc


def hypothesis_tables(samples: pd.DataFrame, passk: pd.DataFrame, phases: pd.DataFrame, summary: pd.DataFrame,
                      retention: pd.DataFrame, spectra: pd.DataFrame, *, rules: VerdictRules = VerdictRules(),
                      seed: int = 0, selection: pd.DataFrame | None = None,
                      status: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All claims for all runs: (hypothesis table, gain_decomposition table). Pure over the store's tables."""
    pk = passk if not passk.empty else (_passk_from_samples(samples) if not samples.empty else passk)
    if selection is None or selection.empty:
        selection = selection_table(pk)
    status = status if status is not None else pd.DataFrame()
    runs = sorted({*(pk["run"] if not pk.empty else []), *(samples["run"] if not samples.empty else []),
                   *(phases["run"] if not phases.empty else [])})
    rows: list[ClaimRow] = []
    decomp, changes, bests, chosen_on = [], {}, {}, {}
    for run in runs:
        found, dec, sc = run_claims(run, samples, pk, phases, status, summary, retention, selection, rules, seed)
        rows += found
        if sc.step is not None:
            bests[run], chosen_on[run] = sc.step, sc.chosen_on
            if not retention.empty:
                changes[run] = retention_changes(retention, run, sc.step)
        if dec is not None:
            decomp.append({"run": run, "benchmark": sc.benchmark, "base_step": 0, "best_step": sc.step,
                           "best_chosen_on": sc.chosen_on} | dec)
    kinds = _run_kinds(samples, passk, retention, spectra)
    rows += knowledge_lora_vs_full(changes, kinds, rules)
    rows += geometry_claims(spectra, bests, rules)
    hyp = pd.DataFrame([asdict(r) for r in rows], columns=HYPOTHESIS_COLUMNS[:-2])
    hyp["best_step"] = hyp["run"].map(bests).astype(float)  # nan for the cross-run rows
    hyp["best_chosen_on"] = hyp["run"].map(chosen_on)
    return hyp, pd.DataFrame(decomp)


def run_hypothesis(out: Path, *, rules: VerdictRules = VerdictRules(), seed: int = 0) -> pd.DataFrame:
    """`tina-probe hypothesis`: read the store at `out`, write hypothesis and gain_decomposition tables."""
    store = Store(out)
    tables = {t: store.read(t) for t in ("samples", "passk", "phases", "phase_summary", "phase_status",
                                         "retention", "spectra", "selection")}
    if tables["samples"].empty and tables["passk"].empty and tables["phases"].empty:
        raise TinaError(f"{out}: no samples, passk or phases table (run `tina-probe eval` and `tina-probe phase`)")
    for name, cmd in (("phases", "phase"), ("retention", "retention"), ("spectra", "spectra")):
        if not store.table_path(name).exists():  # written but empty (e.g. no change point found) is no warning
            log.warning("%s: no %s table; run `tina-probe %s` for its claims", out, name, cmd)
    hyp, decomp = hypothesis_tables(tables["samples"], tables["passk"], tables["phases"], tables["phase_summary"],
                                    tables["retention"], tables["spectra"], rules=rules, seed=seed,
                                    selection=tables["selection"], status=tables["phase_status"])
    store.write("hypothesis", hyp)
    store.write("gain_decomposition", decomp)
    return hyp
