"""The format-adaptation claims against planted ground truth and hand values: each rule of analysis/rules.py
(R0-R9) gives its firm verdict only on evidence, says inconclusive (with what was missing) otherwise."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis.claim import ClaimRow, paired_change
from analysis.claims_gain import gain_decomposition
from analysis.claims_geometry import geometry_claims, knowledge_lora_vs_full
from analysis.claims_kept import knowledge_claims, knowledge_summary, retention_changes
from analysis.claims_order import format_first_claim
from analysis.hypothesis import format_adaptation_claim, run_hypothesis, split_half
from analysis.phase import run_phase
from analysis.rules import VerdictRules
from analysis.simulate import simulate_samples, write_planted_study
from tina_probe.errors import TinaError
from tina_probe.store import Store

FAST = VerdictRules(n_boot=400)


def _retention(runs, steps, change=0.0, n=120, seed=0):
    """A facts probe scored per item: base items, and each trained step's items with a few flips (+ a planted
    change: that share of right items turned wrong)."""
    rng = np.random.default_rng(seed)
    rows = []
    for run in runs:
        x0 = (rng.random(n) < 0.6).astype(float)
        for step in [0] + list(steps):
            x = x0.copy()
            if step:
                flip = rng.random(n) < 0.02
                x[flip] = 1 - x[flip]
                lose = (x == 1) & (rng.random(n) < change / 0.6)
                x[lose] = 0
            rows.append({"run": run, "step": step, "kind": "base" if step == 0 else "lora", "probe": "facts",
                         "metric": "acc", "value": x.mean(), "stderr": x.std(ddof=1) / math.sqrt(n),
                         "items": x.tolist()})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    run_dirs = write_planted_study(root, seed=0, n_boot=100)
    run_phase([str(d) for d in run_dirs], root / "results", n_boot=50)
    Store(root / "results").write("retention", _retention(["planted", "control"], range(25, 325, 25)))
    hyp = run_hypothesis(root / "results", rules=FAST)
    return root / "results", hyp


def _row(hyp, run, claim):
    rows = hyp[(hyp["run"] == run) & (hyp["claim"] == claim)]
    assert len(rows) == 1, (run, claim, hyp)
    return rows.iloc[0]


def test_planted_format_adaptation_is_supported(study):
    _, hyp = study
    overall = _row(hyp, "planted", "format_adaptation")
    assert overall["verdict"] == "supported", overall["detail"]
    ff = _row(hyp, "planted", "format_first")
    assert ff["verdict"] == "supported" and "starts at step 100" in ff["detail"] and ff["rule"] == "R3"
    gd = _row(hyp, "planted", "gain_decomposition")
    assert gd["verdict"] == "supported" and gd["ci_low"] <= 1.0 <= gd["ci_high"]  # P(correct | wf) is constant
    assert _row(hyp, "planted", "strict_gain")["verdict"] == "supported"
    lk = _row(hyp, "planted", "lenient_kept")
    assert lk["verdict"] == "supported" and lk["ci_low"] <= 0 <= lk["ci_high"]
    assert _row(hyp, "planted", "knowledge_kept")["verdict"] == "supported"


def test_control_accuracy_gain_is_not_supported(study):
    _, hyp = study
    overall = _row(hyp, "control", "format_adaptation")
    assert overall["verdict"] == "not supported", overall["detail"]
    ff = _row(hyp, "control", "format_first")
    assert ff["verdict"] == "not supported" and "the format did not rise" in ff["detail"]
    gd = _row(hyp, "control", "gain_decomposition")
    assert gd["verdict"] == "not supported" and "correctness carries the gain" in gd["detail"]
    lk = _row(hyp, "control", "lenient_kept")
    assert lk["verdict"] == "supported" and lk["value"] > 0  # a rise is not a loss


def test_tables_written_with_the_store_columns(study):
    out, hyp = study
    stored = Store(out).read("hypothesis")
    assert list(stored.columns[:10]) == ["run", "claim", "statistic", "value", "ci_low", "ci_high", "p_value",
                                         "verdict", "detail", "rule"]
    assert set(stored["verdict"]) <= {"supported", "not supported", "inconclusive"}
    decomp = Store(out).read("gain_decomposition").set_index("run")
    assert decomp.loc["planted", "format_base"] == pytest.approx(0.3, abs=0.05)
    assert decomp.loc["planted", "format_best"] == pytest.approx(0.9, abs=0.05)
    assert np.allclose(decomp["format_part"] + decomp["correct_part"], decomp["gain"])  # the Shapley split is exact


def _pp(wf, strict, lenient, n=1):
    idx = pd.MultiIndex.from_tuples([("b", f"p{i}") for i in range(len(wf))], names=["benchmark", "problem_id"])
    return pd.DataFrame({"wf": wf, "strict": strict, "lenient": lenient, "n": n}, index=idx, dtype=float)


def test_gain_decomposition_matches_hand_values():
    base = _pp([1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 1, 0])
    best = _pp([1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 0])
    d = gain_decomposition(base, best, VerdictRules(n_boot=200, min_formatted_base=1))
    # F 0.5 -> 1, C 0.5 -> 0.75: format part 0.5 * 0.625, correctness part 0.25 * 0.75
    assert d["gain"] == pytest.approx(0.5) and d["conditional"] == "correct given formatted"
    assert d["format_part"] == pytest.approx(0.3125) and d["correct_part"] == pytest.approx(0.1875)
    assert d["share"] == pytest.approx(0.625) and d["d"] == pytest.approx(0.3125 - 0.25)


def test_a_base_that_never_formats_reads_lenient_accuracy_and_never_a_forced_share():
    """Rule R4: no formatted base sample -> C is lenient accuracy at both steps (0.25 -> 0.75 here), so a big
    correctness gain is not credited to the format (the old rule gave share 1 with CI [1, 1])."""
    base = _pp([0] * 8, [0] * 8, [1, 1, 0, 0, 0, 0, 0, 0], n=4)
    best = _pp([1] * 8, [1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0], n=4)
    d = gain_decomposition(base, best, VerdictRules(n_boot=200))
    assert d["conditional"] == "lenient accuracy" and d["formatted_base_samples"] == 0
    assert d["format_part"] == pytest.approx(1.0 * (0.25 + 0.75) / 2)  # 0.5
    assert d["correct_part"] == pytest.approx(0.5 * (0 + 1) / 2)  # 0.25
    assert d["share"] == pytest.approx(0.5 / 0.75) and d["share_high"] < 1


def _phase(metric, step, low, high, size):
    return {"run": "r", "metric": metric, "change_step": step, "change_step_low": low, "change_step_high": high,
            "method": "pelt", "size": size, "n_points": 13, "source": "eval", "benchmark": "b"}


def test_format_first_needs_points_and_counts_ties_for_neither_side():
    few = {"format_rate": ("too short", 5, 6), "pass1_lenient": ("too short", 5, 6)}
    r = format_first_claim("r", pd.DataFrame(), few, "b", None, 100)
    assert r.verdict == "inconclusive" and r.detail == "5 eval points; change points need 6"
    assert format_first_claim("r", pd.DataFrame(), {}, "b", None, 100).verdict == "inconclusive"  # no phase
    ch = {"format_rate": ("changes", 13, 6), "pass1_lenient": ("changes", 13, 6)}
    tie = pd.DataFrame([_phase("format_rate", 100, 100, 100, 0.5), _phase("pass1_lenient", 100, 100, 100, 0.1)])
    r = format_first_claim("r", tie, ch, "b", None, 100)
    assert r.verdict == "inconclusive" and "a tie counts for neither side" in r.detail


def _series(fmt_curve, len_curve, n=150, seed=4):
    steps = list(range(0, 325, 25))
    return simulate_samples(steps, fmt_curve(np.array(steps)), len_curve(np.array(steps)), run="r", benchmark="b",
                            n_problems=n, seed=seed)


def test_format_first_for_and_against_rest_on_paired_evidence():
    ch = {"format_rate": ("changes", 13, 6), "pass1_lenient": ("changes", 13, 6)}
    fmt_at_200 = pd.DataFrame([_phase("format_rate", 200, 200, 200, 0.5)])
    flat = _series(lambda s: np.where(s < 200, 0.2, 0.8), lambda s: np.full(len(s), 0.5))
    ok = format_first_claim("r", fmt_at_200, ch | {"pass1_lenient": ("no change", 13, 6)}, "b", flat, 300)
    assert ok.verdict == "supported" and "TOST" in ok.detail
    # lenient rose at 100 (before the format at 200): against, shown on the steps between
    early = _series(lambda s: np.where(s < 200, 0.2, 0.8), lambda s: np.where(s < 100, 0.3, 0.7))
    both = pd.concat([fmt_at_200, pd.DataFrame([_phase("pass1_lenient", 100, 100, 100, 0.4)])])
    r = format_first_claim("r", both, ch, "b", early, 300)
    assert r.verdict == "not supported" and "lenient accuracy moved first" in r.detail
    # the same lenient rise, but its change point missed: lenient after the format is not the base's -> open
    r = format_first_claim("r", fmt_at_200, ch | {"pass1_lenient": ("no change", 13, 6)}, "b", early, 300)
    assert r.verdict == "inconclusive"


def test_format_that_did_not_rise_is_evidence_against_only_when_bounded():
    ch = {"format_rate": ("no change", 13, 6), "pass1_lenient": ("changes", 13, 6)}
    flat = _series(lambda s: np.full(len(s), 0.9), lambda s: np.where(s < 100, 0.3, 0.6))
    r = format_first_claim("r", pd.DataFrame(columns=list(_phase("x", 0, 0, 0, 0))), ch, "b", flat, 300)
    assert r.verdict == "not supported" and r.ci_high < 0.1
    tiny = flat[flat["problem_id"].isin(["p0000", "p0001", "p0002", "p0003"])]
    r = format_first_claim("r", pd.DataFrame(columns=list(_phase("x", 0, 0, 0, 0))), ch, "b", tiny, 300)
    assert r.verdict == "inconclusive"  # 4 problems cannot bound the rise below 0.1


def test_paired_change_is_scipys_paired_t_and_statsmodels_tost():
    from scipy import stats
    from statsmodels.stats.weightstats import ttost_paired
    rng = np.random.default_rng(1)
    x0, x1 = rng.random(40), rng.random(40)
    c = paired_change(x0, x1, 0.1, 0.05)
    assert c.p_two_sided == pytest.approx(stats.ttest_rel(x1, x0).pvalue)
    assert c.p_tost == pytest.approx(ttost_paired(x1, x0, -0.1, 0.1)[0])
    assert not paired_change([0.5] * 5, [0.5] * 5, 0.1, 0.05).testable  # no variation: no test


def test_knowledge_kept_by_direction_and_margin():
    def rows(metric, v0, v1, se):
        return [{"run": "r", "step": 0, "kind": "base", "probe": "p", "metric": metric, "value": v0, "stderr": se},
                {"run": "r", "step": 100, "kind": "lora", "probe": "p", "metric": metric, "value": v1, "stderr": se}]
    table = pd.DataFrame(rows("acc", 0.60, 0.75, 0.01) + rows("kl", 0.0, 0.30, 0.01)
                         + rows("nll", 2.0, 2.01, 0.001) + rows("ppl", 7.4, 7.5, 0.01))
    changes = retention_changes(table, "r", 100)
    by = {r.statistic.split(":")[0]: r for r in knowledge_claims("r", changes)}
    assert by["p/acc"].verdict == "supported"  # a rise is not a loss
    assert by["p/kl"].verdict == "not supported" and by["p/kl"].value == pytest.approx(0.30)  # KL beyond 0.05
    assert by["p/nll"].verdict == "supported"
    assert by["p/ppl"].verdict == "inconclusive" and "ppl follows nll" in by["p/ppl"].detail
    assert knowledge_summary(list(by.values()))[0] == "not supported"
    zero = retention_changes(pd.DataFrame(rows("acc", 1.0, 1.0, 0.0)), "r", 100)
    z = knowledge_claims("r", zero)[0]
    assert z.verdict == "inconclusive" and "no stderr" in z.detail  # se 0 without items is no evidence
    assert knowledge_summary([]) == ("inconclusive", "no retention measured")


def test_knowledge_kept_pairs_items_and_bounds_the_unchanged_case():
    same = [1.0, 0.0] * 60
    base = {"run": "r", "step": 0, "kind": "base", "probe": "p", "metric": "acc", "value": 0.5, "stderr": 0.046}
    table = pd.DataFrame([base | {"items": same}, base | {"step": 100, "kind": "lora", "items": same}])
    ch = retention_changes(table, "r", 100)
    assert bool(ch["paired"].iloc[0]) and ch["discordant"].iloc[0] == 0
    row = knowledge_claims("r", ch)[0]
    # 0 of 120 items changed: the one-sided 95% Clopper-Pearson bound 1 - 0.05^(1/120) = 0.0247 < 0.05
    assert row.verdict == "supported" and row.ci_high == pytest.approx(1 - 0.05 ** (1 / 120), rel=1e-6)
    unpaired = table.drop(columns="items")
    assert knowledge_claims("r", retention_changes(unpaired, "r", 100))[0].verdict == "inconclusive"
    lost = table.copy()
    lost.at[1, "items"] = [0.0] * 120
    assert knowledge_claims("r", retention_changes(lost, "r", 100))[0].verdict == "not supported"


def test_geometry_is_descriptive_without_replicated_runs():
    rows = []
    for run, kind, intr in [("l1", "lora", 6), ("f1", "full", 0)]:
        for layer in range(6):
            rows.append({"run": run, "step": 200, "kind": kind, "layer": layer, "module": "q", "intruders": intr})
    one = geometry_claims(pd.DataFrame(rows), {"l1": 200, "f1": 200})
    assert len(one) == 1 and one[0].verdict == "inconclusive" and "descriptive" in one[0].detail
    rows = [{"run": f"{k}{i}", "step": 200, "kind": kind, "layer": 0, "module": "q", "intruders": intr + i % 2}
            for k, kind, intr in (("l", "lora", 6), ("f", "full", 0)) for i in range(4)]
    four = geometry_claims(pd.DataFrame(rows), {})
    assert four[0].verdict == "supported" and four[0].p_value < 0.05 and four[0].value > 0


def test_knowledge_lora_vs_full_needs_replication():
    ch = {"l": pd.DataFrame({"probe": ["p"], "metric": ["acc"], "diff": [0.0]}),
          "f": pd.DataFrame({"probe": ["p"], "metric": ["acc"], "diff": [-0.2]})}
    rows = knowledge_lora_vs_full(ch, {"l": "lora", "f": "full"})
    assert rows[0].verdict == "inconclusive" and rows[0].value == pytest.approx(0.2)


def test_overall_verdict_rule_r9():
    good = {"format_first": ("supported", ""), "gain_decomposition": ("supported", ""),
            "lenient_kept": ("supported", ""), "knowledge_kept": ("supported", "")}
    assert format_adaptation_claim("r", good, None).verdict == "supported"
    untested = good | {"knowledge_kept": ("inconclusive", "no retention measured")}
    r = format_adaptation_claim("r", untested, None)
    assert r.verdict == "inconclusive" and "no retention measured" in r.detail and "not shown: knowledge_kept" in r.detail
    for part in ("format_first", "gain_decomposition", "lenient_kept", "knowledge_kept"):
        assert format_adaptation_claim("r", good | {part: ("not supported", "")}, None).verdict == "not supported"
    assert format_adaptation_claim("r", {}, None).verdict == "inconclusive"


def test_samples_only_store_says_what_is_missing(tmp_path):
    steps = [0, 100, 200]
    s = simulate_samples(steps, [0.3, 0.9, 0.9], [0.8, 0.8, 0.8], run="solo", n_problems=120, seed=3)
    Store(tmp_path).write("samples", s)
    hyp = run_hypothesis(tmp_path, rules=FAST)
    assert "run `tina-probe eval`, then `tina-probe phase`" in _row(hyp, "solo", "format_first")["detail"]
    overall = _row(hyp, "solo", "format_adaptation")
    assert overall["verdict"] == "inconclusive" and "no retention measured" in overall["detail"]


def test_empty_store_is_a_user_error(tmp_path):
    with pytest.raises(TinaError, match="tina-probe eval"):
        run_hypothesis(tmp_path)


def test_best_checkpoint_is_never_scored_on_the_data_that_chose_it(tmp_path):
    """Rule R1: lab-probe peaks at step 100, lab-test at 200: the claims use step 100 on lab-test; without the
    held-out benchmark, half A of the test problems chooses and half B scores."""
    steps = [0, 100, 200]
    test = simulate_samples(steps, [0.3, 0.8, 0.95], [0.8] * 3, run="r", benchmark="lab-test", n_problems=150,
                            seed=1)
    probe = simulate_samples(steps, [0.3, 0.95, 0.5], [0.8] * 3, run="r", benchmark="lab-probe", n_problems=90,
                             seed=2)
    Store(tmp_path).write("samples", pd.concat([test, probe], ignore_index=True))
    hyp = run_hypothesis(tmp_path, rules=FAST)
    assert set(hyp["best_step"]) == {100.0} and set(hyp["best_chosen_on"]) == {"lab-probe"}
    dec = Store(tmp_path).read("gain_decomposition").iloc[0]
    assert (dec["benchmark"], dec["best_step"], dec["n_problems"]) == ("lab-test", 100, 150)
    alone = tmp_path / "alone"
    Store(alone).write("samples", test)
    hyp = run_hypothesis(alone, rules=FAST)
    assert set(hyp["best_chosen_on"]) == {"lab-test (half A)"}
    dec = Store(alone).read("gain_decomposition").iloc[0]
    half_b = int((~split_half(sorted(test["problem_id"].unique()))).sum())
    assert dec["n_problems"] == half_b and 50 < half_b < 100
    few = tmp_path / "few"
    Store(few).write("samples", test[test["problem_id"].isin(sorted(test["problem_id"].unique())[:10])])
    gd = _row(run_hypothesis(few, rules=FAST), "r", "gain_decomposition")
    assert gd["verdict"] == "inconclusive" and "fewer than 8 per half" in gd["detail"]


def test_task_kl_is_shown_not_tested_and_a_formatted_base_has_no_room_to_rise():
    rows = [{"run": "r", "step": s, "kind": "base" if s == 0 else "lora", "probe": probe, "metric": "kl",
             "value": v, "stderr": 0.01} for probe, v1 in (("kl_task", 0.5), ("kl_general", 0.01))
            for s, v in ((0, 0.0), (100, v1))]
    by = {r.statistic.split(":")[0]: r for r in knowledge_claims("r", retention_changes(pd.DataFrame(rows), "r", 100))}
    assert by["kl_task/kl"].verdict == "inconclusive" and "how far RL moved the policy" in by["kl_task/kl"].detail
    assert by["kl_general/kl"].verdict == "supported"
    assert knowledge_summary(list(by.values()))[0] == "supported"  # the task's own KL is no loss of knowledge
    ch = {"format_rate": ("no change", 13, 6), "pass1_lenient": ("changes", 13, 6)}
    full = _series(lambda s: np.full(len(s), 0.999), lambda s: np.where(s < 100, 0.3, 0.6))
    r = format_first_claim("r", pd.DataFrame(columns=list(_phase("x", 0, 0, 0, 0))), ch, "b", full, 300)
    assert r.verdict == "not supported" and "the base already formats" in r.detail


def test_one_sampling_prefers_the_label_that_holds_the_test_split():
    """A held-out split sampled with another n has its own label; the claims must read the test split's."""
    import pandas as pd

    from analysis.transitions import one_sampling

    df = pd.DataFrame({"run": "r", "step": [0, 3, 0, 3], "benchmark": ["x-probe", "x-probe", "x-test", "x-test"],
                       "sampling": ["n=2 T=1", "n=2 T=1", "n=4 T=1", "n=4 T=1"]})
    assert set(one_sampling(df, "r")["benchmark"]) == {"x-test"}


def test_strict_gain_claims_a_gain_on_the_two_sided_95_percent_ci():
    """Rule R5: the CI is scipy's two-sided (1 - alpha) paired-t interval, so a gain whose one-sided p lies between
    alpha / 2 and alpha (significant one-sided at 5%, not two-sided) is not claimed."""
    from scipy import stats as st

    from analysis.claims_gain import strict_gain_claim
    rng = np.random.default_rng(5)
    idx = [f"p{i:04d}" for i in range(40)]
    seen = set()
    for shift in np.linspace(0.0, 0.3, 31):
        s0 = rng.random(40).round(1)
        s1 = np.clip(s0 + shift + rng.normal(0, 0.3, 40), 0, 1).round(2)
        base = pd.DataFrame({"wf": 1.0, "strict": s0, "lenient": s0, "n": 4}, index=idx)
        best = pd.DataFrame({"wf": 1.0, "strict": s1, "lenient": s1, "n": 4}, index=idx)
        row = strict_gain_claim("r", base, best)
        ci = st.ttest_rel(s1, s0).confidence_interval(0.95)
        assert (row.ci_low, row.ci_high) == pytest.approx((ci.low, ci.high))
        assert (row.verdict == "supported") == (ci.low > 0)
        assert "95% CI" in row.detail
        seen.add(row.verdict)
    assert {"supported", "not supported"} <= seen  # both sides of the rule were exercised
