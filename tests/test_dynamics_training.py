"""Training-log dynamics: one name per metric whichever TRL wrote the log, and change points on entropy, completion
length, clipped ratio, KL and frac_reward_zero_std placed beside the format transition (planted curves)."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.phase import DYNAMICS_METRICS, run_phase
from analysis.simulate import write_run_folder
from tina_probe.runs import training_log, unify_metric_name
from tina_probe.store import Store

# TRL 0.15 (completion_length, rewards/<f>, reward_std), 0.16 (+ clip_ratio), >= 0.17 (completions/*,
# rewards/<f>/mean, clip_ratio/region_mean), >= 0.18 (frac_reward_zero_std), >= 0.19 (entropy)
OLD = {"completion_length": 30.0, "rewards/format_reward": 0.5, "reward": 1.0, "reward_std": 0.2, "kl": 0.01,
       "clip_ratio": 0.03}
NEW = {"completions/mean_length": 30.0, "completions/clipped_ratio": 0.1, "rewards/format_reward/mean": 0.5,
       "reward": 1.0, "reward_std": 0.2, "kl": 0.01, "clip_ratio/region_mean": 0.03, "entropy": 0.8,
       "frac_reward_zero_std": 0.25}


def test_old_and_new_trl_names_meet_under_one_name(tmp_path):
    assert unify_metric_name("clip_ratio/region_mean") == unify_metric_name("clip_ratio") == "clip_ratio"
    assert unify_metric_name("objective/entropy") == "entropy"
    assert unify_metric_name("frac_reward_zero_std") == "frac_reward_zero_std"
    assert unify_metric_name("completions/clipped_ratio") == "clipped_ratio"
    metrics = {}
    for names, entry in (("old", OLD), ("new", NEW)):
        run = write_run_folder(tmp_path / names, [{"step": s, **entry} for s in (1, 2)], [2])
        log = training_log(run)
        metrics[names] = set(log["metric"])
        assert log[(log.metric == "completion_length") & (log.step == 2)]["value"].item() == 30.0
        assert log[(log.metric == "clip_ratio") & (log.step == 1)]["value"].item() == 0.03
    assert metrics["old"] == {"completion_length", "format_reward", "reward", "reward_std", "kl", "clip_ratio"}
    assert metrics["new"] == metrics["old"] | {"clipped_ratio", "entropy", "frac_reward_zero_std"}


def _planted_history(steps, seed=0):
    """Format reward jumps at 60; entropy collapses at 60; completion length rises at 40; the clipped ratio and
    frac_reward_zero_std jump at 80; KL climbs at 60; loss is noise."""
    rng = np.random.default_rng(seed)
    hist = []
    for s in steps:
        def noisy(before, after, at, sd):
            return float((after if s >= at else before) + sd * rng.standard_normal())
        hist.append({"step": int(s), "rewards/format_reward/mean": noisy(0.2, 0.9, 60, 0.05),
                     "rewards/accuracy_reward/mean": noisy(0.5, 0.5, 0, 0.05),
                     "entropy": noisy(1.2, 0.4, 60, 0.05), "completions/mean_length": noisy(30, 45, 40, 1.5),
                     "completions/clipped_ratio": noisy(0.02, 0.3, 80, 0.02),
                     "frac_reward_zero_std": noisy(0.1, 0.6, 80, 0.04), "kl": noisy(0.001, 0.02, 60, 0.001),
                     "loss": float(0.01 * rng.standard_normal())})
    return hist


def test_phase_finds_the_planted_dynamics_beside_the_format_transition(tmp_path):
    steps = np.arange(2, 122, 2)
    run = write_run_folder(tmp_path / "runs" / "dyn", _planted_history(steps), [120])
    out = tmp_path / "results"
    phases = run_phase([str(run)], out, n_boot=40)
    pelt = phases[phases["method"] == "pelt"]
    largest = pelt.loc[pelt["size"].abs().groupby(pelt["metric"]).idxmax()].set_index("metric")
    for metric, at in (("entropy", 60), ("completion_length", 40), ("clipped_ratio", 80),
                       ("frac_reward_zero_std", 80), ("kl", 60)):
        row = largest.loc[metric]
        assert row["change_step"] == at and row["change_step_low"] <= at <= row["change_step_high"], metric
    assert "loss" not in set(pelt["metric"])
    curves = Store(out).read("training_curves")
    assert set(DYNAMICS_METRICS) <= set(curves["metric"])
    summary = Store(out).read("phase_summary").iloc[0]
    assert summary["transition_step"] == pytest.approx(60)
    assert summary["entropy_change_step"] == pytest.approx(60)
    assert summary["entropy_change_size"] == pytest.approx(-0.8, abs=0.05)
    assert summary["entropy_minus_format_steps"] == pytest.approx(0)
    assert summary["completion_length_minus_format_steps"] == pytest.approx(-20)  # length rose before the format
    assert summary["frac_reward_zero_std_minus_format_steps"] == pytest.approx(20)
