"""pass@k against brute-force enumeration, bootstrap and Wilson CIs, and the passk / format tables."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from tina_probe.errors import TinaError
from tina_probe.passk import format_table, ks_for, pass_at_k, passk_table, passk_with_ci, ratio_ci, wilson_ci


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of n samples (c of them correct) that hold at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


@st.composite
def nck(draw):
    n = draw(st.integers(1, 12))
    return n, draw(st.integers(0, n)), draw(st.integers(1, n))


@settings(max_examples=300, deadline=None)
@given(nck())
def test_pass_at_k_equals_enumeration(args):
    n, c, k = args
    assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), rel=1e-12, abs=1e-12)


def test_pass_at_k_edges():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 6, 5) == 1.0  # only 4 wrong samples: every 5-subset holds a correct one
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)
    # large n stays finite where the binomial form would overflow floats
    assert pass_at_k(2000, 3, 1000) == pytest.approx(1 - math.comb(1997, 1000) / math.comb(2000, 1000))
    for bad in [(5, 1, 6), (5, 6, 1), (5, -1, 1), (5, 1, 0), (0, 0, 0)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_ks_for():
    assert ks_for(1) == [1]
    assert ks_for(8) == [1, 2, 4, 8]
    assert ks_for(12) == [1, 2, 4, 8, 12]
    with pytest.raises(ValueError):
        ks_for(0)


def test_passk_with_ci_value_and_interval():
    rng = np.random.default_rng(1)
    correct = rng.random((40, 8)) < rng.random((40, 1))  # problems of varied difficulty
    for k in (1, 4, 8):
        value, lo, hi = passk_with_ci(correct, k, n_boot=500, seed=3)
        expected = np.mean([brute_pass_at_k(8, int(c), k) for c in correct.sum(axis=1)])
        assert value == pytest.approx(expected)
        assert lo <= value <= hi and lo < hi
        assert passk_with_ci(correct, k, n_boot=500, seed=3) == (value, lo, hi)  # seeded


def test_ci_degenerate_cases():
    assert passk_with_ci(np.ones((5, 4), bool), 2) == (1.0, 1.0, 1.0)
    value, lo, hi = passk_with_ci(np.array([[True, False]]), 1)
    assert value == 0.5 and math.isnan(lo) and math.isnan(hi)  # one problem: nothing to resample
    assert all(math.isnan(x) for x in ratio_ci(np.array([]), np.array([])))


def _wilson_by_hand(s: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    z = norm.ppf(1 - alpha / 2)
    p = s / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("s, n", [(7, 20), (0, 10), (50, 50), (1, 3)])
def test_wilson_matches_formula(s, n):
    assert wilson_ci(s, n) == pytest.approx(_wilson_by_hand(s, n), abs=1e-12)


def test_wilson_known_value_and_empty():
    assert wilson_ci(7, 20)[0] == pytest.approx(0.1812, abs=1e-4)  # textbook value for 7/20
    assert wilson_ci(7, 20)[1] == pytest.approx(0.5671, abs=1e-4)
    assert all(math.isnan(x) for x in wilson_ci(0, 0))


def _samples() -> pd.DataFrame:
    """Two groups; in group 'a' problem p2 has only 3 samples while p0, p1 have 5."""
    rng = np.random.default_rng(0)
    rows = []
    for run, counts in (("a", {"p0": 5, "p1": 5, "p2": 3}), ("b", {"p0": 4, "p1": 4})):
        for pid, count in counts.items():
            for i in range(count):
                strict = bool(rng.random() < 0.4)
                rows.append(dict(run=run, step=10, kind="lora", benchmark="lab", problem_id=pid, sample_idx=i,
                                 completion="", extracted_answer="", correct_strict=strict,
                                 correct_lenient=strict or bool(rng.random() < 0.5), think_closed=bool(i % 2),
                                 boxed=i % 3, truncated=i == 0, n_tokens=10 + i, well_formatted=i % 3 == 1,
                                 answer_tag=False))
    return pd.DataFrame(rows)


def test_passk_table_equals_brute_force():
    samples = _samples()
    table = passk_table(samples, n_boot=200)
    assert list(table.columns[:10]) == ["run", "step", "kind", "benchmark", "grading", "k", "n", "value",
                                        "ci_low", "ci_high"]
    for (run, grading), part in table.groupby(["run", "grading"]):
        col = f"correct_{grading}"
        sub = samples[samples.run == run]
        per_problem = {pid: (len(g), int(g[col].sum())) for pid, g in sub.groupby("problem_id")}
        max_n = max(n for n, _ in per_problem.values())
        assert list(part.k) == ks_for(max_n)
        for row in part.itertuples():
            used = [(n, c) for n, c in per_problem.values() if n >= row.k]
            assert row.value == pytest.approx(np.mean([brute_pass_at_k(n, c, row.k) for n, c in used]))
            assert row.n == min(n for n, _ in used) and row.n_problems == len(used)
            if len(used) > 1:
                assert row.ci_low <= row.value <= row.ci_high
    a_k4 = table[(table.run == "a") & (table.k == 4)]
    assert set(a_k4.n_problems) == {2}  # p2 with 3 samples is left out of k=4


def test_format_table():
    samples = _samples()
    table = format_table(samples, n_boot=200)
    assert list(table.columns) == ["run", "step", "kind", "benchmark", "metric", "value", "ci_low", "ci_high"]
    a = samples[samples.run == "a"]
    got = table[table.run == "a"].set_index("metric")
    assert got.loc["format_rate", "value"] == pytest.approx(a.well_formatted.mean())
    assert got.loc["boxed_one", "value"] == pytest.approx((a.boxed == 1).mean())
    assert got.loc["truncation_rate", "value"] == pytest.approx(a.truncated.mean())
    assert got.loc["think_closed", "value"] == pytest.approx(a.think_closed.mean())
    assert got.loc["answer_tag", "value"] == 0.0
    lo, hi = wilson_ci(int(a.truncated.sum()), len(a))
    assert (got.loc["truncation_rate", "ci_low"], got.loc["truncation_rate", "ci_high"]) == pytest.approx((lo, hi))
    assert got.loc["mean_accuracy_strict", "value"] == pytest.approx(a.correct_strict.mean())  # over samples
    assert got.loc["mean_accuracy_lenient", "value"] == pytest.approx(a.correct_lenient.mean())
    assert got.loc["mean_tokens", "value"] == pytest.approx(a.n_tokens.mean())
    for metric in ("mean_accuracy_strict", "mean_accuracy_lenient", "mean_tokens"):
        assert got.loc[metric, "ci_low"] <= got.loc[metric, "value"] <= got.loc[metric, "ci_high"]


def test_tables_name_missing_columns():
    with pytest.raises(TinaError, match="correct_lenient"):
        passk_table(_samples().drop(columns="correct_lenient"))
    with pytest.raises(TinaError, match="n_tokens"):
        format_table(_samples().drop(columns="n_tokens"))
