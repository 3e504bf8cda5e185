"""A small but realistic results store for the explorer's tests: two runs (LoRA and full FT), steps 0-30."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.phase import best_vs_transition
from tina_probe.grading import grade
from tina_probe.passk import format_table, passk_table
from tina_probe.store import Store

RUNS = {"lab-lora-r8": "lora", "lab-full": "full"}
STEPS = (0, 10, 20, 30)
BENCHMARK = "lab-test"
SAMPLING = "n=4 T=1 top_p=1 max_tokens=64 seed=0"
BASE = "data/lab/base"
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
N_PROBLEMS, N_SAMPLES = 8, 4
# Planted story: the format is learned by step 20 (full FT a little earlier), arithmetic stays about as good.
FORMAT_P = {"lora": (0.05, 0.35, 0.85, 0.95), "full": (0.05, 0.6, 0.9, 0.95)}
ARITH_P = 0.6


def _completion(rng: np.random.Generator, a: int, b: int, wf: bool) -> tuple[str, bool, int]:
    """A lab-style completion: (text, truncated, n_tokens); right or wrong arithmetic, formatted or not."""
    ans = a + b if rng.random() < ARITH_P else a + b + int(rng.integers(1, 4))
    if wf:
        text = f"<think>\n{a}+{b}={ans}\n</think>\n\\boxed{{{ans}}}"
        return text, False, 10 + len(str(ans))
    style = int(rng.integers(0, 3))
    if style == 0:
        return f"{a}+{b}={ans} so the answer is {ans}", False, 14
    if style == 1:
        return f"<think>\n{a}+{b}={ans}\n{ans}*1={ans}", True, 64
    return f"<think>\n{a}+{b}={ans}\n</think>\nanswer {ans} and \\boxed{{{ans}}} \\boxed{{{ans + 1}}}", False, 24


def samples_table(seed: int = 0) -> pd.DataFrame:
    """Graded samples for both runs at every step (step 0 is the shared base)."""
    rows = []
    problems = [(f"test-{i:05d}", 3 + 7 * i % 40, 5 + 11 * i % 30) for i in range(N_PROBLEMS)]
    for r, (run, kind) in enumerate(RUNS.items()):
        for s, step in enumerate(STEPS):
            rng = np.random.default_rng(seed + 100 * s + (0 if step == 0 else 7 * r))
            for pid, a, b in problems:
                for idx in range(N_SAMPLES):
                    text, truncated, n_tokens = _completion(rng, a, b, rng.random() < FORMAT_P[kind][s])
                    g = grade(text, str(a + b), truncated=truncated)
                    rows.append({
                        "run": run, "step": step, "kind": "base" if step == 0 else kind, "benchmark": BENCHMARK,
                        "problem_id": pid, "sample_idx": idx, "completion": text,
                        "extracted_answer": g.extracted_answer, "correct_strict": g.correct_strict,
                        "correct_lenient": g.correct_lenient, "think_closed": g.format.think_closed,
                        "boxed": g.format.n_boxed_after_think, "truncated": truncated,
                        "well_formatted": g.format.well_formatted, "answer_tag": g.format.answer_tag,
                        "n_tokens": n_tokens, "answer": str(a + b), "sampling": SAMPLING,
                    })
    return pd.DataFrame(rows)


def _spectrum(kind: str, step: int, layer: int, m: int) -> np.ndarray:
    """Top singular values of an update: LoRA rank 8 with a steep decay, full FT flatter and longer."""
    scale = 0.02 * step * (1 + 0.1 * layer + 0.05 * m)
    if kind == "lora":
        return scale * np.exp(-(0.3 + 0.1 * layer) * np.arange(8))
    return scale * 0.6 * np.exp(-(0.06 + 0.03 * layer + 0.01 * m) * np.arange(16))


def spectra_table() -> pd.DataFrame:
    """Update spectra of every trained checkpoint, 4 layers x 4 modules."""
    rows = []
    for run, kind in RUNS.items():
        for step in STEPS[1:]:
            for layer in range(4):
                for m, module in enumerate(MODULES):
                    sv = _spectrum(kind, step, layer, m)
                    p = sv / sv.sum()
                    energy = np.cumsum(sv**2) / np.sum(sv**2)
                    intr = {0.3: 6, 0.5: 4, 0.7: 2, 0.9: 1} if kind == "lora" else {0.3: 2, 0.5: 1, 0.7: 0, 0.9: 0}
                    bump = (layer + m) % 2
                    rows.append({
                        "run": run, "step": step, "kind": kind, "layer": layer, "module": module,
                        "singular_values": sv.tolist(), "fro_norm": float(np.sqrt(np.sum(sv**2))),
                        "stable_rank": float(np.sum(sv**2) / sv[0] ** 2),
                        "effective_rank": float(np.exp(-np.sum(p * np.log(p)))),
                        "energy_rank90": int(np.searchsorted(energy, 0.9) + 1),
                        "intruders": intr[0.5] + bump,
                        **{f"intruders_eps0{int(e * 10)}": v + bump for e, v in intr.items()},
                    })
    return pd.DataFrame(rows)


def retention_table() -> pd.DataFrame:
    """Facts accuracy and KL from the base per checkpoint; full FT forgets more."""
    rows = []
    for run, kind in RUNS.items():
        loss = 0.002 if kind == "lora" else 0.006
        for step in STEPS:
            acc = 0.8 - loss * step
            rows.append({"run": run, "step": step, "kind": "base" if step == 0 else kind, "probe": "lab-facts",
                         "metric": "acc", "value": acc, "stderr": math.sqrt(acc * (1 - acc) / 200)})
            rows.append({"run": run, "step": step, "kind": "base" if step == 0 else kind, "probe": "lab-text",
                         "metric": "kl", "value": 0.0 if step == 0 else loss * step * 2, "stderr": 0.002})
    return pd.DataFrame(rows)


def training_log_table() -> pd.DataFrame:
    """Tidy training curves (run, step, metric, value) with a format reward that jumps mid-run."""
    rows = []
    rng = np.random.default_rng(3)
    for run, kind in RUNS.items():
        jump = 14 if kind == "lora" else 9
        for step in range(1, 31):
            fmt = (0.1 if step < jump else 0.9) + 0.03 * rng.standard_normal()
            acc = 0.35 + 0.03 * rng.standard_normal()
            for metric, value in (("format_reward", fmt), ("accuracy_reward", acc), ("reward", fmt + acc),
                                  ("kl", 0.001 * step), ("completion_length", 30 - 0.3 * step)):
                rows.append({"run": run, "step": step, "metric": metric, "value": float(value)})
    return pd.DataFrame(rows)


def phases_table() -> pd.DataFrame:
    """Change points as `tina-probe phase` writes them (pelt rows, train and eval sources)."""
    rows = []
    for run, kind in RUNS.items():
        jump = 14 if kind == "lora" else 9
        for metric, source, bench, step, lo, hi in (
                ("format_reward", "train", None, jump - 0.5, jump - 2, jump + 1),
                ("format_rate", "eval", BENCHMARK, 10 if kind == "full" else 15, 10, 20),
                ("pass1_strict", "eval", BENCHMARK, 15, 10, 20)):
            rows.append({"run": run, "metric": metric, "change_step": step, "change_step_low": lo,
                         "change_step_high": hi, "method": "pelt", "size": 0.7, "n_points": 30 if bench is None else 4,
                         "source": source, "benchmark": bench, "support": 0.9, "sigma": 0.03, "penalty": 0.01})
    return pd.DataFrame(rows)


def hypothesis_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A verdict table with every verdict, and the gain decomposition behind it."""
    rows, dec = [], []
    for run in RUNS:
        rows += [
            {"run": run, "claim": "format_first", "statistic": "lenient_change_minus_format_transition_steps",
             "value": 5.0, "ci_low": 0.0, "ci_high": 10.0, "p_value": float("nan"), "verdict": "supported",
             "detail": "format transition (eval format_rate) at step 10 [10, 20]"},
            {"run": run, "claim": "gain_decomposition", "statistic": "format_share_of_strict_gain", "value": 0.8,
             "ci_low": 0.6, "ci_high": 0.95, "p_value": float("nan"), "verdict": "supported",
             "detail": "strict 0.05 -> 0.5; format part 0.4 <b>not bold</b>"},
            {"run": run, "claim": "lenient_kept", "statistic": "lenient_pass1_change", "value": 0.02,
             "ci_low": -0.1, "ci_high": 0.14, "p_value": 0.7, "verdict": "inconclusive",
             "detail": "lenient accuracy 0.50 -> 0.52 (change 0.02 [-0.10, 0.14]); non-inferiority p 0.7"},
            {"run": run, "claim": "format_adaptation", "statistic": "format_share_of_strict_gain", "value": 0.8,
             "ci_low": 0.6, "ci_high": 0.95, "p_value": float("nan"), "verdict": "inconclusive",
             "detail": "not shown: lenient_kept. format_first supported; gain_decomposition supported; "
                       "lenient_kept inconclusive (lenient accuracy 0.50 -> 0.52); knowledge_kept supported"},
        ]
        dec.append({"run": run, "benchmark": BENCHMARK, "base_step": 0, "best_step": 30, "n_problems": N_PROBLEMS,
                    "gain": 0.45, "gain_low": 0.3, "gain_high": 0.6, "format_part": 0.36, "format_part_low": 0.2,
                    "format_part_high": 0.5, "correct_part": 0.09, "correct_part_low": -0.05,
                    "correct_part_high": 0.2, "share": 0.8, "share_low": 0.6, "share_high": 0.95})
    rows.append({"run": "lora_vs_full", "claim": "update_geometry", "statistic": "intruders: median lora - full",
                 "value": 3.0, "ci_low": 2.0, "ci_high": 4.0, "p_value": 0.001, "verdict": "supported",
                 "detail": "claim: LoRA has more intruder dimensions"})
    rows.append({"run": "lora_vs_full", "claim": "knowledge_kept", "statistic": "lab-facts/acc: change lora - full",
                 "value": 0.12, "ci_low": 0.05, "ci_high": 0.19, "p_value": 0.01, "verdict": "not supported",
                 "detail": "claim: LoRA loses less lab-facts/acc than full FT"})
    return pd.DataFrame(rows), pd.DataFrame(dec)


def _tiny_png() -> bytes:
    """A small PNG for the report's figure."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (30, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def write_results_store(folder: Path | str, *, seed: int = 0) -> Path:
    """Write every table of a two-run study (and a report) into `folder`; returns the folder."""
    folder = Path(folder)
    store = Store(folder)
    samples = samples_table(seed)
    groups = ["run", "step", "kind", "benchmark", "sampling"]
    store.write("samples", samples)
    passk = passk_table(samples, group_cols=groups, n_boot=200, seed=seed)
    store.write("passk", passk)
    store.write("format", format_table(samples, group_cols=groups, n_boot=200, seed=seed))
    store.write("spectra", spectra_table())
    store.write("retention", retention_table())
    store.write("training_log", training_log_table())
    store.write("phases", phases_table())
    store.write("phase_summary", pd.DataFrame([best_vs_transition(passk, phases_table(), r) for r in RUNS]))
    hyp, dec = hypothesis_tables()
    store.write("hypothesis", hyp)
    store.write("gain_decomposition", dec)
    store.write("runs", pd.DataFrame([{"run": r, "kind": k, "base": BASE, "recipe": f"train/recipes/{r}.yaml",
                                       "n_checkpoints": len(STEPS) - 1} for r, k in RUNS.items()]))
    report = folder / "report"
    report.mkdir(parents=True, exist_ok=True)
    (report / "pass1.png").write_bytes(_tiny_png())
    (report / "report.md").write_text("# tina-probe report\n\nStrict pass@1 rose.\n\n![pass@1](pass1.png)\n\n"
                                      "![outside](../../../etc/passwd)\n\n![remote](https://example.com/x.png)\n")
    return folder


PROBE_BENCHMARK = "lab-probe"


def training_dynamics_table() -> pd.DataFrame:
    """Training curves as `tina-probe phase` stores them, with the dynamics metrics: entropy collapses and the
    completion length shrinks where the format reward jumps."""
    rows = []
    rng = np.random.default_rng(4)
    for run, kind in RUNS.items():
        jump = 14 if kind == "lora" else 9
        for step in range(1, 31):
            after = step >= jump
            for metric, value in (("format_reward", 0.9 if after else 0.1), ("entropy", 0.5 if after else 1.4),
                                  ("completion_length", 22 if after else 34), ("clipped_ratio", 0.02),
                                  ("kl", 0.001 * step), ("frac_reward_zero_std", 0.6 if after else 0.2)):
                rows.append({"run": run, "metric": metric, "step": step,
                             "value": float(value + 0.02 * rng.standard_normal())})
    return pd.DataFrame(rows)


def write_dynamics_store(folder: Path | str, *, seed: int = 0) -> Path:
    """The two-run store plus a held-out benchmark (lab-probe, other problems and draws), training dynamics curves
    with their change points, and the four tables of `tina-probe dynamics`."""
    from analysis.dynamics import dynamics_tables

    folder = write_results_store(folder, seed=seed)
    store = Store(folder)
    probe = samples_table(seed + 11).assign(benchmark=PROBE_BENCHMARK)
    probe["problem_id"] = probe["problem_id"].str.replace("test", "probe")
    samples = pd.concat([store.read("samples"), probe], ignore_index=True)
    groups = ["run", "step", "kind", "benchmark", "sampling"]
    store.write("samples", samples)
    passk = passk_table(samples, group_cols=groups, n_boot=200, seed=seed)
    store.write("passk", passk)
    store.write("format", format_table(samples, group_cols=groups, n_boot=200, seed=seed))
    store.write("training_curves", training_dynamics_table())
    phases = phases_table()
    extra = [{**phases.iloc[0].to_dict(), "run": run, "metric": "entropy", "change_step": jump - 0.5,
              "change_step_low": jump - 2.0, "change_step_high": jump + 1.0, "size": -0.9}
             for run, jump in (("lab-lora-r8", 14), ("lab-full", 9))]
    store.write("phases", pd.concat([phases, pd.DataFrame(extra)], ignore_index=True))
    for name, df in dynamics_tables(samples, passk, n_boot=100, seed=seed, show=False).items():
        store.write(name, df)
    return folder
