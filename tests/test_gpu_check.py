"""benchmarks/gpu_check.py: its no-CUDA answer, its pure helpers and its step runner (fast; no training here).

The whole check on CPU (`--device cpu`) took 100 s on this busy 2-core machine (93-244 s across tries), so it is
not part of the suite."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gc = _load()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_without_cuda_it_says_so_in_one_line_and_exits_0():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == gc.NO_CUDA


def test_format_result_is_one_line_with_time_status_name_and_detail():
    r = gc.Result("lora-grpo-2-steps-bf16", "PASS", 12.3, "loss finite, 2 checkpoints")
    assert gc.format_result(r) == "[ 12.3s] PASS  lora-grpo-2-steps-bf16  (loss finite, 2 checkpoints)"
    assert gc.format_result(gc.Result("spectra", "SKIP", 0.0)) == "[  0.0s] SKIP  spectra"


def test_summary_counts_and_exit_code_fails_only_on_fail():
    results = [gc.Result("a", "PASS", 1), gc.Result("b", "SKIP", 0), gc.Result("c", "PASS", 2)]
    assert gc.exit_code(results) == 0
    line = gc.summary_line(results, "cuda", 3.04)
    assert line == "gpu-check on cuda: 2 passed, 0 failed, 1 skipped in 3.0s"
    assert "not a GPU result" in gc.summary_line(results, "cpu", 3.0)
    assert gc.exit_code(results + [gc.Result("d", "FAIL", 1)]) == 1


def test_package_report_names_absent_modules_and_what_wheels_installed():
    ok = {"torch": None, "trl": None}
    assert gc.package_report(ok, [], False) == ("PASS", "2/2 import")
    assert gc.package_report(ok, ["trl"], True) == ("PASS", "2/2 import; installed from wheels/: trl")
    absent = {"torch": None, "trl": "ModuleNotFoundError: No module named 'trl'",
              "datasets": "ImportError: cannot import name 'x' from 'pyarrow'"}
    status, detail = gc.package_report(absent, [], False)
    assert status == "SKIP"
    assert detail == ("1/3 import; absent: trl, datasets (ImportError: cannot import name 'x' from 'pyarrow') "
                      "(no wheels/: make gpu-wheels)")


def test_missing_for_counts_unchecked_modules_as_missing():
    imports = {"torch": None, "trl": "ModuleNotFoundError: No module named 'trl'"}
    assert gc.missing_for(("torch", "trl", "vllm"), imports) == ["trl", "vllm"]
    assert gc.missing_for(("torch",), imports) == []


def test_wheels_to_install_takes_each_distribution_once_and_skips_installed_ones():
    files = [Path(n) for n in ("trl-1.16.0-py3-none-any.whl", "multiprocess-0.70.19-py311-none-any.whl",
                               "multiprocess-0.70.19-py312-none-any.whl",
                               "latex2sympy2_extended-1.11.0-py3-none-any.whl",
                               "xxhash-4.1.0-cp311-cp311-manylinux2014_x86_64.whl")]
    assert gc.wheels_to_install(files, {"TRL", "torch"}) == ["latex2sympy2-extended", "multiprocess", "xxhash"]
    assert gc.wheels_to_install(files, {"Latex2Sympy2_Extended", "multiprocess", "xxhash", "trl"}) == []


def test_run_overrides_make_a_named_two_step_run_saved_every_step():
    args = gc.run_overrides("gpu-check-lora", True, ("grpo.num_generations=2",))
    assert args == ["--set", "name=gpu-check-lora", "--set", "grpo.max_steps=2", "--set", "grpo.save_steps=1",
                    "--set", "grpo.bf16=true", "--set", "grpo.num_generations=2"]
    assert "grpo.bf16=false" in gc.run_overrides("x", False)


def test_last_line_and_finite():
    assert gc.last_line("a\n\n  b  \n\n") == "b" and gc.last_line("") == ""
    assert gc.finite([1, 2.5]) and not gc.finite([1.0, float("nan")]) and not gc.finite([None])


# ----------------------------------------------------------------------------- the step runner


def _ctx(tmp_path, budget=60.0, imports=None):
    return gc.Ctx(device="cpu", work=tmp_path, deadline=time.monotonic() + budget, env=dict(os.environ),
                  imports=imports if imports is not None else {"torch": None})


def test_run_step_passes_fails_and_skips_with_reasons(tmp_path):
    ctx = _ctx(tmp_path, imports={"torch": None, "trl": "ModuleNotFoundError: No module named 'trl'"})
    ok = gc.run_step(gc.Step("ok", lambda c, t: "fine", needs=("torch",)), ctx)
    assert (ok.status, ok.detail) == ("PASS", "fine") and "ok" in ctx.passed

    def broken(c, t):
        raise gc.CheckFailed("losses [nan]")

    assert gc.run_step(gc.Step("bad", broken), ctx).detail == "losses [nan]"
    bug = gc.run_step(gc.Step("bug", lambda c, t: 1 / 0), ctx)
    assert bug.status == "FAIL" and bug.detail.startswith("ZeroDivisionError")
    skip = gc.run_step(gc.Step("train", lambda c, t: "x", needs=("torch", "trl")), ctx)
    assert (skip.status, skip.detail) == ("SKIP", "needs trl: not importable")
    after = gc.run_step(gc.Step("eval", lambda c, t: "x", after_any=("bad", "train")), ctx)
    assert (after.status, after.detail) == ("SKIP", "needs one of bad, train to pass first")
    assert gc.run_step(gc.Step("eval2", lambda c, t: "x", after_any=("bad", "ok")), ctx).status == "PASS"


def test_run_step_gives_the_step_the_time_left_and_skips_past_the_budget(tmp_path):
    seen = []
    ctx = _ctx(tmp_path, budget=30)
    gc.run_step(gc.Step("a", lambda c, t: seen.append(t) or "x", timeout=200), ctx)
    assert 25 < seen[0] <= 30
    late = gc.run_step(gc.Step("b", lambda c, t: "x"), _ctx(tmp_path, budget=2))
    assert (late.status, late.detail) == ("SKIP", "out of the time budget")


def test_run_child_kills_a_child_past_its_timeout_and_keeps_its_log(tmp_path):
    ctx = _ctx(tmp_path)
    start = time.monotonic()
    with pytest.raises(gc.CheckFailed, match="timed out after 1s"):
        gc.run_child([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], ctx, 1,
                     "sleeper")
    assert time.monotonic() - start < 20
    assert "started" in (tmp_path / "logs" / "sleeper.log").read_text()
    with pytest.raises(gc.CheckFailed, match="exit 3: boom"):
        gc.run_child([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"], ctx, 30, "x")


def test_steps_not_wanted_leave_no_line(tmp_path, capsys):
    ctx, results = _ctx(tmp_path), []
    steps = [gc.Step("a", lambda c, t: "x"), gc.Step("b", lambda c, t: "y", only_if=lambda c: "a" not in c.passed)]
    gc.run_steps(steps, ctx, results)
    assert [r.name for r in results] == ["a"] and capsys.readouterr().out.count("\n") == 1


# ----------------------------------------------------------------------------- what the steps check


def _fake_run(root: Path, kind: str, losses, dtype=torch.float32, status="complete") -> Path:
    run = root / f"gpu-check-{kind}"
    for step in (1, 2):
        ckpt = run / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        history = [{"loss": v, "step": i + 1} for i, v in enumerate(losses[:step])]
        (ckpt / "trainer_state.json").write_text(json.dumps({"log_history": history}))
        name = "adapter_model.safetensors" if kind == "lora" else "model.safetensors"
        save_file({"w": torch.zeros(2, 2, dtype=dtype)}, str(ckpt / name))
        if kind == "lora":
            (ckpt / "adapter_config.json").write_text("{}")
    (run / "tina_run.json").write_text(json.dumps({"status": status, "train_seconds": 1.5}))
    return run


def test_check_run_accepts_a_whole_two_step_run(tmp_path):
    run = _fake_run(tmp_path, "full", [0.5, 0.25], dtype=torch.bfloat16)
    detail = gc.check_run(run, "full", bf16=True)
    assert detail.startswith("losses 0.5, 0.25 finite, 2 checkpoints, model.safetensors BF16")
    with pytest.raises(gc.CheckFailed, match="expected F32"):
        gc.check_run(run, "full", bf16=False)


def test_check_run_refuses_nan_losses_and_unfinished_runs(tmp_path):
    with pytest.raises(gc.CheckFailed, match="losses"):
        gc.check_run(_fake_run(tmp_path / "a", "lora", [0.5, float("nan")]), "lora", bf16=False)
    with pytest.raises(gc.CheckFailed, match="status interrupted"):
        gc.check_run(_fake_run(tmp_path / "b", "lora", [0.5, 0.4], status="interrupted"), "lora", bf16=False)


def test_expected_models_reads_kind_and_step_from_the_run_folders(tmp_path):
    runs = [_fake_run(tmp_path, "lora", [1, 1]), _fake_run(tmp_path, "full", [1, 1])]
    assert gc.expected_models(runs) == {("lora", 1), ("lora", 2), ("full", 1), ("full", 2)}


def test_real_steps_say_why_they_cannot_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TINA_PROBE_CACHE", str(tmp_path))
    why = gc.real_unavailable({"vllm": "ModuleNotFoundError: No module named 'vllm'"})
    assert why.startswith("vllm not importable") and "real base not in the cache" in why
    assert str(tmp_path / "models" / gc.REAL_NAME) in why


def test_device_cpu_is_documented_as_not_a_gpu_result(capsys):
    with pytest.raises(SystemExit):
        gc.parse_args(["--help"])
    assert "for testing the check itself, not a GPU result" in " ".join(capsys.readouterr().out.split())
