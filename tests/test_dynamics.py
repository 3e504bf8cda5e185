"""Series dynamics (`tina-probe dynamics`) on planted data with hand-computed answers: per-problem labels, the
pass@k crossover, exact maj@k (against enumeration of every subset) and held-out checkpoint selection."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from analysis.crossover import crossover, crossover_table
from analysis.dynamics import run_dynamics
from analysis.problem_dynamics import label_counts, label_problem, problem_dynamics_table
from analysis.selection import best_choice, default_pairs, parse_pairs, selection_table
from tina_probe.errors import TinaError
from tina_probe.majority import Votes, maj_at_k, maj_table, majority_curve, vote_counts
from tina_probe.passk import CORRECT_COLS, pass_at_k
from tina_probe.store import Store

N = 16


def planted_samples(run: str = "r", benchmark: str = "b", steps=(0, 10)) -> pd.DataFrame:
    """The issue's example: 10 problems x 16 samples. Problems p0-p4: the base right in 4 of 16, the checkpoint in
    16; p5-p9: the base right in 2 of 16, the checkpoint never (it answers 99 every time). Every completion is
    well formatted, so strict and lenient agree."""
    rows = []
    for step in steps:
        for p in range(10):
            good = (4 if p < 5 else 2) if step == 0 else (16 if p < 5 else 0)
            for i in range(N):
                ok = i < good
                wrong = str(50 + i % 3) if step == 0 else "99"  # the base spreads its wrong answers over 3 values
                rows.append({"run": run, "step": step, "kind": "base" if step == 0 else "lora", "benchmark": benchmark,
                             "sampling": "n=16", "problem_id": f"p{p}", "sample_idx": i,
                             "extracted_answer": "7" if ok else wrong, "correct_strict": ok, "correct_lenient": ok,
                             "well_formatted": True})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- crossover


def test_crossover_on_the_planted_series_is_at_k_4():
    s = planted_samples()
    table = crossover_table(s, CORRECT_COLS, n_boot=200)
    row = table[table["grading"] == "strict"].iloc[0]
    # checkpoint: pass@k = 0.5 for every k; base at k=1..4: 0.1875, 0.3458, 0.4786, 0.5893 (hand, C(12,k)/C(16,k))
    base = [0.5 * (pass_at_k(16, 4, k) + pass_at_k(16, 2, k)) for k in (1, 2, 3, 4)]
    assert base == pytest.approx([0.1875, (0.45 + 29 / 120) / 2, (1 - 220 / 560 + 1 - 364 / 560) / 2,
                                  (1 - 495 / 1820 + 1 - 1001 / 1820) / 2])
    assert base[2] < 0.5 <= base[3]
    assert row["k_star"] == 4 and row["max_k"] == 16 and row["n_problems"] == 10
    assert row["gap_at_1"] == pytest.approx(0.5 - 0.1875)
    assert row["gap_at_max_k"] == pytest.approx(0.5 - 1.0)  # the base solves all ten at k = 16
    assert row["k_star_low"] <= 4 <= row["k_star_high"]


def test_crossover_never_reached_is_null_and_range_brute_force():
    # the checkpoint solves a problem the base never samples: the base cannot catch up within n
    res = crossover([4, 4], [0, 1], [4, 4], [4, 1], n_boot=100)
    assert np.isnan(res["k_star"]) and res["gap_at_1"] == pytest.approx((1 + 0.25 - 0.25) / 2)
    # a checkpoint no better than the base crosses at k = 1
    assert crossover([8] * 3, [2, 3, 4], [8] * 3, [2, 3, 4], n_boot=50)["k_star"] == 1
    # the bootstrap range: every resample of 2 problems enumerated by hand
    b_n, b_c, c_n, c_c = [4, 4], [2, 0], [4, 4], [4, 0]
    res = crossover(b_n, b_c, c_n, c_c, n_boot=2000, seed=1)
    # resamples {0,0}: base pass@k = pass(4,2,k) reaches 1 at k=3; {1,1}: equal at k=1; {0,1}: k=3
    assert res["k_star"] == 3 and res["k_star_low"] == 1 and res["k_star_high"] == 3


# ----------------------------------------------------------------------------- maj@k


def brute_majority(labels: list, k: int) -> float:
    """maj@k by enumerating every k-subset; ties split uniformly; nobody voting counts as wrong."""
    total = 0.0
    for sub in itertools.combinations(range(len(labels)), k):
        tally = Counter(labels[i] for i in sub if labels[i] is not None)
        if not tally:
            continue
        top = max(tally.values())
        tied = [a for a, v in tally.items() if v == top]
        total += ("gold" in tied) / len(tied)
    return total / math.comb(len(labels), k)


def test_exact_majority_matches_enumeration_of_every_subset():
    rng = np.random.default_rng(0)
    for _ in range(150):
        n = int(rng.integers(1, 11))
        labels = [("gold", "a", "b", "c", None)[int(rng.integers(0, 5))] for _ in range(n)]
        tally = Counter(labels)
        votes = Votes(tally.pop("gold", 0), tuple(v for a, v in tally.items() if a is not None), tally.get(None, 0))
        curve = majority_curve(votes)
        assert curve == pytest.approx([brute_majority(labels, k) for k in range(1, n + 1)], abs=1e-12)


def test_majority_hand_values_and_pass1_equality():
    # 2 gold, 2 wrong 'a', 1 wrong 'b': k=2 -> pairs: gg 1, aa 0, ga/gb/ab ties: (4 + 2) * 1/2 + 1 = ... by hand
    v = Votes(2, (2, 1), 0)
    # C(5,2)=10 pairs: gg (1) -> 1; aa (1) -> 0; ga (4) -> 1/2 each; gb (2) -> 1/2 each; ab (2) -> 0
    assert maj_at_k(v, 2) == pytest.approx((1 + 4 / 2 + 2 / 2) / 10)
    assert maj_at_k(v, 1) == pytest.approx(2 / 5)  # maj@1 = pass@1
    assert maj_at_k(v, 5) == pytest.approx(0.5)  # 2 gold vs 2 'a': a two-way tie
    assert maj_at_k(Votes(0, (3,), 1), 2) == 0.0
    assert maj_at_k(Votes(1, (), 3), 4) == 1.0  # the only voter wins
    # a large n still agrees with a Monte Carlo estimate
    big = Votes(30, (25, 10, 5), 30)
    rng = np.random.default_rng(2)
    labels = np.array([0] * 30 + [1] * 25 + [2] * 10 + [3] * 5 + [-1] * 30)
    hits = 0.0
    for _ in range(20000):
        sub = rng.choice(labels, 9, replace=False)
        counts = Counter(int(x) for x in sub if x >= 0)
        top = max(counts.values()) if counts else 0
        tied = [a for a, c in counts.items() if c == top]
        hits += (0 in tied) / len(tied) if counts else 0.0
    assert maj_at_k(big, 9) == pytest.approx(hits / 20000, abs=0.01)


def test_vote_counts_strict_only_counts_well_formatted_answers():
    df = pd.DataFrame({"problem_id": ["p"] * 6, "extracted_answer": ["7", "7", " 5", "5 ", "5", None],
                       "correct_strict": [True, False, False, False, False, False],
                       "correct_lenient": [True, True, False, False, False, False],
                       "well_formatted": [True, False, True, True, False, False]})
    assert vote_counts(df, "lenient")["p"] == Votes(2, (3,), 1)  # ' 5' and '5 ' are one answer
    assert vote_counts(df, "strict")["p"] == Votes(1, (2,), 3)  # unformatted completions abstain
    with pytest.raises(TinaError, match="grading"):
        vote_counts(df, "loose")


def test_maj_table_on_the_planted_series():
    table = maj_table(planted_samples(), n_boot=200)
    strict = table[(table["grading"] == "strict")].set_index(["step", "k"])["value"]
    assert sorted(table["k"].unique()) == list(range(1, 17))
    # checkpoint: 5 problems always right, 5 always '99' -> 0.5 at every k
    assert strict.loc[10].to_numpy() == pytest.approx([0.5] * 16)
    # base at k=1 equals pass@1; at k=16 a p0-p4 problem has 4 gold vs 4/4/4 wrong: a four-way tie -> 1/4
    assert strict.loc[(0, 1)] == pytest.approx(0.1875)
    assert strict.loc[(0, 16)] == pytest.approx((5 * 0.25 + 5 * 0.0) / 10)


# ----------------------------------------------------------------------------- per-problem labels


@pytest.mark.parametrize("rates,label", [
    ([0.25, 0.5, 1.0], "learned"),
    ([0.125, 0.0, 0.0], "forgotten"),
    ([0.75, 0.25, 0.25], "forgotten"),
    ([0.75, 1.0, 0.5], "kept_solved"),
    ([0.0, 0.0, 0.0], "never_solved"),
    ([0.125, 0.25, 0.25], "never_solved"),
    ([0.0, 0.75, 0.0], "unstable"),
    ([0.0, 1.0, 0.0, 1.0], "unstable"),
])
def test_labels_follow_the_documented_rules(rates, label):
    assert label_problem(np.array(rates))[0] == label


def test_problem_dynamics_on_the_planted_series():
    s = planted_samples(steps=(0, 10, 20))
    table = problem_dynamics_table(s, CORRECT_COLS)
    strict = table[table["grading"] == "strict"].set_index("problem_id")
    assert (strict.loc[[f"p{i}" for i in range(5)], "label"] == "learned").all()
    assert (strict.loc[[f"p{i}" for i in range(5, 10)], "label"] == "forgotten").all()
    p0 = strict.loc["p0"]
    assert (p0["base_rate"], p0["best_rate"], p0["best_step"], p0["final_rate"]) == (0.25, 1.0, 10, 1.0)
    assert p0["first_step_solved"] == 10 and p0["n_flips"] == 1
    assert np.isnan(strict.loc["p7", "first_step_solved"]) and strict.loc["p7", "n_flips"] == 0
    counts = label_counts(table).set_index("grading")
    assert counts.loc["strict", "learned"] == 5 and counts.loc["strict", "forgotten"] == 5
    assert counts.loc["strict", "unstable"] == 0


# ----------------------------------------------------------------------------- selection


def _passk_rows(run, bench, values):
    return [{"run": run, "step": s, "kind": "base" if s == 0 else "lora", "benchmark": bench, "sampling": "x",
             "grading": g, "k": 1, "value": v if g == "strict" else 0.9} for s, v in values.items()
            for g in ("strict", "lenient")]


def test_selection_picks_on_the_held_out_benchmark_and_scores_on_test():
    rows = (_passk_rows("r", "lab-test", {0: 0.2, 10: 0.50, 20: 0.62, 30: 0.55})
            + _passk_rows("r", "lab-probe", {0: 0.2, 10: 0.70, 20: 0.60, 30: 0.70}))
    passk = pd.DataFrame(rows)
    assert default_pairs(["lab-test", "lab-probe", "aime24"]) == [("lab-probe", "lab-test")]
    sel = selection_table(passk).iloc[0]
    assert (sel["benchmark"], sel["selected_on"], sel["selected_step"]) == ("lab-test", "lab-probe", 10)
    assert sel["value_at_selected"] == 0.50 and (sel["max_value"], sel["max_step"]) == (0.62, 20)
    assert sel["optimism"] == pytest.approx(0.12) and sel["selected_on_value"] == 0.70
    choice = best_choice(passk, "r", selection_table(passk))
    assert (choice.step, choice.benchmark, choice.chosen_on, choice.held_out) == (10, "lab-test", "lab-probe", True)
    named = selection_table(passk, parse_pairs(["lab-test=lab-probe"])).iloc[0]
    assert (named["selected_step"], named["value_at_selected"]) == (20, 0.60)
    with pytest.raises(TinaError, match="aime24"):
        selection_table(passk, parse_pairs(["aime24=lab-test"]))
    with pytest.raises(TinaError, match="HELD_OUT"):
        parse_pairs(["=lab-test"])
    assert selection_table(passk[passk["benchmark"] == "lab-test"]).empty


# ----------------------------------------------------------------------------- the command


def test_run_dynamics_writes_the_four_tables(tmp_path):
    s = pd.concat([planted_samples(benchmark="lab-test"), planted_samples(benchmark="lab-probe")], ignore_index=True)
    s["completion"] = "..."
    Store(tmp_path).write("samples", s)
    tables = run_dynamics(tmp_path, n_boot=100)
    stored = {t: Store(tmp_path).read(t) for t in ("problem_dynamics", "crossover", "maj", "selection")}
    assert all(not df.empty for df in stored.values())
    assert set(stored["crossover"]["benchmark"]) == {"lab-test", "lab-probe"}
    assert stored["crossover"]["k_star"].tolist() == [4.0] * 4
    assert len(stored["maj"]) == 2 * 2 * 2 * 16  # benchmarks x steps x gradings x k
    assert stored["selection"].iloc[0]["selected_on"] == "lab-probe"
    assert tables["problem_dynamics"].shape[0] == 2 * 2 * 10


def test_runs_over_two_processes_give_the_same_tables(tmp_path):
    """run_dynamics(workers=2) (`dynamics --workers`, as the lab study runs it): each run's bootstraps start from the
    same seed whatever process computes them, so every table is equal cell for cell, rows in the same order."""
    s = pd.concat([planted_samples(run=r, benchmark=b) for r in ("a", "b", "c") for b in ("lab-test", "lab-probe")],
                  ignore_index=True)
    s["completion"] = "..."
    for folder in ("one", "two"):
        Store(tmp_path / folder).write("samples", s)
    one = run_dynamics(tmp_path / "one", n_boot=50)
    two = run_dynamics(tmp_path / "two", n_boot=50, workers=2)
    assert one.keys() == two.keys() and set(one["crossover"]["run"]) == {"a", "b", "c"}
    for name in one:
        pd.testing.assert_frame_equal(one[name], two[name], check_exact=True)


def test_run_dynamics_without_samples_is_a_user_error(tmp_path):
    with pytest.raises(TinaError, match="tina-probe eval"):
        run_dynamics(tmp_path)


def test_maj_cis_resample_problems_like_passk():
    """maj@1 is pass@1: same value, and its bootstrap CI (one resample of problems for every k) lands where
    passk's (one bootstrap per k) does."""
    from tina_probe.passk import passk_with_ci

    rng = np.random.default_rng(5)
    p = rng.beta(1, 1, 200)
    correct = rng.random((200, 8)) < p[:, None]
    rows = [{"run": "r", "step": 0, "kind": "base", "benchmark": "b", "sampling": "s", "problem_id": f"p{i}",
             "sample_idx": j, "extracted_answer": "1" if correct[i, j] else str(j % 2 + 2),
             "correct_strict": bool(correct[i, j]), "correct_lenient": bool(correct[i, j]), "well_formatted": True}
            for i in range(200) for j in range(8)]
    maj = maj_table(pd.DataFrame(rows), gradings=("strict",), n_boot=2000).set_index("k")
    value, lo, hi = passk_with_ci(correct, 1, n_boot=2000)
    assert maj.loc[1, "value"] == pytest.approx(value)
    assert (maj.loc[1, "ci_low"], maj.loc[1, "ci_high"]) == pytest.approx((lo, hi), abs=0.01)
    assert (maj["ci_low"] <= maj["value"]).all() and (maj["value"] <= maj["ci_high"]).all()
