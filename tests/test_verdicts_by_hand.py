"""Verdicts on series whose truth is known, made outside analysis/simulate.py: completions written here by plain
rules (well-formatted or not, right or wrong answer) for every checkpoint, graded by `tina-probe grade`, then
`tina-probe phase` and `tina-probe hypothesis` through the command line, from a folder outside the repository.
No verdict may be the wrong firm one; where the evidence is thin the verdict must say inconclusive and why."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

STEPS_LONG = list(range(0, 325, 25))  # base + 12 checkpoints
STEPS_SHORT = [0, 25, 50, 75]  # base + 3 checkpoints: fewer points than change points need
PROBLEMS = 30  # per benchmark


def _completion(formatted: bool, right: bool, gold: int) -> str:
    answer = gold if right else gold + 1
    if formatted:
        return f"<think>\nadd the numbers\n</think>\n\\boxed{{{answer}}}"
    return f"<think>\nadd the numbers, so \\boxed{{{answer}}}"  # thinking never closed: not well formatted


def _rows(run: str, steps, fmt_at, len_at, rng: np.random.Generator) -> list[dict]:
    """A run's completions: each problem has its own chance of a right answer (shared by every checkpoint); at each
    step a sample is formatted with the step's format rate and right with the problem's chance shifted to the
    step's lenient accuracy."""
    rows = []
    for bench in ("hand-test", "hand-probe"):
        ease = rng.uniform(-0.25, 0.25, PROBLEMS)
        golds = rng.integers(10, 99, PROBLEMS)
        for step in steps:
            fmt_rate, acc = fmt_at(step), len_at(step)
            for i in range(PROBLEMS):
                p = float(np.clip(acc + ease[i], 0.02, 0.98))
                for j in range(4):
                    rows.append({"run": run, "step": step, "kind": "base" if step == 0 else "lora",
                                 "benchmark": bench, "problem_id": f"{bench}-{i}", "sample_idx": j,
                                 "answer": str(golds[i]),
                                 "completion": _completion(rng.random() < fmt_rate, rng.random() < p, int(golds[i]))})
    return rows


def _cli(args, cwd):
    proc = subprocess.run([sys.executable, "-m", "tina_probe.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, COLUMNS="200"), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory):
    user = tmp_path_factory.mktemp("by-hand")
    rng = np.random.default_rng(2026)
    rows = (_rows("format-only", STEPS_LONG, lambda s: 0.15 if s < 150 else 0.85, lambda s: 0.5, rng)
            + _rows("correctness-only", STEPS_LONG, lambda s: 0.9, lambda s: 0.3 if s < 150 else 0.7, rng)
            + _rows("too-short", STEPS_SHORT, lambda s: 0.15 if s < 50 else 0.85, lambda s: 0.5, rng))
    with open(user / "completions.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    for run in ("format-only", "correctness-only", "too-short"):
        (user / "runs" / run).mkdir(parents=True)  # no training log: phase reads the eval curves only
    _cli(["grade", "--samples", "completions.jsonl", "--out", "store"], user)
    _cli(["phase", "--runs", "runs/format-only", "runs/correctness-only", "runs/too-short", "--out", "store",
          "--n-boot", "100"], user)
    _cli(["hypothesis", "--out", "store", "--n-boot", "500"], user)
    hyp = pd.read_parquet(user / "store" / "hypothesis.parquet")
    return {(r.run, r.claim): r for r in hyp.itertuples(index=False)}


WRONG = {  # (run, claim) -> the firm verdict that would be wrong
    ("format-only", "format_first"): "not supported",
    ("format-only", "gain_decomposition"): "not supported",
    ("format-only", "lenient_kept"): "not supported",
    ("format-only", "format_adaptation"): "not supported",
    ("correctness-only", "format_first"): "supported",
    ("correctness-only", "gain_decomposition"): "supported",
    ("correctness-only", "lenient_kept"): "not supported",  # a rise is no loss
    ("correctness-only", "format_adaptation"): "supported",
    ("too-short", "format_first"): "not supported",
    ("too-short", "format_adaptation"): "not supported",
}


def test_no_verdict_is_the_wrong_firm_one(verdicts):
    for key, wrong in WRONG.items():
        assert verdicts[key].verdict != wrong, (key, verdicts[key].detail)


def test_clear_evidence_gives_the_right_firm_verdicts(verdicts):
    assert verdicts[("format-only", "gain_decomposition")].verdict == "supported"
    assert verdicts[("correctness-only", "gain_decomposition")].verdict == "not supported"
    assert verdicts[("correctness-only", "format_first")].verdict == "not supported"
    assert verdicts[("correctness-only", "format_adaptation")].verdict == "not supported"


def test_missing_evidence_is_named(verdicts):
    short = verdicts[("too-short", "format_first")]
    assert short.verdict == "inconclusive" and short.detail == "4 eval points; change points need 6"
    overall = verdicts[("format-only", "format_adaptation")]
    assert overall.verdict == "inconclusive" and "no retention measured" in overall.detail  # never "supported"
