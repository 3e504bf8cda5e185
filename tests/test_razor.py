"""RL's Razor association (analysis/razor.py rules Z1-Z4) on hand-made retention and spectra tables."""
import numpy as np
import pandas as pd
import pytest

from analysis.razor import forgetting_frame, razor_table


def _tables(kl, norm, acc, run="r", kind="lora"):
    """Retention rows at steps 0..len(kl): task KL, an accuracy probe; spectra rel_norm per step (two modules)."""
    ret, spec = [], []
    ret.append({"run": run, "step": 0, "kind": "base", "probe": "facts", "metric": "acc", "value": 0.8})
    ret.append({"run": run, "step": 0, "kind": "base", "probe": "kl_task", "metric": "kl", "value": 0.0})
    for i, (k, w, a) in enumerate(zip(kl, norm, acc), start=1):
        ret.append({"run": run, "step": i, "kind": kind, "probe": "kl_task", "metric": "kl", "value": k})
        ret.append({"run": run, "step": i, "kind": kind, "probe": "facts", "metric": "acc", "value": a})
        spec += [{"run": run, "step": i, "rel_norm": w}, {"run": run, "step": i, "rel_norm": w}]
    return pd.DataFrame(ret), pd.DataFrame(spec)


def test_loss_is_signed_and_base_left_out():
    ret, spec = _tables([0.1, 0.2], [1.0, 2.0], [0.7, 0.9])
    f = forgetting_frame(ret, spec).sort_values("step")
    assert f["loss"].tolist() == pytest.approx([0.1, -0.1])  # accuracy fell 0.1, then rose 0.1
    assert f["task_kl"].tolist() == [0.1, 0.2] and f["rel_norm"].tolist() == [1.0, 2.0]
    assert 0 not in set(f["step"])


def test_kl_that_tracks_forgetting_beats_a_norm_that_does_not():
    rng = np.random.default_rng(0)
    kl = np.linspace(0.01, 0.5, 10)
    acc = 0.8 - kl * 0.5  # forgetting grows exactly with task KL
    norm = rng.permutation(np.linspace(1, 2, 10))  # unrelated
    ret, spec = _tables(kl, norm, acc)
    t = razor_table(ret, spec, n_boot=300).set_index(["scope", "predictor"])
    assert t.loc[("r", "task_kl"), "value"] == pytest.approx(1.0)
    assert t.loc[("r", "task_kl"), "ci_low"] == pytest.approx(1.0)
    assert t.loc[("r", "task_kl - rel_norm"), "verdict"] == "task_kl"
    assert ("all runs", "task_kl") in t.index


def test_too_few_checkpoints_is_inconclusive_with_the_reason():
    ret, spec = _tables([0.1, 0.2, 0.3], [1, 2, 3], [0.7, 0.6, 0.5])
    t = razor_table(ret, spec, n_boot=50)
    row = t[(t.scope == "r") & (t.predictor == "task_kl")].iloc[0]
    assert row.verdict == "inconclusive" and "rho needs 4" in row.note
    assert not (t.predictor == "task_kl - rel_norm").any()
