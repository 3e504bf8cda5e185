"""The Path-Not-Taken geometry (analysis/path_not_taken.py rules G1-G5) on planted updates with a known changed mask,
a known rotation of the top subspace and a known overlap with W_0's principal weights; LoRA through spectra against
W_0 + s*B*A formed densely."""
import math

import numpy as np
import pytest
from scipy.stats import ortho_group

from analysis.path_not_taken import (changed_mask, independent_jaccard, jaccard, max_rotation_deg, module_geometry,
                                     overlap_share, principal_mask, spectral_shift)


def _base(m=40, n=30, seed=0):
    rng = np.random.default_rng(seed)
    U = ortho_group.rvs(m, random_state=seed)[:, :n]
    V = ortho_group.rvs(n, random_state=seed + 1)
    s = np.linspace(10, 1, n)
    return (U * s) @ V.T, U, s, V, rng


def test_changed_mask_relative_tolerance():
    W0 = np.array([[1.0, 1000.0, 1e-4]], np.float32)
    Wt = np.array([[1.0 + 5e-4, 1000.0 + 0.5, 2e-4]], np.float32)
    # 5e-4 on 1 is within 1e-3 relative; 0.5 on 1000 too; 1e-4 -> 2e-4 is a 100% change (atol 1e-5 calls it unchanged)
    assert changed_mask(Wt, W0).tolist() == [[False, False, True]]
    assert np.abs(Wt - W0)[0, 2] <= 1e-5 * 10  # a fixed atol of 1e-4 would miss it


def test_planted_mask_gives_sparsity_and_no_rotation_when_spectrum_kept():
    W0, U, s, V, rng = _base()
    mask = rng.random(W0.shape) < 0.1
    Wt = W0 + mask * 0.5 * np.sign(W0)
    g = module_geometry(W0, Wt, k=4, alpha=0.05)
    assert g["sparsity_rel"] == pytest.approx(1 - np.mean(changed_mask(Wt, W0)))
    assert g["sparsity_rel"] == pytest.approx(1 - mask.mean(), abs=0.01)
    assert g["principal_k"] == 4 and g["principal_baseline"] == 0.05


def test_known_rotation_of_top_subspace():
    W0, U, s, V, rng = _base()
    theta = math.radians(7.0)
    U2 = U.copy()  # rotate the top left vector towards the 20th (outside the top 4) by theta
    U2[:, 0] = math.cos(theta) * U[:, 0] + math.sin(theta) * U[:, 19]
    U2[:, 19] = -math.sin(theta) * U[:, 0] + math.cos(theta) * U[:, 19]
    Wt = (U2 * s) @ V.T
    g = module_geometry(W0, Wt, k=4)
    assert g["rotation_max_deg_u"] == pytest.approx(7.0, abs=1e-6)
    assert g["rotation_max_deg_v"] == pytest.approx(0.0, abs=1e-5)
    assert g["spectral_shift"] == pytest.approx(0.0, abs=1e-9)  # a rotation keeps the spectrum
    assert max_rotation_deg(U[:, :4], U[:, :4]) == pytest.approx(0.0, abs=1e-6)


def test_spectral_shift_of_a_scaled_matrix():
    W0, *_ = _base()
    g = module_geometry(W0, 1.1 * W0)
    assert g["spectral_shift"] == pytest.approx(0.1, rel=1e-9)
    assert spectral_shift([2.0, 1.0], [2.0, 1.0]) == 0.0


def test_principal_overlap_planted():
    W0, U, s, V, rng = _base()
    principal = principal_mask(U, s, V, 4, 0.1)
    assert principal.mean() == pytest.approx(0.1, abs=1 / principal.size)
    # an update on exactly the principal entries overlaps 1; one that avoids them overlaps 0
    on = W0 + principal * 0.3
    off = W0 + (~principal) * 0.3
    assert module_geometry(W0, on, k=4, alpha=0.1)["principal_overlap"] == pytest.approx(1.0)
    assert module_geometry(W0, off, k=4, alpha=0.1)["principal_overlap"] == pytest.approx(0.0)
    # a random mask overlaps about alpha
    rnd = rng.random(W0.shape) < 0.5
    assert overlap_share(principal, rnd) == pytest.approx(0.1, abs=0.05)
    assert math.isnan(overlap_share(principal, np.zeros_like(principal)))


def test_jaccard_and_independent_baseline():
    rng = np.random.default_rng(3)
    a, b = rng.random(200_000) < 0.2, rng.random(200_000) < 0.3
    assert jaccard(a, b) == pytest.approx(independent_jaccard(0.2, 0.3), abs=0.005)
    assert jaccard(a, a) == 1.0 and math.isnan(jaccard(np.zeros(3, bool), np.zeros(3, bool)))


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_spectra_columns_equal_the_dense_reference(tmp_path, kind):
    """spectra's new columns for a LoRA checkpoint (scale alpha/r = 2) equal module_geometry on W_0 + s*B*A formed
    densely; a full checkpoint holding that same W_t gives the same numbers."""
    from tests.test_spectra import _write_full, _write_lora
    from analysis import spectra as sp
    from tina_probe.runs import Checkpoint

    W0, U, s, V, rng = _base(48, 32, seed=5)
    A, B = rng.normal(size=(2, 32)) * 0.3, rng.normal(size=(48, 2)) * 0.3
    key = "model.layers.0.self_attn.q_proj.weight"
    base = _write_full(tmp_path / "base", {key: W0})
    W_t = (W0.astype(np.float32) + (2.0 * (B @ A)).astype(np.float32)).astype(np.float32)
    if kind == "full":
        ck_dir = _write_full(tmp_path / "ckpt", {key: W_t})
    else:
        ck_dir = _write_lora(tmp_path / "ckpt", {"layers.0.self_attn.q_proj": (A, B)}, r=2, alpha=4.0)
    ck = Checkpoint(run="g", step=3, kind=kind, path=ck_dir, base=str(base))
    row = sp.checkpoint_spectra(ck, cache_dir=tmp_path / "cache", pair_rank=2).frame.iloc[0]
    truth = module_geometry(W0.astype(np.float32), W_t)
    for col, value in truth.items():
        assert row[col] == pytest.approx(value, rel=1e-4, abs=1e-4), col


def test_update_overlap_of_two_runs_with_planted_masks(tmp_path):
    """Two full runs whose changed masks are planted (20% and 30%, overlapping on a known set) and a LoRA run: the
    table's Jaccard equals the planted one, its baseline pq/(p+q-pq), and LoRA's mask is W0+sBA's."""
    from tests.test_spectra import _write_full, _write_lora
    from analysis.update_overlap import update_overlap_table
    from tina_probe.runs import Checkpoint, Run

    rng = np.random.default_rng(0)
    key = "model.layers.0.mlp.up_proj.weight"
    W0 = rng.normal(size=(60, 50)).astype(np.float32) + 3.0  # no entry near 0
    base = _write_full(tmp_path / "base", {key: W0})
    u = rng.random(W0.shape)
    mask_a, mask_b = u < 0.2, (u > 0.1) & (u < 0.4)  # overlap: 0.1 < u < 0.2
    runs = []
    for name, mask in (("a", mask_a), ("b", mask_b)):
        d = _write_full(tmp_path / name / "checkpoint-4", {key: W0 + mask * 0.5})
        ck = Checkpoint(run=name, step=4, kind="full", path=d, base=str(base))
        runs.append(Run(name=name, path=d.parent, kind="full", base=str(base), checkpoints=(ck,)))
    A, B = rng.normal(size=(2, 50)), rng.normal(size=(60, 2))
    d = _write_lora(tmp_path / "l" / "checkpoint-4", {"layers.0.mlp.up_proj": (A, B)}, r=2, alpha=2.0)
    ck = Checkpoint(run="l", step=4, kind="lora", path=d, base=str(base))
    runs.append(Run(name="l", path=d.parent, kind="lora", base=str(base), checkpoints=(ck,)))
    t = update_overlap_table(runs)
    ab = t[(t.run_a == "a") & (t.run_b == "b") & (t.module_path == "layers.0.mlp.up_proj")].iloc[0]
    assert ab.jaccard == pytest.approx(jaccard(mask_a, mask_b))
    assert ab.baseline == pytest.approx(independent_jaccard(mask_a.mean(), mask_b.mean()))
    la = t[(t.run_a == "a") & (t.run_b == "l") & (t.module_path == "overall")].iloc[0]
    lora_mask = changed_mask(W0 + (B @ A).astype(np.float32), W0)
    assert la.jaccard == pytest.approx(jaccard(mask_a, lora_mask), rel=1e-6)
    assert len(t[t.module_path == "overall"]) == 3  # every pair of the three runs


@pytest.mark.parametrize("shape", [(40, 30), (30, 40)])
def test_spectrum_and_top_equal_a_dense_svd(shape):
    """The Gram-based spectrum and top vectors equal LAPACK's SVD (spans compared: signs are free)."""
    from analysis.path_not_taken import spectrum_and_top

    W = np.random.default_rng(1).normal(size=shape)
    s, U, V = spectrum_and_top(W, 5)
    U_ref, s_ref, Vt_ref = np.linalg.svd(W, full_matrices=False)
    np.testing.assert_allclose(s, s_ref, rtol=1e-8, atol=1e-10)
    assert max_rotation_deg(U, U_ref[:, :5]) < 1e-5 and max_rotation_deg(V, Vt_ref[:5].T) < 1e-5
