"""The short form of benchmarks/bench_verdicts.py: simulated series with known truths at the lab validation's
size; the share of wrong firm verdicts per scenario and claim must stay within what a 5% rate allows for this many
replicates (the 99th percentile of Binomial(R, 0.05)), and clear effects must be found."""

import math

import pytest
from scipy import stats

from analysis.calibration import (CALIBRATED, LAB_VALIDATION, SCENARIOS, calibrate, knowledge_power_bound,
                                  lenient_power_bound)
from analysis.rules import VerdictRules

pytestmark = pytest.mark.slow

REPLICATES = 20
RISKY = ("format only", "correctness only", "both at once", "lenient accuracy falls", "retention falls",
         "nothing changes (no held-out)")


@pytest.fixture(scope="module")
def table():
    return calibrate([s for s in SCENARIOS if s.name in RISKY], [LAB_VALIDATION], REPLICATES, seed=11)


def test_wrong_firm_verdicts_stay_within_a_five_percent_rate(table):
    bound = stats.binom.ppf(0.99, REPLICATES, 0.05) / REPLICATES
    assert set(table["claim"]) == set(CALIBRATED) and len(table) == len(RISKY) * len(CALIBRATED)
    over = table[table["wrong"] > bound]
    assert over.empty, over[["scenario", "claim", "truth", "wrong", "right"]].to_string()


def test_clear_effects_are_found(table):
    t = table.set_index(["scenario", "claim"])
    assert t.loc[("correctness only", "format_adaptation"), "right"] >= 0.8
    assert t.loc[("format only", "gain_decomposition"), "right"] >= 0.8
    assert t.loc[("retention falls", "knowledge_kept"), "right"] >= 0.8
    assert t.loc[("lenient accuracy falls", "format_adaptation"), "wrong"] == 0


def test_knowledge_power_bound_matches_the_normal_power_formula():
    """With many items (the harm nearly normal, its grid fine) the oracle's Monte Carlo power equals the closed
    form Phi((margin - harm) / se - z_alpha) for the true harm and SE it measured, within 3 Monte Carlo SEs; at the
    lab's 120 items the rule's own power lies near the oracle's, not above by much."""
    rules = VerdictRules(retention_margin=0.01)
    reps = 1500
    b = knowledge_power_bound(n_items=2000, rules=rules, replicates=reps, seed=3)
    closed = stats.norm.cdf((rules.retention_margin - b["true_harm"]) / b["true_se"] - stats.norm.ppf(1 - rules.alpha))
    assert 0.1 < closed < 0.9  # a regime where the check can fail
    assert abs(b["power_oracle"] - closed) < 3 * math.sqrt(closed * (1 - closed) / reps)
    lab = knowledge_power_bound(n_items=120, replicates=1000, seed=4)
    assert 0.5 < lab["power_rule"] < lab["power_oracle"] + 0.05


def test_lenient_power_bound_matches_the_normal_power_formula():
    """The oracle for rule R6 on simulated series: its Monte Carlo power equals Phi(|change + margin| / se - z) for
    the change and SE it measured, within 3 Monte Carlo SEs, for a truth of each kind; the planted change is found."""
    rules = VerdictRules()
    z = stats.norm.ppf(1 - rules.alpha)
    by_name = {sc.name: sc for sc in SCENARIOS}
    for name, change in (("lenient accuracy falls", -0.20), ("retention falls", 0.0)):
        b = lenient_power_bound(by_name[name], replicates=200, seed=5)
        assert abs(b["true_change"] - change) < 0.03
        closed = stats.norm.cdf(abs(b["true_change"] + rules.accuracy_margin) / b["true_se"] - z)
        assert abs(b["power_oracle"] - closed) < 3 * math.sqrt(closed * (1 - closed) / 200) + 0.02
