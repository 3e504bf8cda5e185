"""Update spectra: exact LoRA SVD vs dense SVD, planted full-FT updates, PEFT scaling, broken checkpoints, figures."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file

from analysis import spectra as sp
from analysis import spectra_math as sm
from analysis.spectra_plots import plot_spectra
from tina_probe.errors import TinaError
from tina_probe.runs import Checkpoint

PREFIX = "base_model.model.model."


# ----------------------------------------------------------------------------- helpers


def _orth(rng, n: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return q


def _write_full(folder: Path, tensors: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
              str(folder / "model.safetensors"))
    return folder


def _write_lora(folder: Path, pairs: dict[str, tuple[np.ndarray, np.ndarray]], *, r: int, alpha: float,
                base: str | None = None, **cfg) -> Path:
    """pairs: module path (e.g. 'layers.0.self_attn.q_proj') -> (A, B)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(peft_type="LORA", r=r, lora_alpha=alpha, use_rslora=False, rank_pattern={}, alpha_pattern={},
                  target_modules=sorted({m.rsplit(".", 1)[-1] for m in pairs}), base_model_name_or_path=base)
    config.update(cfg)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    tensors = {}
    for module, (A, B) in pairs.items():
        tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(A, dtype=np.float32)
        tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(B, dtype=np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def _planted(seed: int = 0):
    """W0 (64x64) with known SVD, and a rank-2 update (σ 20, 15) along directions spread evenly over 16 of W0's
    small singular directions each, so their max |cos| with any singular vector of W0 is about 1/4."""
    rng = np.random.default_rng(seed)
    U0, V0 = _orth(rng, 64), _orth(rng, 64)
    s0 = np.r_[10 - 0.5 * np.arange(16), np.linspace(0.05, 0.001, 48)]  # distinct, so W0's SVD is unique
    W0 = U0 @ np.diag(s0) @ V0.T
    a1, a2 = U0[:, 16:32].sum(1) / 4, U0[:, 32:48].sum(1) / 4
    b1, b2 = V0[:, 16:32].sum(1) / 4, V0[:, 32:48].sum(1) / 4
    B = np.stack([20 * a1, 15 * a2], axis=1)  # 64 x 2
    A = np.stack([b1, b2], axis=0)            # 2 x 64
    return W0, s0, A, B


# ----------------------------------------------------------------------------- pure linear algebra


@pytest.mark.parametrize("m,n,r", [(48, 32, 8), (32, 48, 1), (6, 5, 9), (40, 6, 8), (6, 40, 8), (1, 10, 3),
                                   (64, 64, 64)])
def test_lora_svd_matches_dense_svd(m, n, r):
    rng = np.random.default_rng(m * 1000 + n * 10 + r)
    A, B, scale = rng.normal(size=(r, n)), rng.normal(size=(m, r)), 0.7
    delta = scale * B @ A
    U, s, V = sm.lora_svd(A, B, scale)
    dense = np.linalg.svd(delta, compute_uv=False)
    k = min(m, n, r)
    assert s.shape == (k,) and U.shape == (m, k) and V.shape == (n, k)
    np.testing.assert_allclose(s, dense[:k], rtol=1e-5, atol=1e-12 * dense[0])
    np.testing.assert_allclose(U @ np.diag(s) @ V.T, delta, atol=1e-9 * dense[0])
    np.testing.assert_allclose(U.T @ U, np.eye(k), atol=1e-10)


def test_randomized_svd_recovers_top_spectrum():
    rng = np.random.default_rng(1)
    Q1, Q2 = _orth(rng, 300)[:, :5], _orth(rng, 200)[:, :5]
    M = (Q1 @ np.diag([10.0, 8, 6, 4, 2]) @ Q2.T + 1e-4 * rng.normal(size=(300, 200))).astype(np.float32)
    U, s = sm.dense_svd(M, top=5, method="randomized")
    Ud, sd = sm.dense_svd(M)
    np.testing.assert_allclose(s, sd[:5], rtol=1e-4)
    assert sm.subspace_similarity(U, Ud[:, :5]) == pytest.approx(1.0, abs=1e-6)


def test_top_vectors_and_values_large_matrix_uses_arpack(monkeypatch):
    monkeypatch.setattr(sm, "DENSE_SVD_LIMIT", 20)
    rng = np.random.default_rng(2)
    M = (_orth(rng, 60)[:, :40] @ np.diag(np.linspace(10, 1, 40)) @ _orth(rng, 40).T).astype(np.float32)
    U, s = sm.top_vectors_and_values(M, 5)
    np.testing.assert_allclose(s, np.linspace(10, 1, 40), rtol=1e-5)
    Ud, _ = sm.dense_svd(M)
    np.testing.assert_allclose(np.abs(np.sum(U * Ud[:, :5], axis=0)), 1.0, atol=1e-4)


def test_spectrum_metrics_closed_forms():
    assert sm.effective_rank(np.ones(5)) == pytest.approx(5.0)
    assert sm.effective_rank(np.array([2.0, 0, 0])) == pytest.approx(1.0)
    assert sm.energy_rank(np.array([3.0, 2, 1]), 0.9) == 2        # 9, 13 >= 12.6
    assert sm.energy_rank(np.array([3.0, 2, 1]), 0.9, total=100.0) is None  # top-k falls short of 90%
    assert sm.stable_rank(np.array([4.0, 3.0])) == pytest.approx(25 / 16)
    assert sm.top_energy(np.array([4.0, 3.0]), 1) == pytest.approx(16 / 25)
    e = np.eye(3)
    assert sm.subspace_similarity(e[:, :2], e[:, [0, 2]]) == pytest.approx(0.5)
    rot = np.array([[math.cos(math.radians(30))], [math.sin(math.radians(30))]])
    assert sm.principal_angles_deg(np.array([[1.0], [0.0]]), rot)[0] == pytest.approx(30.0)
    assert sm.spectral_drift(np.array([3.0, 4.0]), np.array([3.0, 0.0])) == pytest.approx(4 / 3)
    assert sm.lora_scaling(16, 32, False) == 2.0 and sm.lora_scaling(16, 32, True) == 8.0


def test_intruder_count_thresholds():
    m = 100
    cols = []
    for c in (0.2, 0.4, 0.6, 0.8, 1.0):  # max |cos| with the standard basis is exactly c
        v = np.full(m, math.sqrt((1 - c**2) / (m - 1)))
        v[0] = c
        cols.append(v)
    U_t = np.stack(cols, axis=1)
    counts = [sm.intruder_count(U_t, np.eye(m), eps) for eps in (0.3, 0.5, 0.7, 0.9)]
    assert counts == [1, 2, 3, 4]


def test_sparsity_bf16_on_exactly_representable_weights():
    rng = np.random.default_rng(3)
    W0 = (rng.choice([-1, 1], size=(40, 50)) * rng.integers(32, 64, size=(40, 50)) / 256).astype(np.float32)
    assert np.array_equal(sm.to_bfloat16(W0), W0)  # |W0| in [1/8, 1/4): bf16 ulp 2^-10
    kind = rng.choice(3, size=W0.shape, p=[0.4, 0.3, 0.3])
    delta = np.where(kind == 1, 2e-4, np.where(kind == 2, 0.05, 0.0)).astype(np.float32)  # 2e-4 < half ulp
    W_t = W0 + delta
    assert sm.sparsity(W_t - W0) == pytest.approx(np.mean(kind == 0))
    assert sm.sparsity_bf16(W_t, W0) == pytest.approx(np.mean(kind != 2))


def test_pattern_key_mirrors_peft():
    from peft.utils.other import get_pattern_key

    patterns = {"q_proj": 2, "layers.1.mlp.down_proj": 6, r"layers\.[02]\.self_attn\.v_proj": 3}
    names = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "model.layers.0.mlp.down_proj",
             "model.layers.2.self_attn.v_proj", "model.layers.1.self_attn.v_proj", "model.layers.11.mlp.down_proj"]
    for name in names:
        peft_key = get_pattern_key(list(patterns), name)
        ours = sp.pattern_key(patterns, name)
        assert (ours or name) == peft_key


# ----------------------------------------------------------------------------- planted updates through files


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_planted_rank2_update_and_intruders(tmp_path, kind):
    W0, s0, A, B = _planted()
    key = "model.layers.0.self_attn.q_proj.weight"
    base = _write_full(tmp_path / "base", {key: W0})
    if kind == "full":
        ck_dir = _write_full(tmp_path / "ckpt", {key: W0 + B @ A})
    else:
        ck_dir = _write_lora(tmp_path / "ckpt", {"layers.0.self_attn.q_proj": (A, B)}, r=2, alpha=2.0)  # scale 1
    ck = Checkpoint(run="planted", step=5, kind=kind, path=ck_dir, base=str(base))
    df = sp.checkpoint_spectra(ck, cache_dir=tmp_path / "cache", pair_rank=2).frame
    assert len(df) == 1
    row = df.iloc[0]
    assert (row.layer, row.module, row.kind) == (0, "q_proj", kind)
    sv = np.asarray(row.singular_values)
    np.testing.assert_allclose(sv[:2], [20, 15], rtol=1e-5)
    assert np.all(sv[2:] < 1e-4)
    assert row.energy_rank90 == 2
    assert row.stable_rank == pytest.approx(625 / 400, rel=1e-5)
    p = np.array([20, 15]) / 35
    assert row.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-4)
    assert row.fro_norm == pytest.approx(25, rel=1e-5)
    assert row.rel_norm == pytest.approx(25 / np.linalg.norm(s0), rel=1e-5)
    assert row.topr_energy == pytest.approx(1.0, abs=1e-6)
    assert row.principal_angle_mean_deg == pytest.approx(90.0, abs=1e-2)
    assert [row.intruders_eps03, row.intruders_eps05, row.intruders_eps07, row.intruders_eps09] == [2, 2, 2, 2]
    assert row.intruders == 2
    s_t = np.linalg.svd(W0 + B @ A, compute_uv=False)
    truth = np.linalg.norm(s_t - s0) / np.linalg.norm(s0)
    assert row.spectral_drift == pytest.approx(truth, rel=1e-3)
    assert pd.isna(row.subspace_sim_prev)
    assert list(df.columns[:6]) == ["run", "step", "kind", "layer", "module", "singular_values"]
    # the base SVD went to the cache, keyed by the tensor's bytes
    assert len(list((tmp_path / "cache").glob("base-svd-*.npz"))) == 1


def test_full_ft_randomized_method_and_sparsity(tmp_path):
    rng = np.random.default_rng(4)
    W0 = (rng.choice([-1, 1], size=(40, 48)) * rng.integers(32, 64, size=(40, 48)) / 256).astype(np.float32)
    kind = rng.choice(3, size=W0.shape, p=[0.4, 0.3, 0.3])
    W_t = W0 + np.where(kind == 1, 2e-4, np.where(kind == 2, 0.05, 0.0)).astype(np.float32)
    key = "model.layers.3.mlp.down_proj.weight"
    base = _write_full(tmp_path / "base", {key: W0, "model.norm.weight": np.ones(48)})
    ck_dir = _write_full(tmp_path / "ckpt", {key: W_t, "model.norm.weight": np.ones(48)})
    ck = Checkpoint(run="r", step=1, kind="full", path=ck_dir, base=str(base))
    dense = sp.spectra_for_checkpoint(ck, top=10, intruders=False).iloc[0]
    rand = sp.spectra_for_checkpoint(ck, top=10, intruders=False, method="randomized").iloc[0]
    truth = np.linalg.svd((W_t - W0).astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(dense.singular_values, truth[:10], rtol=1e-5)
    np.testing.assert_allclose(rand.singular_values, truth[:10], rtol=1e-3)
    assert dense.complete_spectrum and not rand.complete_spectrum
    assert (dense.layer, dense.module) == (3, "down_proj")
    assert dense.sparsity == pytest.approx(np.mean(kind == 0))
    assert dense.sparsity_bf16 == pytest.approx(np.mean(kind != 2))
    assert pd.isna(dense.intruders)
    assert dense.stable_rank == pytest.approx(rand.stable_rank, rel=1e-4)  # ‖ΔW‖_F is exact either way


# ----------------------------------------------------------------------------- PEFT conventions


@pytest.mark.slow
def test_peft_scaling_conventions_match_merged_weights(tmp_path):
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open
    from transformers import Qwen2Config, Qwen2ForCausalLM

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    variants = {
        "plain": dict(r=4, lora_alpha=8),
        "rslora": dict(r=4, lora_alpha=8, use_rslora=True),
        "patterns": dict(r=4, lora_alpha=16, rank_pattern={"q_proj": 2, "layers.1.mlp.down_proj": 6},
                         alpha_pattern={"v_proj": 3, "down_proj": 5}),
        "rslora+patterns": dict(r=3, lora_alpha=6, use_rslora=True, rank_pattern={"k_proj": 5},
                                alpha_pattern={"layers.0.mlp.up_proj": 2}),
    }
    cfg = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=100)
    for name, kwargs in variants.items():
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(cfg)
        base_dir = tmp_path / name / "base"
        model.save_pretrained(base_dir)
        peft_model = get_peft_model(model, LoraConfig(target_modules=targets, **kwargs))
        scalings = {}
        with torch.no_grad():
            for mod_name, mod in peft_model.named_modules():
                if hasattr(mod, "lora_A") and "default" in getattr(mod, "scaling", {}):
                    scalings[mod_name[len("base_model.model."):]] = mod.scaling["default"]
                    mod.lora_A["default"].weight.normal_(std=0.3)
                    mod.lora_B["default"].weight.normal_(std=0.3)
        ck_dir = tmp_path / name / "checkpoint-1"
        peft_model.save_pretrained(ck_dir)
        merged = {k: v.detach().float().numpy() for k, v in peft_model.merge_and_unload().state_dict().items()}
        with safe_open(str(base_dir / "model.safetensors"), framework="np") as fh:
            base = {k: fh.get_tensor(k) for k in fh.keys()}

        settings = sp.read_lora_settings(ck_dir)
        for mod_name, scale in scalings.items():
            assert settings.scale(mod_name) == pytest.approx(scale, rel=1e-12), (name, mod_name)
        ck = Checkpoint(run=name, step=1, kind="lora", path=ck_dir, base="unused")
        df = sp.spectra_for_checkpoint(ck, base_dir=base_dir, top=64)
        assert len(df) == len(targets) * 2
        for row in df.itertuples():
            key = f"model.layers.{row.layer}.{'self_attn' if row.module in targets[:4] else 'mlp'}.{row.module}.weight"
            delta = merged[key].astype(np.float64) - base[key]
            truth = np.linalg.svd(delta, compute_uv=False)
            k = len(row.singular_values)
            np.testing.assert_allclose(row.singular_values, truth[:k], rtol=1e-4, err_msg=f"{name} {key}")
            assert truth[k:].max(initial=0) < 1e-4 * truth[0]
            assert row.rel_norm == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(base[key]), rel=1e-4)
            drift = sm.spectral_drift(np.linalg.svd(merged[key], compute_uv=False),
                                      np.linalg.svd(base[key], compute_uv=False))
            assert row.spectral_drift == pytest.approx(drift, rel=1e-3, abs=1e-6)


# ----------------------------------------------------------------------------- broken checkpoints, series, resume


def _lora_pairs(rng, r=2):
    pairs = {}
    for layer in (0, 1):
        for module, (m, n) in {"self_attn.q_proj": (64, 64), "self_attn.k_proj": (32, 64)}.items():
            pairs[f"layers.{layer}.{module}"] = (rng.normal(size=(r, n)), rng.normal(size=(m, r)))
    return pairs


def _base_tensors(rng):
    t = {}
    for layer in (0, 1):
        t[f"model.layers.{layer}.self_attn.q_proj.weight"] = 0.1 * rng.normal(size=(64, 64))
        t[f"model.layers.{layer}.self_attn.k_proj.weight"] = 0.1 * rng.normal(size=(32, 64))
        t[f"model.layers.{layer}.input_layernorm.weight"] = np.ones(64)
    return t


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    root = tmp_path_factory.mktemp("series")
    rng = np.random.default_rng(5)
    base_t = _base_tensors(rng)
    base = _write_full(root / "base", base_t)
    lora = root / "runs" / "lab-lora"
    lora.mkdir(parents=True)
    (lora / "tina_run.json").write_text(json.dumps({"base": str(base), "name": "lab-lora"}))
    good = _lora_pairs(rng)
    _write_lora(lora / "checkpoint-1", good, r=2, alpha=4.0, base=str(base))
    broken = dict(good)
    _write_lora(lora / "checkpoint-2", broken, r=2, alpha=4.0, base=str(base))
    from safetensors.numpy import load_file  # drop one lora_B: a missing tensor
    t = load_file(str(lora / "checkpoint-2" / "adapter_model.safetensors"))
    del t[f"{PREFIX}layers.1.self_attn.k_proj.lora_B.weight"]
    save_file(t, str(lora / "checkpoint-2" / "adapter_model.safetensors"))
    bad_shape = dict(good)
    bad_shape["layers.0.self_attn.q_proj"] = (rng.normal(size=(2, 63)), rng.normal(size=(64, 2)))
    _write_lora(lora / "checkpoint-3", bad_shape, r=2, alpha=4.0, base=str(base))
    (lora / "checkpoint-4").mkdir()  # weights only as a pickle
    (lora / "checkpoint-4" / "adapter_config.json").write_text((lora / "checkpoint-1" / "adapter_config.json").read_text())
    (lora / "checkpoint-4" / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    _write_lora(lora / "checkpoint-5", good, r=2, alpha=4.0, base=str(base))
    blob = (lora / "checkpoint-5" / "adapter_model.safetensors").read_bytes()
    (lora / "checkpoint-5" / "adapter_model.safetensors").write_bytes(blob[: len(blob) // 2])  # truncated
    mix = np.array([[2.0, 1.0], [0.5, -1.0]])  # same column space of B => subspace similarity 1
    _write_lora(lora / "checkpoint-6", {k: (A * 1.5, B @ mix) for k, (A, B) in good.items()}, r=2, alpha=4.0,
                base=str(base))

    full = root / "runs" / "lab-full"
    full.mkdir(parents=True)
    (full / "tina_run.json").write_text(json.dumps({"base": str(base), "name": "lab-full"}))
    _write_full(full / "checkpoint-1", {k: v + 0.01 * rng.normal(size=v.shape) for k, v in base_t.items()})
    missing = {k: v + 0.02 * rng.normal(size=v.shape) for k, v in base_t.items()}
    del missing["model.layers.1.self_attn.q_proj.weight"]
    _write_full(full / "checkpoint-2", missing)
    _write_full(full / "checkpoint-3", {k: v + 0.03 * rng.normal(size=v.shape) for k, v in base_t.items()})
    return root


def test_run_spectra_skips_broken_checkpoints_with_one_warning(series, tmp_path, caplog):
    out = tmp_path / "results"
    with caplog.at_level(logging.WARNING):
        df = sp.run_spectra([str(series / "runs" / "lab-lora"), str(series / "runs" / "lab-full")], out)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    for bad in ("lab-lora/checkpoint-2", "lab-lora/checkpoint-3", "lab-lora/checkpoint-4", "lab-lora/checkpoint-5",
                "lab-full/checkpoint-2"):
        hits = [w for w in warnings if bad in w]
        assert len(hits) == 1, (bad, warnings)
        assert "\n" not in hits[0]
    assert not any("checkpoint-1" in w or "checkpoint-6" in w for w in warnings)
    assert sorted(set(zip(df["run"], df["step"]))) == [("lab-full", 1), ("lab-full", 3), ("lab-lora", 1),
                                                       ("lab-lora", 6)]
    assert len(df) == 4 * 4 and (out / "spectra.parquet").is_file()
    lora6 = df[(df.run == "lab-lora") & (df.step == 6)]
    np.testing.assert_allclose(lora6["subspace_sim_prev"].astype(float), 1.0, atol=1e-6)
    assert df[(df.run == "lab-lora") & (df.step == 1)]["subspace_sim_prev"].isna().all()
    full3 = df[(df.run == "lab-full") & (df.step == 3)]
    assert full3["subspace_sim_prev"].between(0, 1).all()
    assert (df[df.kind == "full"]["rank_r"] == 2).all()          # paired with the LoRA run's r
    assert (df[df.kind == "lora"]["topr_energy"].sub(1).abs() < 1e-9).all()
    assert df["intruders"].notna().all() and df["rel_norm"].notna().all()
    stored = pd.read_parquet(out / "spectra.parquet")
    assert len(stored) == len(df) and stored["singular_values"].map(len).eq(2).sum() == 8


def test_run_spectra_resumes_per_checkpoint(series, tmp_path, monkeypatch):
    out = tmp_path / "results"
    paths = [str(series / "runs" / "lab-lora")]
    first = sp.run_spectra(paths, out, intruders=False)
    real = sp.checkpoint_spectra
    called = []

    def spy(ck, **kw):
        called.append(ck.step)
        return real(ck, **kw)

    monkeypatch.setattr(sp, "checkpoint_spectra", spy)
    again = sp.run_spectra(paths, out, intruders=False)
    assert len(again) == len(first)
    assert called == []  # finished ones are skipped; the broken ones (2, 3) never get past discovery
    monkeypatch.setattr(sp, "checkpoint_spectra", real)
    from tina_probe.store import Store
    (part,) = Store(out).part_path("spectra", "x").parent.glob("lab-lora_6.*.parquet")  # safe_key writes @ as _
    part.unlink()
    for f in (out / ".cache" / "spectra").glob("subspaces-*.npz"):
        f.unlink()  # the previous checkpoint's bases must then be recomputed
    resumed = sp.run_spectra(paths, out, intruders=False)
    sims = resumed[resumed.step == 6]["subspace_sim_prev"].astype(float)
    assert len(sims) == 4
    np.testing.assert_allclose(sims, 1.0, atol=1e-6)


def test_checkpoint_errors_name_the_problem(series, tmp_path):
    base = str(series / "base")
    pickled = Checkpoint(run="x", step=4, kind="lora", path=series / "runs" / "lab-lora" / "checkpoint-4", base=base)
    with pytest.raises(TinaError, match="adapter_model.bin"):
        sp.spectra_for_checkpoint(pickled)
    only_bin = tmp_path / "full-bin"
    only_bin.mkdir()
    (only_bin / "config.json").write_text("{}")
    (only_bin / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(TinaError, match="pytorch_model.bin"):
        sp.spectra_for_checkpoint(Checkpoint(run="x", step=1, kind="full", path=only_bin, base=base))
    no_base = Checkpoint(run="x", step=1, kind="full", path=series / "runs" / "lab-full" / "checkpoint-1",
                         base="org/not-a-folder")
    with pytest.raises(TinaError, match="base"):
        sp.spectra_for_checkpoint(no_base)
    missing_b = Checkpoint(run="x", step=2, kind="lora", path=series / "runs" / "lab-lora" / "checkpoint-2", base=base)
    with pytest.raises(TinaError, match="lora_B"):
        sp.spectra_for_checkpoint(missing_b)


def test_lora_without_base_gives_base_free_metrics(tmp_path):
    rng = np.random.default_rng(6)
    ck_dir = _write_lora(tmp_path / "ckpt", _lora_pairs(rng, r=3), r=3, alpha=6.0, base=None)
    ck = Checkpoint(run="x", step=1, kind="lora", path=ck_dir, base="org/hub-model")
    df = sp.spectra_for_checkpoint(ck)
    assert len(df) == 4
    assert df["rel_norm"].isna().all() and df["intruders"].isna().all() and df["spectral_drift"].isna().all()
    assert df["singular_values"].map(len).eq(3).all() and df["energy_rank90"].notna().all()


def test_lora_module_outside_layers_pairs_with_its_base(tmp_path):
    rng = np.random.default_rng(7)
    W_head, W_q = 0.1 * rng.normal(size=(100, 64)), 0.1 * rng.normal(size=(64, 64))
    base = _write_full(tmp_path / "base", {"lm_head.weight": W_head, "model.layers.0.self_attn.q_proj.weight": W_q})
    folder = tmp_path / "ckpt"
    _write_lora(folder, {"layers.0.self_attn.q_proj": (rng.normal(size=(2, 64)), rng.normal(size=(64, 2)))},
                r=2, alpha=2.0)
    A, B = rng.normal(size=(2, 64)), rng.normal(size=(100, 2))
    from safetensors.numpy import load_file
    t = load_file(str(folder / "adapter_model.safetensors"))
    t["base_model.model.lm_head.lora_A.weight"] = A.astype(np.float32)
    t["base_model.model.lm_head.lora_B.weight"] = B.astype(np.float32)
    save_file(t, str(folder / "adapter_model.safetensors"))
    df = sp.spectra_for_checkpoint(Checkpoint(run="x", step=1, kind="lora", path=folder, base=str(base)))
    head = df[df.module == "lm_head"].iloc[0]
    delta = (B @ A).astype(np.float32).astype(np.float64)
    assert head.layer == -1
    assert head.rel_norm == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(W_head.astype(np.float32)), rel=1e-5)


def test_plot_spectra_writes_pngs(series, tmp_path):
    df = sp.run_spectra([str(series / "runs" / "lab-lora"), str(series / "runs" / "lab-full")], tmp_path / "res")
    paths = plot_spectra(df, tmp_path / "fig")
    names = {p.name for p in paths}
    assert {"spectra_heatmap_effective_rank.png", "spectra_singular_values.png", "spectra_intruders_vs_eps.png",
            "spectra_trend_effective_rank.png"} <= names
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000


def test_a_checkpoint_saved_again_is_analysed_again_with_its_successor(series, tmp_path, monkeypatch):
    """A re-saved checkpoint gets new spectra, and so does the next one (its subspace_sim_prev compares with it);
    the table shows the new rows only; another --top is a new analysis too."""
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(series / "runs" / "lab-lora", runs / "lab-lora")
    out, paths = tmp_path / "results", [str(runs / "lab-lora")]
    first = sp.run_spectra(paths, out, intruders=False)
    assert sorted(first["step"].unique()) == [1, 6]
    real, called = sp.checkpoint_spectra, []

    def spy(ck, **kw):
        called.append(ck.step)
        return real(ck, **kw)

    monkeypatch.setattr(sp, "checkpoint_spectra", spy)
    weights = runs / "lab-lora" / "checkpoint-1" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes())
    again = sp.run_spectra(paths, out, intruders=False)
    assert called == [1, 6]
    cols = ["run", "step", "layer", "module", "module_path"]
    assert not again.duplicated(cols).any()  # the old rows of the re-saved checkpoint are not pooled in
    pd.testing.assert_frame_equal(again.sort_values(cols).reset_index(drop=True),  # same bytes saved again: same
                                  first.sort_values(cols).reset_index(drop=True), rtol=1e-3)  # values, to rounding
    called.clear()
    sp.run_spectra(paths, out, intruders=False, top=8)
    assert called == [1, 6]
