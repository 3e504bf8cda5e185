"""Benchmark: exact LoRA spectra of a DeepSeek-R1-Distill-Qwen-1.5B-shaped r=32 adapter vs dense SVD of ΔW.

Run: python benchmarks/bench_spectra.py   (threads: whatever OMP_NUM_THREADS says)"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.linalg as sla
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.path_not_taken import module_geometry  # noqa: E402
from analysis.spectra import spectra_for_checkpoint  # noqa: E402
from tina_probe.runs import Checkpoint  # noqa: E402

HIDDEN, INTER, LAYERS, KV = 1536, 8960, 28, 2 * 128
SHAPES = {  # module -> (out, in), as in DeepSeek-R1-Distill-Qwen-1.5B
    "self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (KV, HIDDEN), "self_attn.v_proj": (KV, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN), "mlp.gate_proj": (INTER, HIDDEN), "mlp.up_proj": (INTER, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTER),
}
R, ALPHA = 32, 128
GOAL_S, GOAL_SPEEDUP, REPEATS = 10.0, 50.0, 3


def make_adapter(folder: Path, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write a random r=32 PEFT adapter with the 1.5B model's shapes; return layer 0's (A, B) for the dense baseline."""
    tensors, layer0 = {}, {}
    for layer in range(LAYERS):
        for module, (m, n) in SHAPES.items():
            A = (rng.standard_normal((R, n), dtype=np.float32) / np.sqrt(n)).astype(np.float32)
            B = (0.01 * rng.standard_normal((m, R), dtype=np.float32)).astype(np.float32)
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"] = A, B
            if layer == 0:
                layer0[module] = (A, B)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": R, "lora_alpha": ALPHA, "use_rslora": False, "rank_pattern": {},
        "alpha_pattern": {}, "target_modules": sorted(m.split(".")[-1] for m in SHAPES),
        "base_model_name_or_path": None}))
    return layer0


def main() -> None:
    """Time the whole checkpoint's LoRA spectra, and dense SVD on layer 0 extrapolated to 28 layers."""
    print(f"threads  OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}  cpus={os.cpu_count()}")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "checkpoint-100"
        layer0 = make_adapter(folder, rng)
        size_mb = (folder / "adapter_model.safetensors").stat().st_size / 2**20
        print(f"adapter  {LAYERS} layers x {len(SHAPES)} modules, r={R}, {size_mb:.0f} MiB safetensors")
        ck = Checkpoint(run="bench", step=100, kind="lora", path=folder, base="none")

        lora_times, df = [], None
        for _ in range(REPEATS):  # the whole checkpoint: read safetensors, QR + core SVD, metrics, DataFrame
            t0 = time.perf_counter()
            df = spectra_for_checkpoint(ck, top=64, intruders=False)
            lora_times.append(time.perf_counter() - t0)
        lora_s = statistics.median(lora_times)
        assert len(df) == LAYERS * len(SHAPES)

        scale = ALPHA / R
        dense_times, worst = [], 0.0
        for module, (A, B) in layer0.items():  # dense baseline: form ΔW, thin float32 SVD (gesdd) with vectors
            t0 = time.perf_counter()
            delta = scale * (B @ A)
            _, s_dense, _ = sla.svd(delta, full_matrices=False, lapack_driver="gesdd", check_finite=False)
            dense_times.append(time.perf_counter() - t0)
            ours = np.asarray(df[(df.layer == 0) & (df.module == module.split(".")[-1])].iloc[0].singular_values)
            worst = max(worst, float(np.max(np.abs(ours - s_dense[: ours.size]) / s_dense[0])))
        dense_layer_s = sum(dense_times)
        dense_ckpt_s = dense_layer_s * LAYERS
        geo_times = []  # the Path-Not-Taken columns: W_t = W_0 + s*B*A formed, float64 SVDs of W_0 and W_t, masks
        for module, (A, B) in layer0.items():
            m, n = SHAPES[module]
            W0 = rng.standard_normal((m, n), dtype=np.float32) / np.sqrt(n)
            t0 = time.perf_counter()
            module_geometry(W0, W0 + (scale * (B @ A)).astype(np.float32))
            geo_times.append(time.perf_counter() - t0)
        geo_layer_s = sum(geo_times)

    speedup = dense_ckpt_s / lora_s
    print(f"lora_spectra_runs_s  {' '.join(f'{t:.2f}' for t in lora_times)}  (median of {REPEATS} below)")
    print(f"lora_spectra_checkpoint_s  {lora_s:.2f}  goal <= {GOAL_S:.0f} s  {'PASS' if lora_s <= GOAL_S else 'FAIL'}")
    print(f"dense_svd_layer0_s  {dense_layer_s:.2f}  (measured once: form ΔW + thin SVD, 7 modules of layer 0: "
          + ", ".join(f"{m.split('.')[-1]} {t:.2f}" for m, t in zip(layer0, dense_times)) + ")")
    print(f"dense_svd_checkpoint_s  {dense_ckpt_s:.1f}  (extrapolated: layer 0 x {LAYERS} layers, not measured)")
    print(f"speedup_vs_dense  {speedup:.0f}x  goal >= {GOAL_SPEEDUP:.0f}x  {'PASS' if speedup >= GOAL_SPEEDUP else 'FAIL'}")
    print(f"max_sigma_diff_vs_dense  {worst:.1e}  (relative to σ1, layer 0; float32 dense vs exact float64 QR path)")
    print(f"path_not_taken_layer0_s  {geo_layer_s:.2f}  (measured once, 7 modules of layer 0: "
          + ", ".join(f"{m.split('.')[-1]} {t:.2f}" for m, t in zip(layer0, geo_times)) + ")")
    print(f"path_not_taken_checkpoint_s  {geo_layer_s * LAYERS:.0f}  (extrapolated x {LAYERS} layers: the new "
          "columns' cost per checkpoint, on top of the spectra above; they need W_t, so they run with intruders)")


if __name__ == "__main__":
    main()
