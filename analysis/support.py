"""Support dynamics and answer-level entropy (Wu et al. 2025, "The Invisible Leash", arXiv 2507.14843): does RL
expand what the base can reach, or only sharpen it?

Rules, stated once:
- S1 empirical support. A problem is in a checkpoint's empirical support when at least `min_correct` (default 1) of
  its samples are correct: the detectability threshold is min_correct / n, with n every sample the store holds for
  it (the largest n sampled). The paper counts distinct correct *solutions* with probability above a threshold; a
  problem of ours has one correct answer, so support is counted per problem (as the issue asks) and said so here.
- S2 flows, each trained step against the base (step 0), over problems evaluated at both: P kept (in both), E gained
  (only the checkpoint), S lost (only the base), O out of both. SRR = P / (P + S) (support retention), NDR =
  E / (P + E) (net discovery), NSCR = (E - S) / (P + E + S) (net support change). Undefined ratios (0 / 0) are null.
- S3 CIs: percentile bootstrap over problems (the flows of one problem move together).
- S4 answer entropy. Per problem and checkpoint, the Shannon entropy (nats) of the distribution of its distinct
  final answers (whitespace-normalised extracted answers), samples with no answer counted as one more class, "NA",
  as the paper does ("incomplete outputs counted as NA"); n_distinct counts the answers, NA not included. It can
  fall while the token entropy TRL logs during training (`entropy` in training_log) rises.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from tina_probe.majority import _normalise

MIN_CORRECT = 1
N_BOOT = 1000
SUPPORT_COLUMNS = ["run", "benchmark", "sampling", "grading", "step", "kind", "min_correct", "n_base", "n_step",
                   "threshold", "n_problems", "kept", "gained", "lost", "out", "metric", "value", "ci_low", "ci_high"]
ENTROPY_COLUMNS = ["run", "step", "kind", "benchmark", "sampling", "problem_id", "n", "n_answered", "n_distinct",
                   "answer_entropy"]
SUPPORT_METRICS = ("srr", "ndr", "nscr")


def flow_counts(base_in: np.ndarray, step_in: np.ndarray) -> tuple[int, int, int, int]:
    """(P kept, E gained, S lost, O out) of two boolean support vectors over the same problems (rule S2)."""
    base_in, step_in = np.asarray(base_in, bool), np.asarray(step_in, bool)
    return (int(np.sum(base_in & step_in)), int(np.sum(~base_in & step_in)), int(np.sum(base_in & ~step_in)),
            int(np.sum(~base_in & ~step_in)))


def support_rates(kept, gained, lost) -> dict[str, np.ndarray]:
    """SRR, NDR, NSCR from counts (arrays broadcast; 0 / 0 -> nan)."""
    kept, gained, lost = (np.asarray(x, dtype=float) for x in (kept, gained, lost))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"srr": kept / (kept + lost), "ndr": gained / (kept + gained),
                "nscr": (gained - lost) / (kept + gained + lost)}


def _bootstrap_rates(base_in: np.ndarray, step_in: np.ndarray, *, n_boot: int, seed: int, alpha: float):
    """Percentile CIs of the three rates, resampling problems. Written with numpy rather than scipy.stats.bootstrap
    because a resample can make a ratio 0 / 0, which scipy turns into a nan interval; here such resamples are
    left out of that rate's percentiles."""
    if len(base_in) < 2:
        return {m: (np.nan, np.nan) for m in SUPPORT_METRICS}
    idx = np.random.default_rng(seed).integers(0, len(base_in), size=(n_boot, len(base_in)))
    b, s = base_in[idx], step_in[idx]
    rates = support_rates((b & s).sum(1), (~b & s).sum(1), (b & ~s).sum(1))
    out = {}
    for m, dist in rates.items():
        dist = dist[~np.isnan(dist)]
        out[m] = (tuple(float(x) for x in np.percentile(dist, [100 * alpha / 2, 100 * (1 - alpha / 2)]))
                  if len(dist) else (np.nan, np.nan))
    return out


def support_table(samples: pd.DataFrame, gradings: dict[str, str], *, min_correct: int = MIN_CORRECT,
                  n_boot: int = N_BOOT, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Support flows of every trained step against the base, per run, benchmark, sampling and grading (rules S1-S3);
    long form: one row per rate, the counts repeated on each."""
    rows = []
    for (run, bench, sampling), frame in samples.groupby(["run", "benchmark", "sampling"], dropna=False, sort=True):
        for grading, col in gradings.items():
            by = frame.assign(_c=frame[col].astype(bool)).groupby(["step", "problem_id"])["_c"]
            correct, n = by.sum().unstack("step"), by.size().unstack("step")
            if 0 not in correct.columns:
                continue
            kinds = frame.drop_duplicates("step").set_index("step")["kind"] if "kind" in frame else {}
            for step in [s for s in correct.columns if s != 0]:
                both = correct[[0, step]].dropna().index
                if len(both) == 0:
                    continue
                base_in = (correct.loc[both, 0] >= min_correct).to_numpy()
                step_in = (correct.loc[both, step] >= min_correct).to_numpy()
                kept, gained, lost, out = flow_counts(base_in, step_in)
                rates = support_rates(kept, gained, lost)
                cis = _bootstrap_rates(base_in, step_in, n_boot=n_boot, seed=seed, alpha=alpha)
                n_base, n_step = int(n.loc[both, 0].max()), int(n.loc[both, step].max())
                common = {"run": run, "benchmark": bench, "sampling": sampling, "grading": grading,
                          "step": int(step), "kind": kinds.get(step) if len(kinds) else None,
                          "min_correct": min_correct, "n_base": n_base, "n_step": n_step,
                          "threshold": min_correct / max(n_base, n_step), "n_problems": len(both), "kept": kept,
                          "gained": gained, "lost": lost, "out": out}
                for m in SUPPORT_METRICS:
                    value = float(rates[m])
                    rows.append({**common, "metric": m, "value": value,
                                 "ci_low": cis[m][0] if not np.isnan(value) else np.nan,
                                 "ci_high": cis[m][1] if not np.isnan(value) else np.nan})
    return pd.DataFrame(rows, columns=SUPPORT_COLUMNS)


NA = ("NA",)  # the class of samples with no answer (a tuple: never equal to a normalised answer string)


def answer_entropy(answers) -> tuple[int, int, float]:
    """(answered, distinct answers, entropy in nats) of one problem's final answers (rule S4: no answer is the NA
    class); nan entropy for no samples."""
    keys = [_normalise(a) for a in answers]
    if not keys:
        return 0, 0, np.nan
    answered = [k for k in keys if k is not None]
    counts = pd.Series([NA if k is None else k for k in keys]).value_counts().to_numpy()
    return len(answered), len(set(answered)), float(stats.entropy(counts))


def answer_entropy_table(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per run, step, benchmark, sampling and problem: its answer-level entropy (rule S4), computed from
    answer counts per group (one groupby, not a loop over problems: a long series has tens of thousands)."""
    if "extracted_answer" not in samples.columns:
        return pd.DataFrame(columns=ENTROPY_COLUMNS)
    keys = ["run", "step", "kind", "benchmark", "sampling", "problem_id"]
    answers = [_normalise(a) for a in samples["extracted_answer"]]
    df = samples[keys].assign(_a=["\x00NA" if a is None else a for a in answers],  # rule S4: the NA class
                              _answered=[a is not None for a in answers])
    n = df.groupby(keys, dropna=False, sort=True).size().rename("n")
    counts = df.groupby([*keys, "_a"], dropna=False).agg(c=("_answered", "size"), answered=("_answered", "first"))
    counts = counts.reset_index()
    tot = counts.groupby(keys, dropna=False)["c"].transform("sum")
    counts["h"] = -(counts["c"] / tot) * np.log(counts["c"] / tot)
    counts["c_answered"] = counts["c"].where(counts["answered"], 0)
    agg = counts.groupby(keys, dropna=False).agg(n_answered=("c_answered", "sum"), n_distinct=("answered", "sum"),
                                                answer_entropy=("h", "sum"))
    out = pd.concat([n, agg], axis=1).reset_index()
    out["n_answered"] = out["n_answered"].fillna(0).astype(int)
    out["n_distinct"] = out["n_distinct"].fillna(0).astype(int)
    out["answer_entropy"] = out["answer_entropy"] + 0.0  # -0.0 -> 0.0
    return out[ENTROPY_COLUMNS]
