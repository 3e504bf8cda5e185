"""benchmarks/bench_bf16.py and bench_lm_head.py: a decoding pass reads every matrix of the base once, in the dtype
asked; without the cached real base each script says so in one line and stops (so `make bench` still runs offline).
bench_profile.py: its operator classes on a workload whose operators are known."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_bf16  # noqa: E402


def test_decoding_pass_reads_every_matrix_once(tmp_path):
    save_file({"a.weight": torch.randn(8, 4), "b.weight": torch.randn(6, 8), "norm.weight": torch.ones(8)},
              str(tmp_path / "model.safetensors"))
    for dtype, size in ((torch.float32, 4), (torch.bfloat16, 2)):
        seconds, nbytes = bench_bf16.decode_pass(tmp_path, dtype, rows=3, repeats=1)
        assert nbytes == (8 * 4 + 6 * 8) * size and seconds > 0  # the 1-D norm is not a matmul


@pytest.mark.parametrize("script", ["bench_bf16.py", "bench_lm_head.py"])
def test_without_the_cached_real_base_it_says_so(tmp_path, script):
    env = dict(os.environ, TINA_PROBE_CACHE=str(tmp_path / "empty-cache"))
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script)], env=env,
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "skipped: no cached real base" in res.stdout and str(tmp_path / "empty-cache") in res.stdout


def test_profile_split_sorts_operators_and_counts_gemm_flops():
    """bench_profile's classes on a workload whose operators are known: three 64x96 @ 96x32 products (their FLOPs
    exactly), a large add (elementwise), views (small ops), attention."""
    import bench_profile

    a, b, big = torch.randn(64, 96), torch.randn(96, 32), torch.randn(2_000_000)
    q = torch.randn(1, 2, 16, 8)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(3):
            torch.mm(a, b)
        for _ in range(3):
            big.add(big)
        for _ in range(50):
            a.view(-1)
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    s = bench_profile.split_profile(prof, wall=10.0)
    assert s.gemm_flops == 3 * 2 * 64 * 96 * 32
    assert s.gemm > 0 and s.attention > 0 and s.elementwise > 0 and s.small > 0
    assert s.small < s.elementwise  # 50 views (~1 us each) against 3 adds of 2M floats (~1 ms each)
    assert s.kernels_at_rate(1e30) == s.attention + s.elementwise  # products at an infinite rate cost nothing
