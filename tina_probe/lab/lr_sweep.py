"""`tina-probe lab real-sweep`: the real study's learning rates, chosen by measurement instead of guessed.

Each arm (the LoRA recipe and the full-FT recipe) is trained a few GRPO steps at every learning rate of its grid, with
the same data, seed, rewards and batch, and the training rewards of every step are recorded (`data/real/lr-sweep.json`).

Rule (stated once, applied per arm): among the rates under which no rewarded part falls, the chosen rate is the one
with the highest mean *total* training reward (the recipe's weighted sum of its rewards, which GRPO maximises) over
the second half of the steps; its standard error is the spread of those steps' means over the square root of their
number (each step samples new prompts). A rate under which a part falls trades one reward for another (measured on
the real task: LoRA at 2e-3 dropped the boxed format to 0.02 and answered with the bare number, 6 tokens, which
lenient accuracy still pays); it is reported as "falls" and chosen only when every rate falls. A part falls when
  - its late mean is below its first step's, or
  - (accuracy) the late completions are right significantly less often than the base's on the task (one-sided
    Fisher exact test at 0.05, scipy.stats.fisher_exact, of two samples: the late steps' completions, whose share
    right is the late accuracy reward, and the base's task measurement, data/real/<base>.measure.json, the same
    prompts and sampling, itself a sample of n_problems x n_samples). One step's 16 completions can hold no right
    answer by chance, so the first step alone misses a collapse: measured on the real task, LoRA at 1e-3 and 2e-3
    and full FT at 5e-5 learned to box the instruction's example answer (`\\boxed{70}`: format reward 1, accuracy
    0, 0 right of 64 late completions against the base's 10.9%), which the first-step comparison (0.00 at step 1)
    did not see.
The ratio of the chosen LoRA rate to the chosen full-FT rate is printed beside the ~10x that "LoRA Without Regret"
(Thinking Machines, 2025) reports for RL.
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


ALPHA = 0.05  # the one-sided test's level (rule: accuracy below the base's)


def accuracy_below_base(summary: dict, late_completions: int | None, base: dict | None) -> float | None:
    """The one-sided Fisher exact p-value that the late completions are right less often than the base's sample, or
    None where the base's share or the late completion count is unknown."""
    from scipy.stats import fisher_exact

    if not base or not late_completions or "accuracy_reward_late" not in summary:
        return None
    right = round(summary["accuracy_reward_late"] * late_completions)  # accuracy is 0/1 per completion
    base_right = round(float(base["accuracy"]) * int(base["n"]))
    table = [[right, late_completions - right], [base_right, int(base["n"]) - base_right]]
    return float(fisher_exact(table, alternative="less").pvalue)


def falls(summary: dict, late_completions: int | None = None, base: dict | None = None) -> list[str]:
    """The rewarded parts that fall (the rule in the docstring): late mean below the first step's, or (accuracy)
    significantly below the base's share on the task."""
    fell = [m for m in ("format_reward", "accuracy_reward")
            if f"{m}_late" in summary and summary[f"{m}_late"] < summary[f"{m}_first"]]
    p = accuracy_below_base(summary, late_completions, base)
    if p is not None and p < ALPHA and "accuracy_reward" not in fell:
        fell.append("accuracy_reward")
    return fell


def late_completions(run: dict) -> int | None:
    """How many completions the run's late steps sampled (its completions per step x the late steps)."""
    per_step = run.get("completions_per_step")
    return per_step * (run["steps"] - run["steps"] // 2) if per_step else None


def run_falls(run: dict, base: dict | None) -> list[str]:
    """falls() of a recorded sweep run, with its late completion count."""
    return falls(run["summary"], late_completions(run), base)


def choose(runs: list[dict], base: dict | None = None) -> dict[str, float]:
    """Per arm, the learning rate with the highest late mean total reward among those where no part falls (the rule
    in the docstring)."""
    chosen = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        steady = [r for r in mine if not run_falls(r, base)] or mine
        if steady:
            chosen[arm] = max(steady, key=lambda r: r["summary"]["reward_late"])["learning_rate"]
    return chosen


def base_accuracy(name: str = "smollm2-135m-instruct") -> dict | None:
    """The base's share of right answers on the study's task and instruction, from its task measurement (graded with
    the study's answer kind), or None when it was not measured that way."""
    from tina_probe.real.card import measurements_path
    from tina_probe.real.tasks import CHOSEN_INSTRUCTION, CHOSEN_TASK, REAL_ANSWER_KIND

    path = measurements_path(name)
    try:
        cands = json.loads(path.read_text()).get("candidates", [])
    except (OSError, ValueError):
        return None
    for c in cands:
        if c.get("name") == f"{CHOSEN_TASK}/{CHOSEN_INSTRUCTION}" and c.get("answer_kind") == REAL_ANSWER_KIND:
            return {"accuracy": float(c["lenient"]), "n": int(c["n_problems"]) * int(c["n_samples"]),
                    "source": f"{path.name}: {c['name']} (lenient, answer kind {REAL_ANSWER_KIND})"}
    return None


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
            manifest = json.loads((runs_root / r.name / "tina_run.json").read_text())
        except (OSError, ValueError):
            manifest = {}
        runs.append({"arm": r.arm, "recipe": ARMS[r.arm], "learning_rate": r.learning_rate, "run": r.name,
                     "steps": len(curve["reward"]), "train_seconds": manifest.get("train_seconds"),
                     "completions_per_step": manifest.get("completions_per_step"), "per_step": curve,
                     "summary": late_summary(curve)})
    result = {"what": "training rewards per GRPO step of each (arm, learning rate); rule: tina_probe/lab/lr_sweep.py",
              "steps": steps, "runs": runs,
              "measured": {"date": time.strftime("%Y-%m-%d"),
                           "train_seconds_sum": round(sum(r["train_seconds"] or 0 for r in runs), 1),
                           "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores"}}
    return _choose_and_write(result, out)


def _choose_and_write(result: dict, out: Path) -> dict:
    """Apply the rule (with the base's task accuracy where measured), write OUT atomically and print the table."""
    result["base"] = base_accuracy()
    result["chosen"] = choose(result["runs"], result["base"])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2))
    print_sweep(result)
    console.print(f"-> {out}", soft_wrap=True)
    return result


def rechoose(recorded: Path, out: Path | None = None) -> dict:
    """The rule applied again to a recorded sweep (its training rewards kept), written to OUT (default: in place)."""
    recorded = Path(recorded).expanduser().resolve()
    try:
        result = json.loads(recorded.read_text())
        result["runs"][0]["summary"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise TinaError(f"{recorded}: not a recorded sweep ({type(exc).__name__}: {exc})") from None
    return _choose_and_write(result, Path(out).expanduser().resolve() if out else recorded)


def print_sweep(result: dict) -> None:
    """The sweep as a table: per run, first-step and late rewards, and the chosen rate per arm."""
    rows = []
    for r in result["runs"]:
        s = r["summary"]
        mark = " (chosen)" if result["chosen"].get(r["arm"]) == r["learning_rate"] else ""
        fell = run_falls(r, result.get("base"))
        p = accuracy_below_base(s, late_completions(r), result.get("base"))
        rows.append((r["arm"], f"{r['learning_rate']:.0e}{mark}",
                     f"{s['reward_first']:.2f}", f"{s['reward_late']:.2f} ± {s['reward_late_se']:.2f}",
                     f"{s.get('format_reward_first', float('nan')):.2f} -> {s.get('format_reward_late', float('nan')):.2f}",
                     f"{s.get('accuracy_reward_first', float('nan')):.2f} -> {s.get('accuracy_reward_late', float('nan')):.2f}",
                     "-" if p is None else f"{p:.2g}",
                     ", ".join(f.replace("_reward", "") + " falls" for f in fell) or "-"))
    base = result.get("base")
    where = f"; base accuracy {base['accuracy']:.1%} of {base['n']} ({base['source']})" if base else ""
    print_table(f"learning-rate sweep: {result['steps']} GRPO steps per run (training rewards; late = second half"
                f"{where})",
                ("arm", "learning rate", "reward step 1", "reward late ± se", "format", "accuracy",
                 "late accuracy below base, p", "note"), rows, console)
    c = result["chosen"]
    if "lora" in c and "full" in c:
        console.print(f"chosen: LoRA {c['lora']:.0e}, full FT {c['full']:.0e}; ratio {c['lora'] / c['full']:.0f}x "
                      "(published for RL: ~10x, 'LoRA Without Regret')", soft_wrap=True)
