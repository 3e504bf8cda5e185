"""The format-adaptation tests against planted ground truth: a format-only run is 'supported', a real accuracy
gain is 'not supported'; each statistic is checked against hand or brute-force values."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis.hypothesis import (
    ClaimRow,
    format_adaptation_claim,
    format_first_claim,
    gain_decomposition,
    geometry_claims,
    knowledge_claims,
    knowledge_lora_vs_full,
    mcnemar,
    retention_changes,
    run_hypothesis,
    tost,
)
from analysis.phase import run_phase
from analysis.simulate import simulate_samples, write_planted_study
from tina_probe.errors import TinaError
from tina_probe.store import Store


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    run_dirs = write_planted_study(root, seed=0, n_boot=100)
    run_phase([str(d) for d in run_dirs], root / "results", n_boot=50)
    hyp = run_hypothesis(root / "results", n_boot=400)
    return root / "results", hyp


def _row(hyp, run, claim):
    rows = hyp[(hyp["run"] == run) & (hyp["claim"] == claim)]
    assert len(rows) == 1, (run, claim, hyp)
    return rows.iloc[0]


def test_planted_format_adaptation_is_supported(study):
    _, hyp = study
    assert _row(hyp, "planted", "format_adaptation")["verdict"] == "supported"
    ff = _row(hyp, "planted", "format_first")
    assert ff["verdict"] == "supported" and "step 100" in ff["detail"]
    gd = _row(hyp, "planted", "gain_decomposition")
    assert gd["verdict"] == "supported"
    assert gd["ci_low"] <= 1.0 <= gd["ci_high"]  # planted: P(correct | wf) constant, so the format part is all
    assert _row(hyp, "planted", "mcnemar_strict")["verdict"] == "supported"
    lenient = _row(hyp, "planted", "mcnemar_lenient")
    assert lenient["verdict"] == "not supported" and lenient["ci_low"] <= 0 <= lenient["ci_high"]


def test_control_accuracy_gain_is_not_supported(study):
    _, hyp = study
    assert _row(hyp, "control", "format_adaptation")["verdict"] == "not supported"
    assert _row(hyp, "control", "format_first")["verdict"] == "not supported"
    gd = _row(hyp, "control", "gain_decomposition")
    assert gd["verdict"] == "not supported" and gd["ci_low"] <= 0.0 <= gd["ci_high"]  # planted share: 0
    lenient = _row(hyp, "control", "mcnemar_lenient")
    assert lenient["verdict"] == "supported" and lenient["value"] > 0


def test_tables_written_with_the_store_columns(study):
    out, hyp = study
    stored = Store(out).read("hypothesis")
    assert list(stored.columns[:8]) == ["run", "claim", "statistic", "value", "ci_low", "ci_high", "p_value",
                                        "verdict"]
    assert set(stored["verdict"]) <= {"supported", "not supported", "inconclusive"}
    decomp = Store(out).read("gain_decomposition").set_index("run")
    assert decomp.loc["planted", "format_base"] == pytest.approx(0.3, abs=0.05)
    assert decomp.loc["planted", "format_best"] == pytest.approx(0.9, abs=0.05)
    parts = decomp["format_part"] + decomp["correct_part"]
    assert np.allclose(parts, decomp["gain"])  # the Shapley split is exact


def test_gain_decomposition_matches_hand_values():
    idx = pd.MultiIndex.from_tuples([("b", f"p{i}") for i in range(4)], names=["benchmark", "problem_id"])
    base = pd.DataFrame({"wf": [1, 1, 0, 0], "strict": [1, 0, 0, 0], "lenient": [1, 0, 1, 0]}, index=idx, dtype=float)
    best = pd.DataFrame({"wf": [1, 1, 1, 1], "strict": [1, 1, 1, 0], "lenient": [1, 1, 1, 0]}, index=idx, dtype=float)
    d = gain_decomposition(base, best, n_boot=200)
    # F 0.5 -> 1, C 0.5 -> 0.75: format part 0.5 * 0.625, correctness part 0.25 * 0.75
    assert d["gain"] == pytest.approx(0.5)
    assert d["format_part"] == pytest.approx(0.3125) and d["correct_part"] == pytest.approx(0.1875)
    assert d["share"] == pytest.approx(0.625)


def test_mcnemar_is_the_exact_binomial_test_of_discordant_pairs():
    base = np.array([1] * 30 + [1] * 2 + [0] * 10 + [0] * 8, bool)
    best = np.array([1] * 30 + [0] * 2 + [1] * 10 + [0] * 8, bool)
    m = mcnemar(base, best)
    brute = min(1.0, 2 * sum(math.comb(12, i) for i in range(0, 3)) / 2 ** 12)
    assert (m["b"], m["c"]) == (2, 10)
    assert m["p"] == pytest.approx(brute)
    assert m["diff"] == pytest.approx(8 / 50) and m["ci_low"] < 8 / 50 < m["ci_high"]


def test_format_first_reads_the_order_of_transitions():
    def phase(metric, step, low, high, size, source="eval"):
        return {"run": "r", "metric": metric, "change_step": step, "change_step_low": low, "change_step_high": high,
                "method": "pelt", "size": size, "n_points": 13, "source": source, "benchmark": "b"}

    status = {"format_rate": "changes", "pass1_lenient": "changes"}
    early = pd.DataFrame([phase("format_rate", 100, 90, 110, 0.5), phase("pass1_lenient", 200, 190, 210, 0.1)])
    late = pd.DataFrame([phase("format_rate", 200, 190, 210, 0.5), phase("pass1_lenient", 100, 90, 110, 0.1)])
    close = pd.DataFrame([phase("format_rate", 100, 75, 125, 0.5), phase("pass1_lenient", 110, 100, 120, 0.1)])
    r = format_first_claim("r", early, status, "b")
    assert r.verdict == "supported" and (r.value, r.ci_low, r.ci_high) == (100, 80, 120)
    assert format_first_claim("r", late, status, "b").verdict == "not supported"
    assert format_first_claim("r", close, status, "b").verdict == "inconclusive"
    assert format_first_claim("r", early.iloc[:0], {}, "b").verdict == "inconclusive"  # phase never ran
    # a staircase: the format transition starts at its first step (onsets are compared, not centres)
    stair = pd.DataFrame([phase("format_rate", 60, 55, 65, 0.1), phase("format_rate", 100, 95, 105, 0.5),
                          phase("pass1_lenient", 80, 75, 85, 0.1)])
    s = format_first_claim("r", stair, status, "b")
    assert s.verdict == "supported" and (s.value, s.ci_low, s.ci_high) == (20, 10, 30) and "starts at step 60" in s.detail


def test_knowledge_kept_tost_and_lora_vs_full():
    rows = []
    for run, kind, after in (("lora1", "lora", 0.61), ("full1", "full", 0.40)):
        rows += [{"run": run, "step": 0, "kind": "base", "probe": "facts", "metric": "acc", "value": 0.60,
                  "stderr": 0.01},
                 {"run": run, "step": 100, "kind": kind, "probe": "facts", "metric": "acc", "value": after,
                  "stderr": 0.01},
                 {"run": run, "step": 0, "kind": "base", "probe": "facts", "metric": "perplexity", "value": 5.0,
                  "stderr": 0.1},
                 {"run": run, "step": 100, "kind": kind, "probe": "facts", "metric": "perplexity", "value": 9.0,
                  "stderr": 0.1}]
    retention = pd.DataFrame(rows)
    changes = {r: retention_changes(retention, r, 100) for r in ("lora1", "full1")}
    assert list(changes["lora1"]["metric"]) == ["acc"]  # perplexity is no proportion: no absolute margin
    kept = knowledge_claims("lora1", changes["lora1"])[0]
    lost = knowledge_claims("full1", changes["full1"])[0]
    assert kept.verdict == "supported" and kept.value == pytest.approx(0.01)
    assert lost.verdict == "not supported" and lost.value == pytest.approx(-0.20)
    p, lo, hi = tost(0.0, 0.01, 0.05)
    assert p < 1e-5 and lo < 0 < hi
    cross = knowledge_lora_vs_full(changes, {"lora1": "lora", "full1": "full"})
    assert len(cross) == 1 and cross[0].verdict == "supported" and cross[0].value == pytest.approx(0.21)


def test_update_geometry_on_planted_spectra():
    rng = np.random.default_rng(0)
    rows = []
    for run, kind, intr, rank in (("l", "lora", 6, 4), ("f", "full", 0, 60)):
        for step in (100, 200):
            for layer in range(6):
                for module in ("q", "v"):
                    rows.append({"run": run, "step": step, "kind": kind, "layer": layer, "module": module,
                                 "intruders": rng.poisson(intr) if step == 200 else 0,
                                 "energy_rank90": rank + rng.integers(0, 3)})
    out = geometry_claims(pd.DataFrame(rows), {"l": 200, "f": 200}, n_boot=200)
    by = {r.statistic.split(":")[0]: r for r in out}
    assert by["intruders"].verdict == "supported" and by["intruders"].value > 0
    assert by["energy_rank90"].verdict == "supported" and by["energy_rank90"].value < 0
    assert all(r.p_value < 1e-3 for r in out)


def test_overall_verdict_rules():
    def row(claim, verdict, value=0.0, p=math.nan, detail=""):
        return ClaimRow("r", claim, "s", value, p_value=p, verdict=verdict, detail=detail)

    good = {"format_first": row("format_first", "supported"),
            "gain_decomposition": row("gain_decomposition", "supported", 0.9),
            "mcnemar_lenient": row("mcnemar_lenient", "not supported", 0.01, 0.6),
            "mcnemar_strict": row("mcnemar_strict", "supported", 0.4, 1e-6)}
    assert format_adaptation_claim("r", good).verdict == "supported"
    rose = good | {"mcnemar_lenient": row("mcnemar_lenient", "supported", 0.1, 0.001)}
    assert format_adaptation_claim("r", rose).verdict == "supported"  # the decomposition weighs a lenient rise
    fell = good | {"mcnemar_lenient": row("mcnemar_lenient", "supported", -0.1, 0.001)}
    assert format_adaptation_claim("r", fell).verdict == "not supported"
    assert "knowledge lost: lenient accuracy" in format_adaptation_claim("r", fell).detail
    forgot = [row("knowledge_kept", "not supported")]
    assert format_adaptation_claim("r", good, knowledge=forgot).verdict == "not supported"
    kept = [row("knowledge_kept", "supported"), row("knowledge_kept", "inconclusive")]
    assert format_adaptation_claim("r", good, knowledge=kept).verdict == "supported"
    accuracy_first = good | {"format_first": row("format_first", "not supported")}
    assert format_adaptation_claim("r", accuracy_first).verdict == "not supported"
    unclear = good | {"format_first": row("format_first", "inconclusive")}
    assert format_adaptation_claim("r", unclear).verdict == "inconclusive"
    no_format = good | {"format_first": row("format_first", "not supported", detail="no format transition (rise)"),
                        "gain_decomposition": row("gain_decomposition", "inconclusive", 0.5),
                        "mcnemar_lenient": row("mcnemar_lenient", "supported", 0.1, 0.001)}
    assert format_adaptation_claim("r", no_format).verdict == "not supported"
    assert format_adaptation_claim("r", {}).verdict == "inconclusive"


def test_samples_only_store_still_gives_per_problem_claims(tmp_path):
    steps = [0, 100, 200]
    s = simulate_samples(steps, [0.3, 0.9, 0.9], [0.8, 0.8, 0.8], run="solo", n_problems=120, seed=3)
    Store(tmp_path).write("samples", s)
    hyp = run_hypothesis(tmp_path, n_boot=200)
    assert _row(hyp, "solo", "gain_decomposition")["verdict"] == "supported"
    assert _row(hyp, "solo", "format_first")["verdict"] == "inconclusive"  # no phases: phase never ran
    assert _row(hyp, "solo", "format_adaptation")["verdict"] == "inconclusive"


def test_empty_store_is_a_user_error(tmp_path):
    with pytest.raises(TinaError, match="tina-probe eval"):
        run_hypothesis(tmp_path)


def test_best_checkpoint_is_chosen_on_the_held_out_benchmark_when_there_is_one(tmp_path):
    """lab-probe peaks at step 100, lab-test at 200: the tests use step 100 on lab-test's problems only, and every
    row says so; without the held-out benchmark the test's own maximum (200) is used."""
    steps = [0, 100, 200]
    test = simulate_samples(steps, [0.3, 0.8, 0.95], [0.8] * 3, run="r", benchmark="lab-test", n_problems=150,
                            seed=1)
    probe = simulate_samples(steps, [0.3, 0.95, 0.5], [0.8] * 3, run="r", benchmark="lab-probe", n_problems=90,
                             seed=2)
    Store(tmp_path).write("samples", pd.concat([test, probe], ignore_index=True))
    hyp = run_hypothesis(tmp_path, n_boot=200)
    assert set(hyp["best_step"]) == {100.0} and set(hyp["best_chosen_on"]) == {"lab-probe"}
    dec = Store(tmp_path).read("gain_decomposition").iloc[0]
    assert (dec["benchmark"], dec["best_step"], dec["best_chosen_on"], dec["n_problems"]) == ("lab-test", 100,
                                                                                             "lab-probe", 150)
    assert dec["format_best"] == pytest.approx(0.8, abs=0.05)  # lab-test's format rate at step 100
    alone = tmp_path / "alone"
    Store(alone).write("samples", test)
    hyp = run_hypothesis(alone, n_boot=200)
    assert set(hyp["best_step"]) == {200.0} and set(hyp["best_chosen_on"]) == {"lab-test"}
