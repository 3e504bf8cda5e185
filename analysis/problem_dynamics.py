"""Per-problem dynamics over a checkpoint series: which problems RL taught, which it took away.

A problem's rate at a step is the share of its samples graded correct (strict or lenient). Two thresholds:
- solved: rate >= SOLVED_RATE (0.5, most samples right), the problem is reliably answered;
- reachable: rate > 0, at least one sample right (the base "could sample it", Yue et al., 2025).
Columns: base_rate (step 0), best_rate (the highest rate over trained steps, at best_step), final_rate (the last
evaluated step), first_step_solved (the first step, 0 = base, where it is solved; null if never), n_flips (how
often solved / not solved changes between consecutive evaluated steps). The label, first rule that applies:
1. unstable      n_flips >= UNSTABLE_FLIPS (3), or solved only between the base and the end (at some trained
                 step, but neither at the base nor at the final step);
2. learned       not solved at the base, solved at the final step;
3. kept_solved   solved at the base and at the final step;
4. forgotten     solved at the base but not at the end, or reachable at the base and never right at the end;
5. never_solved  the rest: solved at no step (e.g. 0% -> 0%, 12% -> 25%).
So 25% at the base and 100% at the end is learned; 12% at the base and 0% at the end is forgotten.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SOLVED_RATE = 0.5
UNSTABLE_FLIPS = 3
LABELS = ("learned", "forgotten", "kept_solved", "never_solved", "unstable")
PROBLEM_COLUMNS = ["run", "benchmark", "sampling", "grading", "problem_id", "base_rate", "best_rate", "best_step",
                   "final_rate", "final_step", "first_step_solved", "n_flips", "label"]


def label_problem(rates: np.ndarray, *, solved_rate: float = SOLVED_RATE, unstable_flips: int = UNSTABLE_FLIPS
                  ) -> tuple[str, int]:
    """(label, n_flips) of one problem's rates in step order, the base first (rules in the module docstring)."""
    rates = np.asarray(rates, dtype=float)
    solved = rates >= solved_rate
    flips = int(np.sum(solved[1:] != solved[:-1]))
    base_solved, final_solved = bool(solved[0]), bool(solved[-1])
    if flips >= unstable_flips or (not base_solved and not final_solved and solved[1:-1].any()):
        return "unstable", flips
    if final_solved:
        return ("kept_solved" if base_solved else "learned"), flips
    if base_solved or (rates[0] > 0 and rates[-1] == 0):
        return "forgotten", flips
    return "never_solved", flips


def problem_rates(samples: pd.DataFrame, correct_col: str) -> pd.DataFrame:
    """[problem_id x step] share of correct samples."""
    return samples.groupby(["problem_id", "step"])[correct_col].mean().unstack("step").sort_index(axis=1)


def problem_dynamics_table(samples: pd.DataFrame, gradings: dict[str, str], *, solved_rate: float = SOLVED_RATE,
                           unstable_flips: int = UNSTABLE_FLIPS) -> pd.DataFrame:
    """One row per run, benchmark, sampling, grading and problem (only problems evaluated at the base and at
    least one trained step; steps where a problem was not evaluated are skipped for it)."""
    rows = []
    for (run, bench, sampling), frame in samples.groupby(["run", "benchmark", "sampling"], dropna=False, sort=True):
        for grading, col in gradings.items():
            rates = problem_rates(frame.assign(**{col: frame[col].astype(float)}), col)
            if 0 not in rates.columns:
                continue
            for pid, series in rates.iterrows():
                series = series.dropna()
                if 0 not in series.index or len(series) < 2:
                    continue
                steps, values = series.index.to_numpy(), series.to_numpy(dtype=float)
                label, flips = label_problem(values, solved_rate=solved_rate, unstable_flips=unstable_flips)
                trained = values[1:]
                best = int(np.argmax(trained)) + 1  # earliest trained step at the highest rate
                solved_at = steps[values >= solved_rate]
                rows.append({"run": run, "benchmark": bench, "sampling": sampling, "grading": grading,
                             "problem_id": pid, "base_rate": values[0], "best_rate": values[best],
                             "best_step": int(steps[best]), "final_rate": values[-1], "final_step": int(steps[-1]),
                             "first_step_solved": float(solved_at[0]) if len(solved_at) else np.nan,
                             "n_flips": flips, "label": label})
    return pd.DataFrame(rows, columns=PROBLEM_COLUMNS)


def label_counts(dynamics: pd.DataFrame) -> pd.DataFrame:
    """How many problems carry each label, per run, benchmark, sampling and grading (every label, zeros kept)."""
    keys = ["run", "benchmark", "sampling", "grading"]
    if dynamics.empty:
        return pd.DataFrame(columns=[*keys, *LABELS])
    counts = dynamics.groupby(keys, dropna=False)["label"].value_counts().unstack("label", fill_value=0)
    return counts.reindex(columns=list(LABELS), fill_value=0).reset_index()
