"""Synthetic runs with planted effects (samples tables, trainer logs, run folders) to validate phase/hypothesis.

A simulated problem i at step t is answered correctly (lenient) with probability expit(a_t + spread * z_i), where
z_i ~ N(0, 1) is the problem's fixed difficulty and a_t is solved so that the mean over problems equals the
planted lenient accuracy; a sample is well formatted with the planted format rate, independently of correctness;
strict correctness is lenient correctness of a well-formatted sample (as in tina_probe.grading).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, special

from tina_probe.errors import TinaError
from tina_probe.passk import format_table, passk_table
from tina_probe.store import Store


def step_curve(steps: Sequence[int], before: float, after: float, at: float) -> np.ndarray:
    """A planted step: `before` for steps < at, `after` from `at` on."""
    steps = np.asarray(steps, dtype=float)
    return np.where(steps < at, before, after)


def shift_for_mean(z: np.ndarray, spread: float, target: float) -> float:
    """The logit shift a with mean(expit(a + spread * z)) == target."""
    if not 0.0 < target < 1.0:
        raise TinaError(f"simulate: accuracy {target} must lie strictly between 0 and 1")
    return optimize.brentq(lambda a: special.expit(a + spread * z).mean() - target, -50.0, 50.0)


def simulate_samples(steps: Sequence[int], format_rate: Sequence[float], lenient: Sequence[float], *,
                     run: str = "sim", kind: str = "lora", benchmark: str = "sim-bench", n_problems: int = 200,
                     n_samples: int = 4, spread: float = 1.0, mean_tokens: float = 40.0,
                     seed: int = 0) -> pd.DataFrame:
    """A samples table for one run: the planted format rate and lenient accuracy at each step (step 0 = base)."""
    if not (len(steps) == len(format_rate) == len(lenient)):
        raise TinaError("simulate: steps, format_rate and lenient must have the same length")
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(n_problems)
    frames = []
    for step, phi, acc in zip(steps, format_rate, lenient):
        p = special.expit(shift_for_mean(z, spread, acc) + spread * z)  # per-problem success probability
        shape = (n_problems, n_samples)
        lenient_ok = rng.random(shape) < p[:, None]
        wf = rng.random(shape) < phi
        # an ill-formatted sample fails one way or the other: unclosed think, or no single boxed answer
        unclosed = ~wf & (rng.random(shape) < 0.5)
        boxed = np.where(wf, 1, np.where(unclosed, 1, rng.choice([0, 2], size=shape)))
        answer = np.where(lenient_ok, "7", "8")
        completion = np.where(wf, "<think>\nsim\n</think>\n\\boxed{" + answer + "}",
                              np.where(unclosed, "<think>\nsim \\boxed{" + answer + "}", "sim " + answer))
        frames.append(pd.DataFrame({
            "run": run, "step": int(step), "kind": "base" if step == 0 else kind, "benchmark": benchmark,
            "problem_id": np.repeat([f"p{i:04d}" for i in range(n_problems)], n_samples),
            "sample_idx": np.tile(np.arange(n_samples), n_problems),
            "completion": completion.reshape(-1), "extracted_answer": answer.reshape(-1),
            "correct_strict": (lenient_ok & wf).reshape(-1), "correct_lenient": lenient_ok.reshape(-1),
            "well_formatted": wf.reshape(-1), "think_closed": ~unclosed.reshape(-1),
            "boxed": boxed.reshape(-1), "answer_tag": np.zeros(wf.size, dtype=bool),
            "truncated": np.zeros(wf.size, dtype=bool),
            "n_tokens": rng.poisson(mean_tokens, size=wf.size),
        }))
    return pd.concat(frames, ignore_index=True)


def simulate_log_history(steps: Sequence[int], format_reward: Sequence[float], accuracy_reward: Sequence[float], *,
                         noise: float = 0.05, names: str = "new", seed: int = 0) -> list[dict]:
    """A trainer_state log_history with noisy planted reward curves, in new (TRL >= 0.16) or old TRL names."""
    if names not in ("new", "old"):
        raise TinaError(f"simulate: names {names!r} must be 'new' or 'old'")
    rng = np.random.default_rng(seed)
    history = []
    for step, fr, ar in zip(steps, format_reward, accuracy_reward):
        f = float(fr + noise * rng.standard_normal())
        a = float(ar + noise * rng.standard_normal())
        length = float(40 + 5 * rng.standard_normal())
        entry = {"step": int(step), "epoch": step / max(steps), "loss": float(0.01 * rng.standard_normal()),
                 "reward": f + a, "kl": float(abs(0.001 * step + 0.01 * rng.standard_normal())),
                 "learning_rate": 1e-5}
        if names == "new":
            entry |= {"rewards/format_reward/mean": f, "rewards/format_reward/std": 0.3,
                      "rewards/accuracy_reward/mean": a, "completions/mean_length": length,
                      "completions/clipped_ratio": 0.0, "entropy": float(1.0 - 0.5 * f)}
        else:
            entry |= {"rewards/format_reward": f, "rewards/accuracy_reward": a, "completion_length": length}
        history.append(entry)
    history.append({"step": int(steps[-1]), "train_runtime": 12.3, "train_loss": 0.0})  # trainer's last summary
    return history


def write_run_folder(run_dir: Path, history: list[dict], checkpoints: Sequence[int]) -> Path:
    """A run folder with checkpoint-N/trainer_state.json holding the log history up to each N (no weights)."""
    run_dir = Path(run_dir)
    for n in checkpoints:
        folder = run_dir / f"checkpoint-{n}"
        folder.mkdir(parents=True, exist_ok=True)
        part = [e for e in history if e.get("step", 0) <= n]
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": int(n), "log_history": part}))
    return run_dir


def write_planted_study(root: Path, *, seed: int = 0, n_problems: int = 200, n_samples: int = 4,
                        n_boot: int = 200) -> list[Path]:
    """Two synthetic runs with known answers, as `eval` and `train` would leave them under `root`.

    planted (lora): format rate 0.3 -> 0.9 at step 100, lenient accuracy flat at 0.8 (format adaptation);
    control (full): format rate 0.95 throughout, lenient accuracy rising 0.4 -> 0.6 (real accuracy gain).
    Writes root/results/{samples,passk,format}.parquet and root/runs/{planted,control}/checkpoint-N; returns the
    run folders."""
    root = Path(root)
    eval_steps = list(range(0, 325, 25))
    ramp = np.interp(eval_steps, [0, 100, 200, 300], [0.4, 0.45, 0.55, 0.6])
    samples = pd.concat([
        simulate_samples(eval_steps, step_curve(eval_steps, 0.3, 0.9, 100), [0.8] * len(eval_steps),
                         run="planted", kind="lora", n_problems=n_problems, n_samples=n_samples, seed=seed),
        simulate_samples(eval_steps, [0.95] * len(eval_steps), ramp, run="control", kind="full",
                         n_problems=n_problems, n_samples=n_samples, seed=seed + 1),
    ], ignore_index=True)
    store = Store(root / "results")
    store.write("samples", samples)
    store.write("passk", passk_table(samples, n_boot=n_boot, seed=seed))
    store.write("format", format_table(samples, n_boot=n_boot, seed=seed))
    train_steps = list(range(5, 305, 5))
    planted = simulate_log_history(train_steps, step_curve(train_steps, 0.3, 0.9, 100),
                                   step_curve(train_steps, 0.24, 0.72, 100), names="new", seed=seed)
    control = simulate_log_history(train_steps, [0.95] * len(train_steps),
                                   np.interp(train_steps, [0, 100, 200, 300], [0.38, 0.43, 0.52, 0.57]),
                                   names="old", seed=seed + 1)
    return [write_run_folder(root / "runs" / "planted", planted, [100, 200, 300]),
            write_run_folder(root / "runs" / "control", control, [150, 300])]
