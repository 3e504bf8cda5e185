"""`tina-probe lab real-sweep`: the real study's learning rates, chosen by measurement instead of guessed.

Each arm (the LoRA recipe and the full-FT recipe) is trained a few GRPO steps at every learning rate of its grid, with
the same data, seed, rewards and batch, and the training rewards of every step are recorded (`data/real/lr-sweep.json`).

Rule (stated once, applied per arm): among the rates under which no rewarded part falls (late format and late
accuracy reward each at least its first step's), the chosen rate is the one with the highest mean *total* training
reward (the recipe's weighted sum of its rewards, which GRPO maximises) over the second half of the steps; its
standard error is the spread of those steps' means over the square root of their number (each step samples new
prompts). A rate under which a part falls trades one reward for another (measured on the real task: LoRA at 2e-3
dropped the boxed format to 0.02 and answered with the bare number, 6 tokens, which lenient accuracy still pays);
it is reported as "falls" and chosen only when every rate falls. The ratio of the chosen LoRA rate to the chosen full-FT rate is printed beside the ~10x that "LoRA Without
Regret" (Thinking Machines, 2025) reports for RL.
"""
from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from tina_probe.console import print_table
from tina_probe.errors import TinaError
from tina_probe.lab.study import TrainJob, console, ensure_bases, train_jobs, PLANS
from tina_probe.store import atomic_write_text

LORA_RATES = (5e-4, 1e-3, 2e-3)
FULL_RATES = (1e-5, 2e-5, 5e-5)
ARMS = {"lora": "real-lora", "full": "real-full"}


@dataclass(frozen=True)
class SweepRun:
    """One (arm, learning rate) training run of the sweep."""

    arm: str
    learning_rate: float
    steps: int

    @property
    def name(self) -> str:
        return f"{ARMS[self.arm]}-lr{self.learning_rate:.0e}".replace("e-0", "e-")

    def job(self) -> TrainJob:
        return TrainJob(ARMS[self.arm], self.name, (f"grpo.learning_rate={self.learning_rate:.10f}",  # YAML reads 2e-05 as text
                                                    f"grpo.max_steps={self.steps}", f"grpo.save_steps={self.steps}"))


def late_summary(curve: dict[str, list[float]]) -> dict[str, float]:
    """Mean and standard error of each reward over the second half of the steps, and its first-step value."""
    out = {}
    for metric, values in curve.items():
        late = values[len(values) // 2:]
        mean = sum(late) / len(late)
        sd = math.sqrt(sum((v - mean) ** 2 for v in late) / (len(late) - 1)) if len(late) > 1 else float("nan")
        out[f"{metric}_late"] = mean
        out[f"{metric}_late_se"] = sd / math.sqrt(len(late))
        out[f"{metric}_first"] = values[0]
    return out


def falls(summary: dict) -> list[str]:
    """The rewarded parts whose late mean is below their first step's."""
    return [m for m in ("format_reward", "accuracy_reward")
            if f"{m}_late" in summary and summary[f"{m}_late"] < summary[f"{m}_first"]]


def choose(runs: list[dict]) -> dict[str, float]:
    """Per arm, the learning rate with the highest late mean total reward among those where no part falls (the rule
    in the docstring)."""
    chosen = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        steady = [r for r in mine if not falls(r["summary"])] or mine
        if steady:
            chosen[arm] = max(steady, key=lambda r: r["summary"]["reward_late"])["learning_rate"]
    return chosen


def curves(run_dir: Path) -> dict[str, list[float]]:
    """The run's per-step total, format and accuracy training rewards (and completion length), in step order."""
    from tina_probe.runs import training_log

    log = training_log(run_dir)
    out = {}
    for metric in ("reward", "format_reward", "accuracy_reward", "completion_length", "clipped_ratio"):
        rows = log[log.metric == metric].sort_values("step")
        if not rows.empty:
            out[metric] = [float(v) for v in rows.value]
    if "reward" not in out:
        raise TinaError(f"{run_dir}: its training log has no total reward per step")
    return out


def run_sweep(*, lora_rates=LORA_RATES, full_rates=FULL_RATES, steps: int = 8, runs_root: Path | None = None,
              out: Path | None = None) -> dict:
    """Train every (arm, rate) two at a time, read their training rewards, choose per arm, write OUT atomically."""
    if steps < 2:
        raise TinaError(f"--steps {steps}: the rule compares the second half of the steps with the first; need >= 2")
    runs_root = (Path(runs_root) if runs_root else Path("runs") / "real-sweep").expanduser().resolve()
    out = (Path(out) if out else Path("results") / "real-sweep" / "lr-sweep.json").expanduser().resolve()
    ensure_bases(PLANS["real"])
    sweep = [SweepRun("lora", lr, steps) for lr in lora_rates] + [SweepRun("full", lr, steps) for lr in full_rates]
    # LoRA and full FT alternate so that the two runs side by side cost alike (a LoRA step costs a full one's here)
    order = [r for pair in zip(sweep[:len(lora_rates)], sweep[len(lora_rates):]) for r in pair]
    order += [r for r in sweep if r not in order]
    from tina_probe.children import sigterm_as_exit

    with sigterm_as_exit():  # a terminated sweep ends its training children
        train_jobs([r.job() for r in order], runs_root, parallel=2)
    runs = []
    for r in sweep:
        curve = curves(runs_root / r.name)
        try:  # the run's own training time (two runs side by side, one thread each), from its manifest
            seconds = json.loads((runs_root / r.name / "tina_run.json").read_text()).get("train_seconds")
        except (OSError, ValueError):
            seconds = None
        runs.append({"arm": r.arm, "recipe": ARMS[r.arm], "learning_rate": r.learning_rate, "run": r.name,
                     "steps": len(curve["reward"]), "train_seconds": seconds, "per_step": curve,
                     "summary": late_summary(curve)})
    result = {"what": "training rewards per GRPO step of each (arm, learning rate); rule: tina_probe/lab/lr_sweep.py",
              "steps": steps, "runs": runs, "chosen": choose(runs),
              "measured": {"date": time.strftime("%Y-%m-%d"),
                           "train_seconds_sum": round(sum(r["train_seconds"] or 0 for r in runs), 1),
                           "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores"}}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2))
    print_sweep(result)
    console.print(f"-> {out}", soft_wrap=True)
    return result


def print_sweep(result: dict) -> None:
    """The sweep as a table: per run, first-step and late rewards, and the chosen rate per arm."""
    rows = []
    for r in result["runs"]:
        s = r["summary"]
        mark = " (chosen)" if result["chosen"].get(r["arm"]) == r["learning_rate"] else ""
        fell = falls(s)
        rows.append((r["arm"], f"{r['learning_rate']:.0e}{mark}",
                     f"{s['reward_first']:.2f}", f"{s['reward_late']:.2f} ± {s['reward_late_se']:.2f}",
                     f"{s.get('format_reward_first', float('nan')):.2f} -> {s.get('format_reward_late', float('nan')):.2f}",
                     f"{s.get('accuracy_reward_first', float('nan')):.2f} -> {s.get('accuracy_reward_late', float('nan')):.2f}",
                     ", ".join(f.replace("_reward", "") + " falls" for f in fell) or "-"))
    print_table(f"learning-rate sweep: {result['steps']} GRPO steps per run (training rewards; late = second half)",
                ("arm", "learning rate", "reward step 1", "reward late ± se", "format", "accuracy", "note"), rows,
                console)
    c = result["chosen"]
    if "lora" in c and "full" in c:
        console.print(f"chosen: LoRA {c['lora']:.0e}, full FT {c['full']:.0e}; ratio {c['lora'] / c['full']:.0f}x "
                      "(published for RL: ~10x, 'LoRA Without Regret')", soft_wrap=True)
