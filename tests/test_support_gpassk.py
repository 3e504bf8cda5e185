"""G-Pass@k_tau against brute-force enumeration of k-subsets; support flows and answer entropy on hand-made
tables (analysis/support.py rules S1-S4)."""
import itertools
import math

import numpy as np
import pandas as pd
import pytest

from analysis.support import answer_entropy, answer_entropy_table, flow_counts, support_rates, support_table
from tina_probe.gpassk import g_pass_at_k, gpassk_table, needed_correct
from tina_probe.passk import CORRECT_COLS, pass_at_k


def brute_gpass(n, c, k, tau):
    """Share of k-subsets of n samples (c correct) with at least ceil(tau k) correct, by enumeration."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    need = math.ceil(round(tau * k, 9))
    return sum(sum(samples[i] for i in s) >= need for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 4, 7, 8])
@pytest.mark.parametrize("tau", [0.25, 0.5, 0.75, 1.0])
def test_g_pass_equals_enumeration(n, tau):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert g_pass_at_k(n, c, k, tau) == pytest.approx(brute_gpass(n, c, k, tau), abs=1e-12)


def test_g_pass_limits():
    # tau small enough that one correct sample suffices: pass@k; tau = 1: all k correct (pass^k without replacement)
    for n, c, k in [(8, 3, 4), (10, 0, 2), (6, 6, 6)]:
        assert g_pass_at_k(n, c, k, 1 / (2 * k)) == pytest.approx(pass_at_k(n, c, k))
        assert g_pass_at_k(n, c, k, 1.0) == pytest.approx(math.comb(c, k) / math.comb(n, k))
    assert needed_correct(10, 0.7) == 7  # not 8 from 0.7 * 10 = 7.000000000000001
    with pytest.raises(ValueError):
        g_pass_at_k(4, 5, 2, 0.5)


def _samples(rows):
    """rows: (run, step, problem, [correct flags], [answers])."""
    out = []
    for run, step, pid, flags, answers in rows:
        for i, (ok, a) in enumerate(zip(flags, answers)):
            out.append({"run": run, "step": step, "kind": "base" if step == 0 else "lora", "benchmark": "b",
                        "sampling": "", "problem_id": pid, "sample_idx": i, "correct_strict": ok,
                        "correct_lenient": ok, "extracted_answer": a})
    return pd.DataFrame(out)


def test_gpassk_table_mean_over_problems():
    df = _samples([("r", 0, "p1", [1, 1, 0, 0], list("aabb")), ("r", 0, "p2", [1, 1, 1, 0], list("aaab"))])
    t = gpassk_table(df, n_boot=50)
    row = t[(t.grading == "strict") & (t.k == 4) & (t.tau == 0.75)].iloc[0]
    assert row.value == pytest.approx((brute_gpass(4, 2, 4, 0.75) + brute_gpass(4, 3, 4, 0.75)) / 2)
    assert set(t.k) == {1, 2, 4} and set(t.tau) == {0.5, 0.75, 1.0}


def test_support_flows_hand_made():
    # base: p1 solved, p2 solved, p3 not, p4 not; step 5: p1 solved, p2 lost, p3 gained, p4 still out
    rows = [("r", 0, "p1", [1, 0], "xy"), ("r", 0, "p2", [0, 1], "xy"), ("r", 0, "p3", [0, 0], "xy"),
            ("r", 0, "p4", [0, 0], "xy"),
            ("r", 5, "p1", [1, 1], "xx"), ("r", 5, "p2", [0, 0], "yy"), ("r", 5, "p3", [0, 1], "yx"),
            ("r", 5, "p4", [0, 0], "zz")]
    t = support_table(_samples(rows), CORRECT_COLS, n_boot=200)
    s = t[(t.grading == "strict")].set_index("metric")
    assert (s.kept.iloc[0], s.gained.iloc[0], s.lost.iloc[0], s.out.iloc[0]) == (1, 1, 1, 1)
    assert s.loc["srr", "value"] == pytest.approx(0.5)
    assert s.loc["ndr", "value"] == pytest.approx(0.5)
    assert s.loc["nscr", "value"] == pytest.approx(0.0)
    assert s.loc["srr", "threshold"] == pytest.approx(0.5)  # 1 correct of 2 samples
    assert s.loc["srr", "ci_low"] <= 0.5 <= s.loc["srr", "ci_high"]
    # a stricter threshold (2 of 2): only p1 at step 5 is in support, none at the base -> P 0, E 1, S 0
    t2 = support_table(_samples(rows), CORRECT_COLS, min_correct=2, n_boot=50)
    s2 = t2[t2.grading == "strict"].set_index("metric")
    assert (s2.kept.iloc[0], s2.gained.iloc[0], s2.lost.iloc[0]) == (0, 1, 0)
    assert np.isnan(s2.loc["srr", "value"]) and s2.loc["ndr", "value"] == 1.0


def test_flow_counts_and_rates():
    assert flow_counts([1, 1, 0, 0], [1, 0, 1, 0]) == (1, 1, 1, 1)
    r = support_rates(3, 1, 2)
    assert r["srr"] == pytest.approx(3 / 5) and r["ndr"] == pytest.approx(1 / 4) and r["nscr"] == pytest.approx(-1 / 6)


def test_answer_entropy():
    assert answer_entropy(["4", "4", " 4 ", "4"]) == (4, 1, 0.0)
    answered, distinct, h = answer_entropy(["1", "2", None, ""])  # NA counts as one class (2 of 4 samples)
    assert (answered, distinct) == (2, 2) and h == pytest.approx(-2 * 0.25 * math.log(0.25) - 0.5 * math.log(0.5))
    assert answer_entropy([None, None]) == (0, 0, 0.0)  # all NA: one class
    assert np.isnan(answer_entropy([])[2])
    rows = [("r", 0, "p1", [1, 0, 0, 0], ["1", "2", "3", "4"]), ("r", 5, "p1", [1, 1, 1, 1], ["1"] * 4)]
    t = answer_entropy_table(_samples(rows)).set_index("step")
    assert t.loc[0, "answer_entropy"] == pytest.approx(math.log(4)) and t.loc[5, "answer_entropy"] == 0.0
    mixed = answer_entropy_table(_samples([("r", 0, "p1", [1, 0, 0, 0], ["1", "2", None, ""])])).iloc[0]
    assert (mixed.n_answered, mixed.n_distinct) == (2, 2)  # the table and the pure function agree
    assert mixed.answer_entropy == pytest.approx(answer_entropy(["1", "2", None, ""])[2])
