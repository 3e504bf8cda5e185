"""The real study's learning-rate rule (tina_probe/lab/lr_sweep.py) on recorded training rewards, without training."""

from __future__ import annotations

import json

import pytest
from scipy.stats import fisher_exact

from tina_probe.errors import TinaError
from tina_probe.lab import lr_sweep


def _run(arm, lr, fmt, acc, per_step=16):
    """A recorded run: per-step format and accuracy rewards; the total is 2 x accuracy + format (the recipes')."""
    curve = {"format_reward": fmt, "accuracy_reward": acc, "reward": [2 * a + f for a, f in zip(acc, fmt)]}
    return {"arm": arm, "learning_rate": lr, "run": f"{arm}-{lr}", "steps": len(fmt), "completions_per_step": per_step,
            "per_step": curve, "summary": lr_sweep.late_summary(curve)}


BASE = {"accuracy": 14 / 128, "n": 128, "source": "planted"}
# a collapse: format to 1, accuracy 0 from the start (one step's 16 completions had no right answer by chance)
COLLAPSE = _run("lora", 2e-3, [0.1, 0.5, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0], [0.0] * 8)
LEARNS = _run("lora", 5e-4, [0.1, 0.2, 0.3, 0.4, 0.4, 0.5, 0.5, 0.6], [0.0, 0.0, 0.1, 0.2, 0.1, 0.2, 0.1, 0.2])
FORMAT_FALLS = _run("lora", 1e-3, [0.2, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.1, 0.3, 0.6, 0.9, 0.9, 1.0, 1.0, 1.0])
FULL = [_run("full", 1e-5, [0.1] * 8, [0.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.125]),
        _run("full", 5e-5, [0.1, 0.6, 0.8, 0.9, 1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0625])]


def test_a_collapse_onto_a_constant_answer_falls_only_against_the_base():
    """Late accuracy 0 of 64 against the base's 14 of 128: the first-step comparison misses it, the base's catches
    it, at the Fisher exact p-value computed by hand."""
    assert lr_sweep.falls(COLLAPSE["summary"]) == []
    assert lr_sweep.run_falls(COLLAPSE, BASE) == ["accuracy_reward"]
    p = lr_sweep.accuracy_below_base(COLLAPSE["summary"], 64, BASE)
    assert p == pytest.approx(fisher_exact([[0, 64], [14, 114]], alternative="less").pvalue) and p < 0.01
    assert lr_sweep.run_falls(LEARNS, BASE) == [] and lr_sweep.run_falls(FORMAT_FALLS, BASE) == ["format_reward"]
    assert lr_sweep.late_completions(COLLAPSE) == 64 and lr_sweep.late_completions({"steps": 8}) is None
    assert lr_sweep.accuracy_below_base(COLLAPSE["summary"], None, BASE) is None


def test_choose_takes_the_best_total_among_rates_where_nothing_falls():
    runs = [LEARNS, COLLAPSE, FORMAT_FALLS, *FULL]
    assert lr_sweep.choose(runs, BASE) == {"lora": 5e-4, "full": 1e-5}
    # without the base's share the collapse has the highest total reward and is chosen (the earlier rule)
    assert lr_sweep.choose(runs) == {"lora": 2e-3, "full": 5e-5}
    # every rate falls: the best total among all of them
    assert lr_sweep.choose([COLLAPSE, FORMAT_FALLS], BASE) == {"lora": 1e-3}


def test_rechoose_applies_the_rule_to_a_recorded_sweep(tmp_path, monkeypatch):
    monkeypatch.setattr(lr_sweep, "base_accuracy", lambda name="x": BASE)
    recorded = tmp_path / "sweep.json"
    recorded.write_text(json.dumps({"steps": 8, "runs": [LEARNS, COLLAPSE, *FULL], "chosen": {"lora": 2e-3}}))
    out = tmp_path / "again" / "sweep.json"
    result = lr_sweep.rechoose(recorded, out)
    assert result["chosen"] == {"lora": 5e-4, "full": 1e-5} and json.loads(out.read_text()) == result
    assert json.loads(recorded.read_text())["chosen"] == {"lora": 2e-3}  # the record itself is kept
    bad = tmp_path / "bad.json"
    bad.write_text('{"runs": []}')
    with pytest.raises(TinaError, match="bad.json: not a recorded sweep"):
        lr_sweep.rechoose(bad)


def test_the_shipped_sweep_and_recipes_agree():
    """data/real/lr-sweep.json's chosen rates are the rule's on its own record, and the real recipes use them."""
    from pathlib import Path

    from train.recipe import load_recipe

    root = Path(__file__).resolve().parents[1]
    shipped = json.loads((root / "data" / "real" / "lr-sweep.json").read_text())
    assert lr_sweep.choose(shipped["runs"], shipped["base"]) == shipped["chosen"]
    assert shipped["base"] == lr_sweep.base_accuracy()
    for arm, recipe in lr_sweep.ARMS.items():
        rate = load_recipe(root / "train" / "recipes" / f"{recipe}.yaml").grpo.learning_rate
        assert rate == pytest.approx(shipped["chosen"][arm]), arm
