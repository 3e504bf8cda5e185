"""Pure DataFrame views behind the explorer's Series dynamics page (no I/O, no streamlit)."""

from __future__ import annotations

import numpy as np
import pandas as pd

LABEL_ORDER = ("learned", "forgotten", "unstable", "kept_solved", "never_solved")
SORTS = ("label", "base_rate", "final_rate", "n_flips", "problem_id")
DYNAMICS_METRICS = ("format_reward", "entropy", "completion_length", "clipped_ratio", "kl", "frac_reward_zero_std")


def rate_grid(samples: pd.DataFrame, dynamics: pd.DataFrame, run: str, grading: str, sort_by: str = "label",
              labels: list[str] | None = None) -> tuple[pd.DataFrame, pd.Series]:
    """([problem x step] share of correct samples, each row's label), rows ordered by `sort_by` (label: in
    LABEL_ORDER, then the rise from base to final, largest first) and narrowed to `labels`."""
    col = f"correct_{grading}"
    s = samples[samples["run"] == run]
    if s.empty or col not in s.columns:
        return pd.DataFrame(), pd.Series(dtype=object)
    grid = s.groupby(["problem_id", "step"])[col].mean().unstack("step").sort_index(axis=1)
    d = dynamics[(dynamics["run"] == run) & (dynamics["grading"] == grading)].drop_duplicates("problem_id")
    d = d.set_index("problem_id").reindex(grid.index)
    d["label"] = d["label"].fillna("unlabelled")
    d["rise"] = d["final_rate"] - d["base_rate"]
    if labels is not None:
        d = d[d["label"].isin(labels)]
    if sort_by == "label":
        rank = {lab: i for i, lab in enumerate(LABEL_ORDER)}
        d = d.assign(_rank=d["label"].map(rank).fillna(len(rank))).sort_values(["_rank", "rise"],
                                                                                ascending=[True, False])
    elif sort_by == "problem_id":
        d = d.sort_index()
    else:
        d = d.sort_values(sort_by, ascending=False, kind="stable")
    return grid.loc[d.index], d["label"]


def label_summary(dynamics: pd.DataFrame, run: str) -> pd.DataFrame:
    """Problems per label and grading for one run (every label, zeros kept)."""
    d = dynamics[dynamics["run"] == run]
    if d.empty:
        return pd.DataFrame(columns=["grading", *LABEL_ORDER])
    counts = d.groupby("grading")["label"].value_counts().unstack("label", fill_value=0)
    return counts.reindex(columns=list(LABEL_ORDER), fill_value=0).reset_index()


def base_vs_checkpoint(passk: pd.DataFrame, run: str, step: int, grading: str) -> pd.DataFrame:
    """pass@k rows of the base (step 0) and of `step` for one run and grading, with a `curve` label."""
    p = passk[(passk["run"] == run) & (passk["grading"] == grading) & passk["step"].isin([0, step])]
    curve = np.where(p["step"] == 0, "base (step 0)", f"step {step}")
    return p.assign(curve=curve).sort_values(["step", "k"]).reset_index(drop=True)


def crossover_row(crossover: pd.DataFrame, run: str, step: int, grading: str) -> dict | None:
    """The crossover row of one checkpoint and grading, or None."""
    c = crossover[(crossover["run"] == run) & (crossover["step"] == step) & (crossover["grading"] == grading)]
    return None if c.empty else c.iloc[0].to_dict()


def maj_beside_pass(maj: pd.DataFrame, passk: pd.DataFrame, run: str, step: int, grading: str) -> pd.DataFrame:
    """maj@k (every k) and pass@k (its k values) of one checkpoint and grading, tidy with a `curve` label."""
    cols = ["k", "value", "ci_low", "ci_high"]
    m = maj[(maj["run"] == run) & (maj["step"] == step) & (maj["grading"] == grading)]
    p = passk[(passk["run"] == run) & (passk["step"] == step) & (passk["grading"] == grading)]
    parts = [m[cols].assign(curve="maj@k"), p[cols].assign(curve="pass@k")]
    return pd.concat([x for x in parts if not x.empty] or [pd.DataFrame(columns=[*cols, "curve"])],
                     ignore_index=True).sort_values(["curve", "k"]).reset_index(drop=True)


def training_dynamics(train: pd.DataFrame, phases: pd.DataFrame, run: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the run's training curves among DYNAMICS_METRICS, their pelt change points from the training source)."""
    t = train[(train["run"] == run) & train["metric"].isin(DYNAMICS_METRICS)] if not train.empty else train
    if phases.empty or "metric" not in phases.columns:
        return t, pd.DataFrame(columns=["metric", "change_step", "change_step_low", "change_step_high"])
    ph = phases[(phases["run"] == run) & phases["metric"].isin(DYNAMICS_METRICS)]
    if "method" in ph.columns:
        ph = ph[ph["method"] == "pelt"]
    if "source" in ph.columns:
        ph = ph[ph["source"] == "train"]
    return t, ph.reset_index(drop=True)
