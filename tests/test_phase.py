"""Change points on planted curves: steps found inside their ranges, noise left alone, logs read, gaps tolerated."""

import logging

import numpy as np
import pandas as pd
import pytest
import ruptures as rpt

from analysis.phase import (
    CostMeanShift,
    StepDetector,
    best_vs_transition,
    curve_change_points,
    detect_phases,
    eval_curves,
    load_training_log,
    main_change,
    fitted_sigma,
    run_phase,
)
from analysis.simulate import simulate_log_history, step_curve, write_run_folder
from tina_probe.errors import TinaError
from tina_probe.store import Store


def _step_signal(n, at, jump, sigma, seed):
    rng = np.random.default_rng(seed)
    y = rng.normal(0.0, sigma, n)
    y[at:] += jump
    return y


def test_prefix_sum_cost_matches_ruptures_l2():
    y = _step_signal(50, 20, 1.0, 0.5, 0)
    ours, theirs = CostMeanShift().fit(y), rpt.costs.CostL2().fit(y)
    for a, b in [(0, 50), (0, 20), (20, 50), (7, 9), (13, 41)]:
        assert ours.error(a, b) == pytest.approx(theirs.error(a, b), rel=1e-9, abs=1e-9)
    pen = 3.0
    for ours_m, theirs_m in (("pelt", rpt.Pelt), ("binseg", rpt.Binseg)):
        expected = theirs_m(model="l2", min_size=2, jump=1).fit(y).predict(pen=pen)
        assert StepDetector(ours_m).fit(y).predict(pen) == expected


def test_prefix_sum_cost_in_python_floats_equals_numpy_float64_bit_for_bit():
    """The cost keeps its prefix sums as Python floats for speed; every segment's cost equals the one computed
    with numpy float64 scalars (as it was), exactly."""
    rng = np.random.default_rng(5)
    y = np.cumsum(rng.normal(size=120)) * 1e3 + 0.1
    cost = CostMeanShift().fit(y)
    c = y - y.mean()
    s1, s2 = np.concatenate([[0.0], np.cumsum(c)]), np.concatenate([[0.0], np.cumsum(c * c)])
    for start in range(0, 120, 7):
        for end in range(start + 1, 121, 5):
            s = s1[end] - s1[start]
            assert cost.error(start, end) == max(0.0, float(s2[end] - s2[start] - s * s / (end - start)))


def test_fitted_sigma_ignores_the_steps():
    y = _step_signal(400, 150, 5.0, 0.2, 1)
    y[300:] -= 3.0
    assert fitted_sigma(y) == pytest.approx(0.2, rel=0.1)
    assert fitted_sigma(np.full(20, 0.5)) == 0.0  # a constant curve: no noise, no change points
    assert StepDetector().fit_predict(np.full(20, 0.5)) == [20]
    noiseless = np.repeat([0.3, 0.9, 0.6], [5, 6, 4])
    assert StepDetector().fit_predict(noiseless) == [5, 11, 15]


@pytest.mark.parametrize("method", ["pelt", "binseg"])
@pytest.mark.parametrize("seed", range(3))
def test_planted_step_is_found_inside_its_range(method, seed):
    steps = np.arange(60) * 10
    y = _step_signal(60, 25, 1.0, 0.2, seed)  # a 5-sigma step at step 250
    cps, sigma, _ = curve_change_points(steps, y, method=method, n_boot=60, seed=seed)
    assert len(cps) == 1
    assert cps[0].change_step_low <= 250 <= cps[0].change_step_high
    assert cps[0].size == pytest.approx(1.0, abs=0.15)
    assert sigma == pytest.approx(0.2, rel=0.35)


def test_ranges_cover_a_3_sigma_step_most_of_the_time():
    steps = np.arange(40) * 10
    covered = 0
    for seed in range(30):
        cps, _, _ = curve_change_points(steps, _step_signal(40, 15, 0.6, 0.2, seed), n_boot=100, seed=seed)
        main = max(cps, key=lambda c: abs(c.size))
        covered += main.change_step_low <= 150 <= main.change_step_high
    assert covered >= 22  # measured ~83% over 40 seeds (nominal 95%: short curves leave the ranges a bit narrow)


def test_small_step_range_covers_truth_and_is_wider():
    steps = np.arange(100) * 10
    y = _step_signal(100, 40, 0.3, 0.2, 7)  # a 1.5-sigma step: located less precisely
    cps, _, _ = curve_change_points(steps, y, n_boot=100, seed=0)
    main = max(cps, key=lambda c: abs(c.size))
    assert main.change_step_low <= 400 <= main.change_step_high
    assert main.change_step_high - main.change_step_low >= 10


def test_pure_noise_yields_no_change_points():
    steps = np.arange(100)
    flagged = sum(bool(curve_change_points(steps, np.random.default_rng(s).normal(0, 1, 100), n_boot=0)[0])
                  for s in range(20))
    assert flagged <= 2  # measured false-positive rate ~3% per curve at n = 100


def test_ramp_becomes_one_transition_around_its_middle():
    steps = np.arange(1, 151)
    y = 0.1 + 0.8 / (1 + np.exp(-(steps - 50) / 5)) + np.random.default_rng(0).normal(0, 0.05, 150)
    curves = pd.DataFrame({"run": "r", "source": "train", "benchmark": None, "metric": "format_reward",
                           "step": steps, "value": y, "sigma": np.nan})
    phases, _ = detect_phases(curves, n_boot=40)
    tr = main_change(phases, "r", "format_reward", direction=1)
    assert tr["change_step"] == pytest.approx(50, abs=5)
    assert tr["change_step_low"] <= 50 <= tr["change_step_high"]
    assert tr["size"] == pytest.approx(0.8, abs=0.15)


def test_curves_over_two_processes_give_the_same_rows_in_the_same_order(caplog):
    """detect_phases(workers=2) (`phase --workers`, the lab study's phase on both cores): every curve starts its
    bootstrap from the same seed, so the rows cannot depend on the process or the order."""
    rng = np.random.default_rng(1)
    steps = np.arange(1, 61)
    frames = [pd.DataFrame({"run": run, "source": "train", "benchmark": None, "metric": metric, "step": steps,
                            "value": (steps > jump) * 0.6 + rng.normal(0, 0.05, 60), "sigma": np.nan})
              for run, jump in (("a", 20), ("b", 40)) for metric in ("format_reward", "accuracy_reward")]
    frames.append(pd.DataFrame({"run": "b", "source": "eval", "benchmark": "t", "metric": "format_rate",
                                "step": [0, 30, 60], "value": [0.1, 0.9, 0.9], "sigma": 0.01}))  # too short
    curves = pd.concat(frames, ignore_index=True)
    with caplog.at_level(logging.WARNING):
        one = detect_phases(curves, n_boot=30)
        two = detect_phases(curves, n_boot=30, workers=2)
    assert len(one[0]) >= 4 and "too short" in set(one[1]["status"])
    for a, b in zip(one, two):
        pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_short_curve_is_reported_not_segmented(caplog):
    curves = pd.DataFrame({"run": "r", "source": "eval", "benchmark": "b", "metric": "format_rate",
                           "step": [0, 50, 100], "value": [0.1, 0.9, 0.9], "sigma": 0.01})
    with caplog.at_level(logging.WARNING):
        phases, status = detect_phases(curves, n_boot=10)
    assert phases.empty
    assert set(status["status"]) == {"too short"}
    assert "fewer than" in caplog.text


@pytest.mark.parametrize("names", ["new", "old"])
def test_training_log_reads_both_trl_namings_from_the_newest_checkpoint(tmp_path, names):
    steps = list(range(2, 122, 2))
    hist = simulate_log_history(steps, step_curve(steps, 0.2, 0.9, 60), [0.5] * len(steps), names=names)
    run = write_run_folder(tmp_path / names, hist, [40, 120])
    log_df = load_training_log(run)
    assert {"format_reward", "accuracy_reward", "completion_length", "reward", "kl", "loss"} <= set(log_df["metric"])
    assert log_df["step"].max() == 120  # the newest trainer_state.json holds the whole history
    key = "rewards/format_reward/mean" if names == "new" else "rewards/format_reward"
    fr = log_df[log_df["metric"] == "format_reward"].sort_values("step")
    assert fr["value"].to_numpy() == pytest.approx([e[key] for e in hist if key in e])


def test_run_phase_finds_planted_format_step_and_tolerates_gaps(tmp_path, caplog):
    steps = list(range(2, 122, 2))
    hist = simulate_log_history(steps, step_curve(steps, 0.2, 0.9, 60), [0.5] * len(steps), names="new")
    for i, e in enumerate(hist):
        e.pop("rewards/accuracy_reward/mean", None)  # a metric missing altogether
        if i % 9 == 0 and "rewards/format_reward/mean" in e:
            e["rewards/format_reward/mean"] = float("nan")  # NaNs in the curve
    good = write_run_folder(tmp_path / "runs" / "good", hist, [60, 120])
    # json.dumps wrote NaN literals, as the trainer does; a run with no trainer state at all:
    assert "NaN" in (good / "checkpoint-120" / "trainer_state.json").read_text()
    empty = tmp_path / "runs" / "empty"
    empty.mkdir(parents=True)
    out = tmp_path / "results"
    with caplog.at_level(logging.WARNING):
        phases = run_phase([str(good), str(empty)], out, n_boot=30)
    assert "non-finite" in caplog.text and "accuracy_reward" in caplog.text
    assert "no eval results" in caplog.text and "trainer_state.json" in caplog.text
    fr = phases[(phases["run"] == "good") & (phases["metric"] == "format_reward") & (phases["method"] == "pelt")]
    assert len(fr) == 1
    assert fr.iloc[0]["change_step_low"] <= 60 <= fr.iloc[0]["change_step_high"]
    summary = Store(out).read("phase_summary")
    assert list(summary["run"]) == ["good", "empty"]
    assert "format_reward" in summary.iloc[0]["metrics_changed"]
    assert "loss" in summary.iloc[0]["metrics_unchanged"]
    assert summary.iloc[0]["transition_metric"] == "format_reward"
    assert not Store(out).read("training_curves").empty


def test_run_phase_rejects_a_missing_folder(tmp_path):
    with pytest.raises(TinaError, match="no such run folder"):
        run_phase([str(tmp_path / "nope")], tmp_path / "out")


def test_bad_manifest_is_a_user_error(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "tina_run.json").write_text("{not json")
    with pytest.raises(TinaError, match="tina_run.json"):
        run_phase([str(run)], tmp_path / "out")


def test_best_checkpoint_lags_the_format_transition():
    passk = pd.DataFrame({"run": "r", "step": [0, 100, 200, 300], "kind": ["base", "lora", "lora", "lora"],
                          "benchmark": "b", "grading": "strict", "k": 1, "n": 4,
                          "value": [0.2, 0.5, 0.7, 0.6], "ci_low": np.nan, "ci_high": np.nan})
    phases = pd.DataFrame([{"run": "r", "metric": "format_rate", "change_step": 100.0, "change_step_low": 75.0,
                            "change_step_high": 125.0, "method": "pelt", "size": 0.6, "n_points": 13,
                            "source": "eval", "benchmark": "b", "support": 1.0, "sigma": 0.01, "penalty": 0.1}])
    out = best_vs_transition(passk, phases, "r")
    assert out["best_step"] == 200 and out["best_value"] == pytest.approx(0.7)
    assert out["transition_step"] == 100
    assert out["lag_steps"] == 100 and (out["lag_low"], out["lag_high"]) == (75, 125)
    assert out["lag_share"] == pytest.approx(100 / 300)
    none = best_vs_transition(passk, phases.iloc[0:0], "r")
    assert np.isnan(none["lag_steps"]) and "no format transition" in none["note"]
    assert "no lenient accuracy change" in out["note"] and np.isnan(out["accuracy_lag_steps"])


def test_best_checkpoint_against_the_accuracy_dip():
    """A rise then a larger later fall of lenient accuracy: the fall is the accuracy change the best is placed
    against (the paper's 'best checkpoint sits before the destabilization')."""
    passk = pd.DataFrame({"run": "r", "step": [0, 100, 200, 300], "kind": ["base", "lora", "lora", "lora"],
                          "benchmark": "b", "grading": "strict", "k": 1, "n": 4,
                          "value": [0.2, 0.5, 0.7, 0.6], "ci_low": np.nan, "ci_high": np.nan})

    def row(step, low, high, size):
        return {"run": "r", "metric": "pass1_lenient", "change_step": step, "change_step_low": low,
                "change_step_high": high, "method": "pelt", "size": size, "n_points": 13, "source": "eval",
                "benchmark": "b", "support": 1.0, "sigma": 0.01, "penalty": 0.1}

    phases = pd.DataFrame([row(50.0, 40.0, 60.0, 0.1), row(250.0, 225.0, 275.0, -0.2)])
    out = best_vs_transition(passk, phases, "r")
    assert out["accuracy_change_step"] == 250 and out["accuracy_change_size"] == pytest.approx(-0.2)
    assert out["accuracy_lag_steps"] == -50 and (out["accuracy_lag_low"], out["accuracy_lag_high"]) == (-75, -25)
    rise_only = best_vs_transition(passk, phases.iloc[:1], "r")
    assert rise_only["accuracy_change_step"] == 50 and rise_only["accuracy_lag_steps"] == 150



def test_sampling_settings_never_pool(caplog):
    rows = [{"run": "r", "step": st, "kind": "lora", "benchmark": "b", "sampling": label, "grading": "strict",
             "k": 1, "n": 1, "value": value, "ci_low": value - 0.02, "ci_high": value + 0.02}
            for label, steps, value in (("greedy", range(0, 700, 100), 0.5), ("t=0.6", [0, 100], 0.1))
            for st in steps]
    with caplog.at_level(logging.WARNING):
        curves = eval_curves(pd.DataFrame(rows), pd.DataFrame(), "r")
    assert len(curves) == 7 and set(curves["value"]) == {0.5}
    assert "greedy" in caplog.text


def test_phase_summary_takes_the_best_checkpoint_from_the_held_out_benchmark():
    from analysis.phase import phase_summary

    def rows(bench, values):
        return pd.DataFrame({"run": "r", "step": [0, 100, 200, 300], "kind": ["base", "lora", "lora", "lora"],
                             "benchmark": bench, "grading": "strict", "k": 1, "n": 4, "value": values,
                             "ci_low": np.nan, "ci_high": np.nan})

    passk = pd.concat([rows("lab-test", [0.2, 0.5, 0.7, 0.6]), rows("lab-probe", [0.2, 0.8, 0.6, 0.7])])
    empty = pd.DataFrame(columns=["run", "metric", "method", "source", "benchmark", "status"])
    row = phase_summary(passk, empty, empty, ["r"]).iloc[0]
    assert (row["best_step"], row["best_value"], row["benchmark"], row["best_chosen_on"]) == (100, 0.5, "lab-test",
                                                                                            "lab-probe")
    alone = phase_summary(passk[passk["benchmark"] == "lab-test"], empty, empty, ["r"]).iloc[0]
    assert (alone["best_step"], alone["best_chosen_on"]) == (200, "lab-test")
