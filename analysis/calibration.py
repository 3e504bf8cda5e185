"""How often is each verdict wrong? Simulated checkpoint series with known truths, run through the same pure
functions as `tina-probe phase` and `tina-probe hypothesis`, tallied per scenario, size and claim.

A scenario plants a format rate, a lenient accuracy and a retention accuracy before and after one transition (at
the middle checkpoint); analysis.simulate draws the samples (per-problem difficulty that every checkpoint shares,
binomial samples) on a test and a held-out benchmark, and a retention probe is drawn per item. Each claim's truth
is "supported", "not supported" or None (neither firm verdict is right: a tie, or no gain to split); a firm
verdict against the truth is wrong, a firm verdict equal to it is power.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import special

from analysis.claim import paired, per_problem
from analysis.claims_kept import metric_test, retention_changes
from analysis.hypothesis import hypothesis_tables
from analysis.phase import detect_phases, eval_curves
from analysis.rules import PhaseRules, VerdictRules
from analysis.simulate import shift_for_mean, simulate_samples, step_curve

CALIBRATED = ("format_first", "gain_decomposition", "strict_gain", "lenient_kept", "knowledge_kept",
              "format_adaptation")
S, NS = "supported", "not supported"


@dataclass(frozen=True)
class Scenario:
    """Planted (before, after) levels; `held_out` False scores by a split of the test problems (rule R1)."""

    name: str
    fmt: tuple[float, float]
    lenient: tuple[float, float]
    retention: tuple[float, float] = (0.6, 0.6)
    truth: dict = field(default_factory=dict)
    held_out: bool = True
    checkpoints: int | None = None  # forces the checkpoint count (the too-few scenario)


KEPT = {"lenient_kept": S, "knowledge_kept": S}
# Lenient accuracy around 0.75, as the lab's runs have it (74.5% at the base, 86-90% at the best); the variance of
# a per-problem share is largest at 0.5, where the same sizes have less power (see `--worst-case` of the benchmark).
SCENARIOS = (
    Scenario("format only", (0.2, 0.8), (0.75, 0.75),
             truth={"format_first": S, "gain_decomposition": S, "strict_gain": S, **KEPT, "format_adaptation": S}),
    Scenario("correctness only", (0.9, 0.9), (0.45, 0.75),
             truth={"format_first": NS, "gain_decomposition": NS, "strict_gain": S, **KEPT, "format_adaptation": NS}),
    Scenario("both at once", (0.2, 0.8), (0.6, 0.8),  # format share 0.81; the onsets tie
             truth={"format_first": None, "gain_decomposition": S, "strict_gain": S, **KEPT,
                    "format_adaptation": None}),
    Scenario("base never formatted", (0.0, 0.8), (0.75, 0.75),
             truth={"format_first": S, "gain_decomposition": S, "strict_gain": S, **KEPT, "format_adaptation": S}),
    Scenario("lenient accuracy falls", (0.2, 0.8), (0.75, 0.55),  # with the format: a tie for format_first
             truth={"format_first": None, "gain_decomposition": S, "strict_gain": S, "lenient_kept": NS,
                    "knowledge_kept": S, "format_adaptation": NS}),
    Scenario("retention falls", (0.2, 0.8), (0.75, 0.75), retention=(0.6, 0.4),
             truth={"format_first": S, "gain_decomposition": S, "strict_gain": S, "lenient_kept": S,
                    "knowledge_kept": NS, "format_adaptation": NS}),
    Scenario("retention rises", (0.2, 0.8), (0.75, 0.75), retention=(0.6, 0.75),
             truth={"format_first": S, "gain_decomposition": S, "strict_gain": S, **KEPT, "format_adaptation": S}),
    Scenario("too few checkpoints", (0.2, 0.8), (0.75, 0.75), checkpoints=4,
             truth={"format_first": S, "gain_decomposition": S, "strict_gain": S, **KEPT, "format_adaptation": S}),
    Scenario("planted (lab validation's levels)", (0.35, 0.99), (0.98, 0.98),  # what lab validate measured
             truth={"format_first": S, "gain_decomposition": S, "strict_gain": S, **KEPT, "format_adaptation": S}),
    Scenario("nothing changes (no held-out)", (0.5, 0.5), (0.75, 0.75), held_out=False,
             truth={"format_first": NS, "gain_decomposition": None, "strict_gain": NS, **KEPT,
                    "format_adaptation": NS}),
)


def worst_case(scenario: Scenario) -> Scenario:
    """The same scenario with lenient accuracy moved to around 0.5 (the largest per-problem variance)."""
    shift = 0.5 - (scenario.lenient[0] + scenario.lenient[1]) / 2
    return Scenario(scenario.name + " @0.5", scenario.fmt, tuple(round(x + shift, 3) for x in scenario.lenient),
                    scenario.retention, scenario.truth, scenario.held_out, scenario.checkpoints)


@dataclass(frozen=True)
class Size:
    """A study's size: problems per benchmark, trained checkpoints (plus the base), samples per problem."""

    problems: int
    checkpoints: int
    samples: int
    retention_items: int = 120  # the lab's facts probe

    @property
    def label(self) -> str:
        return f"{self.problems}p x {self.checkpoints}ck x n{self.samples}"


LAB_VALIDATION = Size(60, 12, 4)  # tina-probe lab validate: 60 problems (48 in the suite), 12 checkpoints, n = 4
# the sizes our studies use: the real study (16 problems, 4 checkpoints), the lab validation, the lab study (100-300
# problems, 13 checkpoints), and the grid's corners (n = 16; 300 problems with 4 checkpoints)
SIZES = (Size(16, 4, 4), Size(16, 13, 4), LAB_VALIDATION, Size(60, 13, 16), Size(300, 13, 4), Size(300, 4, 16))


def _pass1(samples: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """passk (k = 1, strict and lenient) and format (format_rate) tables without CIs: rule R2 takes the noise from
    the samples, so `phase` would not read the CIs."""
    per = samples.groupby(["run", "step", "kind", "benchmark", "problem_id"])[
        ["correct_strict", "correct_lenient", "well_formatted"]].mean()
    means = per.groupby(level=[0, 1, 2, 3]).mean().reset_index()
    keys = ["run", "step", "kind", "benchmark"]
    passk = pd.concat([means[keys].assign(grading=g, k=1, n=1, value=means[c], ci_low=np.nan, ci_high=np.nan)
                       for g, c in (("strict", "correct_strict"), ("lenient", "correct_lenient"))], ignore_index=True)
    fmt = means[keys].assign(metric="format_rate", value=means["well_formatted"], ci_low=np.nan, ci_high=np.nan)
    return passk, fmt


def _retention(run: str, steps, at: float, level: tuple[float, float], n_items: int, rng: np.random.Generator,
               flip: float = 0.03) -> pd.DataFrame:
    """A retention probe scored per item, as lm-eval's greedy multiple choice scores it: item i is right at a step
    iff its fixed draw u_i lies below its chance expit(a_t + z_i) (fixed item difficulty z_i; a_t sets the planted
    accuracy, which moves at `at`), and each checkpoint flips a share `flip` of items at random (small updates that
    move answers either way). Rows carry value, stderr (as lm-eval reports it) and the items."""
    z, u = rng.standard_normal(n_items), rng.random(n_items)
    rows = []
    for step in steps:
        acc = level[0] if step < at else level[1]
        ok = u < special.expit(shift_for_mean(z, 1.0, acc) + z)
        if step > 0:
            ok ^= rng.random(n_items) < flip
        v = float(ok.mean())
        rows.append({"run": run, "step": int(step), "kind": "base" if step == 0 else "lora", "probe": "sim_facts",
                     "metric": "acc", "value": v, "stderr": math.sqrt(v * (1 - v) / max(n_items - 1, 1)),
                     "items": ok.astype(float).tolist()})
    return pd.DataFrame(rows)


def simulate_series(scenario: Scenario, size: Size, seed: int) -> dict[str, pd.DataFrame]:
    """One replicate: the store tables `eval` and `retention` would leave (samples, passk, format, retention)."""
    n_ck = scenario.checkpoints or size.checkpoints
    steps = [25 * i for i in range(n_ck + 1)]
    at = steps[(n_ck + 1) // 2]
    fmt_curve = step_curve(steps, *scenario.fmt, at)
    len_curve = step_curve(steps, *scenario.lenient, at)
    benches = [("sim-test", seed)] + ([("sim-probe", seed + 7919)] if scenario.held_out else [])
    samples = pd.concat([simulate_samples(steps, fmt_curve, len_curve, run="sim", benchmark=b, n_problems=size.problems,
                                          n_samples=size.samples, seed=s) for b, s in benches], ignore_index=True)
    passk, fmt = _pass1(samples)
    retention = _retention("sim", steps, at, scenario.retention, size.retention_items,
                           np.random.default_rng(seed + 104729))
    return {"samples": samples, "passk": passk, "format": fmt, "retention": retention}


def verdicts(tables: dict[str, pd.DataFrame], *, phase_rules: PhaseRules = PhaseRules(),
             rules: VerdictRules = VerdictRules(), seed: int = 0) -> dict[str, str]:
    """claim -> verdict for the simulated run, through phase (PELT on the curves the verdicts read) and hypothesis.
    knowledge_kept is the run's summary over its retention rows (as the overall rule reads it)."""
    curves = eval_curves(tables["passk"], tables["format"], "sim", tables["samples"])
    # the curves the verdicts read (rule R3: the test benchmark's format rate and lenient pass@1); the others
    # would only cost time
    curves = curves[(curves["benchmark"] == "sim-test") & curves["metric"].isin(["format_rate", "pass1_lenient"])]
    phases, status = detect_phases(curves, methods=("pelt",), seed=seed, rules=phase_rules)
    status = status.assign(min_points=phase_rules.min_points)
    hyp, _ = hypothesis_tables(tables["samples"], tables["passk"], phases, pd.DataFrame(), tables["retention"],
                               pd.DataFrame(), rules=rules, seed=seed, status=status)
    hyp = hyp[hyp["run"] == "sim"]
    out = {}
    for claim in CALIBRATED:
        rows = hyp[hyp["claim"] == claim]
        if claim == "knowledge_kept":
            vs = set(rows["verdict"])
            out[claim] = NS if NS in vs else S if vs == {S} else "inconclusive"
        else:
            out[claim] = rows["verdict"].iloc[0] if len(rows) else "inconclusive"
    return out


def calibrate(scenarios=SCENARIOS, sizes=SIZES, replicates: int = 50, *, phase_rules: PhaseRules = PhaseRules(),
              rules: VerdictRules = VerdictRules(), seed: int = 0, progress=None) -> pd.DataFrame:
    """The calibration table: per scenario, size and claim, the truth and the shares of wrong and right firm
    verdicts over `replicates` simulated series (tidy: one row per cell and claim)."""
    rows = []
    cells = [(sc, sz) for sc in scenarios for sz in sizes
             if not (sc.checkpoints and sz.checkpoints <= sc.checkpoints)]  # a forced count below the size's
    for i, (sc, sz) in enumerate(cells):
        tallies = {c: {"wrong": 0, "right": 0, "inconclusive": 0} for c in CALIBRATED}
        for r in range(replicates):
            got = verdicts(simulate_series(sc, sz, seed + 1000 * r + 17 * i), phase_rules=phase_rules, rules=rules,
                           seed=seed + r)
            for claim, v in got.items():
                truth = sc.truth.get(claim)
                t = tallies[claim]
                if v == "inconclusive":
                    t["inconclusive"] += 1
                elif truth is not None and v == truth:
                    t["right"] += 1
                else:
                    t["wrong"] += 1
            if progress is not None:
                progress.update(1)
        for claim, t in tallies.items():
            rows.append({"scenario": sc.name, "size": sz.label if not sc.checkpoints else
                         f"{sz.problems}p x {sc.checkpoints}ck x n{sz.samples}", "problems": sz.problems,
                         "checkpoints": sc.checkpoints or sz.checkpoints, "samples": sz.samples, "claim": claim,
                         "truth": sc.truth.get(claim) or "neither", "replicates": replicates,
                         "wrong": t["wrong"] / replicates, "right": t["right"] / replicates,
                         "inconclusive": t["inconclusive"] / replicates})
    return pd.DataFrame(rows)


def knowledge_power_bound(level: float = 0.6, n_items: int = 120, *, rules: VerdictRules = VerdictRules(),
                          replicates: int = 4000, seed: int = 0) -> dict[str, float]:
    """What the retention probe's size allows: the power of rule R7's test and of an oracle z test that knows the
    true standard error of the paired change, on `_retention`'s items (no planted change, only the per-checkpoint
    flips). No level-alpha test of the same items does much better than the oracle, so its power caps knowledge_kept
    and with it the overall verdict (R9 needs every part at once). Monte Carlo, `replicates` base/checkpoint pairs."""
    rng = np.random.default_rng(seed)
    diffs, kept = [], []
    for _ in range(replicates):
        r = _retention("sim", [0, 1], 2, (level, level), n_items, rng)
        diffs.append(np.asarray(r["items"].iloc[1]) - np.asarray(r["items"].iloc[0]))
        # rule R7's own test of the one metric (kept iff p_kept < alpha; Holm only ever enters a "lost" verdict)
        kept.append(metric_test(retention_changes(r, "sim", 1).iloc[0].to_dict(), rules)["p_kept"] < rules.alpha)
    d = np.asarray(diffs)
    harm = -d.mean(axis=1)
    true_se = float(d.std()) / math.sqrt(n_items)
    z = special.ndtri(1 - rules.alpha)
    return {"n_items": n_items, "true_harm": float(harm.mean()), "true_se": true_se,
            "power_rule": float(np.mean(kept)),
            "power_oracle": float(np.mean(harm + z * true_se < rules.retention_margin))}


def lenient_power_bound(scenario: Scenario, size: Size = LAB_VALIDATION, *, rules: VerdictRules = VerdictRules(),
                        replicates: int = 300, seed: int = 0) -> dict[str, float]:
    """What the task's problems allow for lenient_kept (rule R6): an oracle z test of the per-problem lenient change
    base -> last checkpoint on the test split that knows its true mean's standard error (measured over `replicates`
    simulated series of `scenario`), deciding toward the scenario's truth (supported: lower bound above -margin;
    not supported: upper bound below -margin). R6 cannot beat it by much on the same problems."""
    changes = []
    for r in range(replicates):
        s = simulate_series(scenario, size, seed + 1000 * r)["samples"]
        s = s[s["benchmark"] == "sim-test"]
        base, last = paired(per_problem(s, "sim", 0), per_problem(s, "sim", int(s["step"].max())))
        changes.append(float((last["lenient"] - base["lenient"]).mean()))
    d = np.asarray(changes)
    se = float(d.std(ddof=1))
    z = special.ndtri(1 - rules.alpha)
    m = rules.accuracy_margin
    supported = scenario.truth.get("lenient_kept") == S
    right = d - z * se > -m if supported else d + z * se < -m
    return {"scenario": scenario.name, "truth": "S" if supported else "N", "true_change": float(d.mean()),
            "true_se": se, "power_oracle": float(right.mean())}
