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
    t = razor_table(ret, spec, n_boot=300)
    t = t[t.statistic == "spearman"].set_index(["scope", "predictor"])
    assert t.loc[("r", "task_kl"), "value"] == pytest.approx(1.0)
    assert t.loc[("r", "task_kl"), "ci_low"] == pytest.approx(1.0)
    assert t.loc[("r", "task_kl - rel_norm"), "verdict"] == "task_kl"
    assert ("all runs", "task_kl") in t.index


def test_too_few_checkpoints_is_inconclusive_with_the_reason():
    ret, spec = _tables([0.1, 0.2, 0.3], [1, 2, 3], [0.7, 0.6, 0.5])
    t = razor_table(ret, spec, n_boot=50)
    row = t[(t.scope == "r") & (t.predictor == "task_kl") & (t.statistic == "spearman")].iloc[0]
    assert row.verdict == "inconclusive" and "rho needs 4" in row.note
    assert not (t.predictor == "task_kl - rel_norm").any()


def test_r2_of_a_quadratic_fit_is_the_papers_statistic():
    kl = np.linspace(0.0, 1.0, 8)[1:]
    acc = 0.8 - (kl - 0.4) ** 2  # loss is an exact parabola in task KL: R^2 1, Spearman below 1
    ret, spec = _tables(kl, np.linspace(1, 2, 7), acc)
    t = razor_table(ret, spec, n_boot=100)
    r2 = t[(t.scope == "r") & (t.predictor == "task_kl") & (t.statistic == "r2_quadratic")].iloc[0]
    rho = t[(t.scope == "r") & (t.predictor == "task_kl") & (t.statistic == "spearman")].iloc[0]
    assert r2.value == pytest.approx(1.0) and abs(rho.value) < 1.0
    # with noise: the R^2 of statsmodels' least squares on (1, x, x^2)
    import statsmodels.api as sm

    noisy = acc + np.random.default_rng(3).normal(0, 0.02, len(acc))
    ret, spec = _tables(kl, np.linspace(1, 2, 7), noisy)
    t = razor_table(ret, spec, n_boot=100)
    got = t[(t.scope == "r") & (t.predictor == "task_kl") & (t.statistic == "r2_quadratic")].iloc[0]
    loss = 0.8 - noisy  # the loss razor fits: the base's accuracy minus the checkpoint's
    want = sm.OLS(loss, np.column_stack([np.ones_like(kl), kl, kl**2])).fit().rsquared
    assert got.value == pytest.approx(want, rel=1e-9) and got.value < 1.0


def test_forward_kl_is_the_predictor_when_the_store_has_it():
    ret, spec = _tables([0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4], [0.7, 0.6, 0.5, 0.4])
    forward = ret[ret.probe == "kl_task"].assign(metric="kl_forward", value=lambda d: d.value * 10)
    f = forgetting_frame(pd.concat([ret, forward]), spec).sort_values("step")
    assert f["task_kl"].tolist() == pytest.approx([1.0, 2.0, 3.0, 4.0]) and set(f["task_kl_metric"]) == {"kl_forward"}
    assert set(razor_table(pd.concat([ret, forward]), spec, n_boot=50)["task_kl_metric"]) == {"kl_forward"}
    assert set(forgetting_frame(ret, spec)["task_kl_metric"]) == {"kl"}  # an older store: the reverse direction


def test_checkpoints_without_the_forward_kl_are_named_when_left_out(caplog):
    """A store mixing old task-KL rows (`kl` only) with new ones (`kl_forward`): the old checkpoints drop out of
    the fit (they lack the predictor), and a warning names them rather than dropping them silently."""
    ret, spec = _tables([0.1, 0.2, 0.3, 0.4, 0.5], [1, 2, 3, 4, 5], [0.7, 0.6, 0.5, 0.4, 0.3])
    forward = ret[(ret.probe == "kl_task") & (ret.step.isin([0, 1, 2, 3]))].assign(metric="kl_forward")
    with caplog.at_level("WARNING", logger="analysis.razor"):
        f = forgetting_frame(pd.concat([ret, forward]), spec)
    assert f.dropna(subset=["task_kl"])["step"].tolist() == [1, 2, 3]
    assert "2 checkpoint(s)" in caplog.text and "r@4, r@5" in caplog.text and "r@3" not in caplog.text


@pytest.mark.parametrize("n", [4, 5, 9, 17, 60])
def test_rho_rows_equals_spearmanr_bit_for_bit(n):
    """The batched rho (every bootstrap resample at once) against scipy.stats.spearmanr one pair at a time: equal
    bits, ties and constant rows included."""
    from analysis.razor import _rho, rho_rows

    rng = np.random.default_rng(n)
    x = rng.normal(size=(400, n))
    y = rng.normal(size=(400, n)) * 1e-3 + 0.25 * x
    x[::3] = np.round(x[::3])  # ties
    y[1::4] = rng.integers(0, 3, size=y[1::4].shape)  # many ties
    x[7] = 2.0  # a constant row: undefined
    got = rho_rows(x, y)
    want = np.array([_rho(a, b) for a, b in zip(x, y)])
    assert np.isnan(got[7]) and np.isnan(want[7])
    assert np.array_equal(got, want, equal_nan=True)  # exact: not approx
    assert np.isfinite(got).sum() > 390


def test_batched_bootstrap_gives_the_old_intervals():
    """_boot_rho (every resample at once) returns exactly the interval of the per-resample _boot, plain and paired."""
    from analysis.razor import _boot, _boot_rho, _rho

    rng = np.random.default_rng(3)
    for n in (4, 6, 11, 30):
        k, w = rng.normal(size=n), np.round(rng.normal(size=n), 1)
        y = 0.5 * k + rng.normal(size=n)
        assert _boot_rho(n, 500, 0, k, y) == _boot(lambda i: _rho(k[i], y[i]), n, 500, 0)
        paired = _boot(lambda i: _rho(k[i], y[i]) - _rho(w[i], y[i]), n, 500, 0)
        assert _boot_rho(n, 500, 0, k, y, minus=(w, y)) == paired
