"""maj@k (self-consistency): the chance that a majority vote over k of a problem's n samples lands on the gold
answer, as an exact expectation over all k-subsets, and the `maj` table (every k <= n, bootstrap CIs).

Votes (one per sample; `vote_counts`):
- a sample graded correct votes for the gold answer (math-verify found it equal to the gold, hence to every
  other correct answer, however written);
- any other sample votes for its extracted answer, whitespace-normalised (two wrong answers written differently
  count as two answers: merging them would need math-verify on every pair of wrong answers);
- a sample without an answer abstains. grading "strict": only well-formatted completions vote (the answer is the
  one boxed after </think>, as strict pass@k reads it); "lenient": every completion with an answer votes.
The subset's vote picks the answer with the most votes; ties are broken uniformly at random among the tied
answers (so a tie of the gold with t wrong answers earns 1/(t+1)); a subset where nobody votes is wrong.
maj@1 therefore equals pass@1 of the same grading.

The expectation is exact: per number x of gold votes in the subset, a small dynamic programme over the wrong
answer groups counts the ways each of them gets at most x votes (and how many get exactly x, the ties); the
abstainers fill the rest of the subset. No subset is enumerated (tests check it against enumeration).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import stats

from tina_probe.errors import TinaError
from tina_probe.passk import CORRECT_COLS, GROUP_COLS

MAX_N = 1000  # counts are float64 binomials: C(1000, 500) ~ 3e299 still fits, larger n would overflow
MAJ_COLUMNS = [*GROUP_COLS, "sampling", "grading", "k", "n", "value", "ci_low", "ci_high", "n_problems"]


@dataclass(frozen=True)
class Votes:
    """One problem's votes: gold votes, the sizes of the wrong answers' vote groups, abstentions."""

    gold: int
    wrong: tuple[int, ...]  # sorted, largest first
    abstain: int

    @property
    def n(self) -> int:
        """Number of samples."""
        return self.gold + sum(self.wrong) + self.abstain


def _comb_row(m: int) -> np.ndarray:
    """C(m, r) for r = 0..m as floats."""
    return np.array([float(math.comb(m, r)) for r in range(m + 1)])


@lru_cache(maxsize=65536)
def _majority_curve(gold: int, wrong: tuple[int, ...], abstain: int) -> tuple[float, ...]:
    """maj@k for k = 1..n of one vote pattern (cached: many problems share a pattern)."""
    n = gold + sum(wrong) + abstain
    if gold == 0:
        return (0.0,) * n
    total_wrong, n_groups = sum(wrong), len(wrong)
    hits = np.zeros(n + 1)  # hits[k]: tie-weighted number of k-subsets whose vote is the gold
    abstain_ways = _comb_row(abstain)
    tie_weight = 1.0 / (1.0 + np.arange(n_groups + 1))
    for x in range(1, gold + 1):
        # ways[s, t]: choices of y_j <= x votes from each wrong group with sum s, of which t groups tie at x
        ways = np.zeros((total_wrong + 1, n_groups + 1))
        ways[0, 0] = 1.0
        for w in wrong:
            new = np.zeros_like(ways)
            for y in range(min(w, x) + 1):
                c = float(math.comb(w, y))
                if y == x:
                    new[y:, 1:] += c * ways[:total_wrong + 1 - y, :-1]
                else:
                    new[y:, :] += c * ways[:total_wrong + 1 - y, :]
            ways = new
        weighted = ways @ tie_weight  # per s: sum over ties of ways / (t + 1)
        by_rest = np.convolve(weighted, abstain_ways)  # index s + r: r abstainers fill the subset
        top = min(n + 1, x + len(by_rest))
        hits[x:top] += float(math.comb(gold, x)) * by_rest[:top - x]
    subsets = np.array([float(math.comb(n, k)) for k in range(n + 1)])
    return tuple(float(v) for v in np.clip(hits[1:] / subsets[1:], 0.0, 1.0))


def majority_curve(votes: Votes) -> np.ndarray:
    """Exact maj@k for k = 1..n of one problem (index k - 1), ties broken uniformly at random."""
    if votes.gold < 0 or votes.abstain < 0 or any(w < 1 for w in votes.wrong):
        raise ValueError(f"majority_curve: need non-negative counts and non-empty wrong groups, got {votes}")
    if votes.n < 1:
        raise ValueError("majority_curve: no samples")
    if votes.n > MAX_N:
        raise ValueError(f"majority_curve: n = {votes.n} samples exceeds {MAX_N} (float binomials overflow)")
    return np.array(_majority_curve(votes.gold, tuple(sorted(votes.wrong, reverse=True)), votes.abstain))


def maj_at_k(votes: Votes, k: int) -> float:
    """Exact maj@k of one problem."""
    if not 1 <= k <= votes.n:
        raise ValueError(f"maj_at_k: need 1 <= k <= n = {votes.n}, got k={k}")
    return float(majority_curve(votes)[k - 1])


def _normalise(answer) -> str | None:
    """A wrong answer's vote key: whitespace collapsed; None (abstain) for a missing or blank answer."""
    if answer is None or (isinstance(answer, float) and math.isnan(answer)):
        return None
    text = " ".join(str(answer).split())
    return text or None


def _well_formatted(frame: pd.DataFrame) -> pd.Series:
    """The well_formatted column, or its FormatReport definition from think_closed, boxed == 1, not truncated."""
    if "well_formatted" in frame.columns:
        return frame["well_formatted"].astype(bool)
    needed = [c for c in ("think_closed", "boxed", "truncated") if c not in frame.columns]
    if needed:
        raise TinaError(f"samples table: strict maj@k needs well_formatted or {needed}")
    return frame["think_closed"].astype(bool) & (frame["boxed"].astype(int) == 1) & ~frame["truncated"].astype(bool)


def vote_counts(frame: pd.DataFrame, grading: str) -> pd.Series:
    """Per problem_id of a samples frame (one checkpoint, benchmark and sampling): its Votes under `grading`."""
    if grading not in CORRECT_COLS:
        raise TinaError(f"grading {grading!r}: unknown; choose one of {', '.join(CORRECT_COLS)}")
    correct = frame[CORRECT_COLS[grading]].astype(bool).to_numpy()
    answers = frame["extracted_answer"] if "extracted_answer" in frame.columns else pd.Series(None, index=frame.index)
    may_vote = _well_formatted(frame).to_numpy() if grading == "strict" else np.ones(len(frame), bool)
    keys = [("gold",) if ok else ((_normalise(a),) if vote and _normalise(a) is not None else None)
            for ok, vote, a in zip(correct, may_vote, answers)]
    out = {}
    for pid, idx in frame.groupby("problem_id", sort=True).indices.items():
        tally = Counter(keys[i] for i in idx)
        gold, abstain = tally.pop(("gold",), 0), tally.pop(None, 0)
        out[pid] = Votes(gold, tuple(sorted(tally.values(), reverse=True)), abstain)
    return pd.Series(out, dtype=object)


def _mean_ci_per_k(curves: np.ndarray, *, n_boot: int, seed: int, alpha: float):
    """Mean over problems of each column (k) of a [problem x k] matrix (nan: k beyond that problem's n, left out),
    with percentile bootstrap CIs that resample problems: one scipy bootstrap with a statistic per k (a call per k,
    as passk.ratio_ci makes, costs ~40 ms of overhead each: minutes for n = 64 over a long series)."""
    with warnings.catch_warnings():  # all-nan columns of a resample (no problem with that many samples)
        warnings.simplefilter("ignore", RuntimeWarning)
        values = np.nanmean(curves, axis=0)
        if len(curves) < 2:  # one problem gives no spread to resample
            return values, np.full_like(values, np.nan), np.full_like(values, np.nan)

        def stat(idx, axis=-1):
            return np.moveaxis(np.nanmean(curves[np.asarray(idx, dtype=int)], axis=-2), -1, 0)

        res = stats.bootstrap((np.arange(len(curves)),), stat, vectorized=True, n_resamples=n_boot,
                              confidence_level=1 - alpha, method="percentile", batch=200,
                              rng=np.random.default_rng(seed))
        dist = np.asarray(res.bootstrap_distribution)  # [k x resamples]
        lows, highs = np.nanpercentile(dist, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=-1)
    return values, lows, highs


def maj_table(samples: pd.DataFrame, group_cols: Sequence[str] = (*GROUP_COLS, "sampling"),
              gradings: Sequence[str] = tuple(CORRECT_COLS), n_boot: int = 1000, seed: int = 0,
              alpha: float = 0.05) -> pd.DataFrame:
    """The maj table: maj@k per group and grading for every k <= n, mean over problems with a bootstrap CI that
    resamples problems. Problems with fewer samples than k are left out of that k (n: the smallest sample count
    used, n_problems: how many problems)."""
    group_cols = [c for c in group_cols if c in samples.columns]
    needed = [*group_cols, "problem_id", *(CORRECT_COLS[g] for g in gradings)]
    missing = [c for c in needed if c not in samples.columns]
    if missing:
        raise TinaError(f"samples table: missing columns {missing}")
    rows = []
    for key, frame in samples.groupby(group_cols, dropna=False, sort=True):
        key = dict(zip(group_cols, key if isinstance(key, tuple) else (key,)))
        for grading in gradings:
            votes = vote_counts(frame, grading)
            ns = np.array([v.n for v in votes])
            curves = np.full((len(votes), int(ns.max())), np.nan)  # [problem x k], nan beyond a problem's n
            for i, v in enumerate(votes):
                curves[i, :v.n] = majority_curve(v)
            values, lows, highs = _mean_ci_per_k(curves, n_boot=n_boot, seed=seed, alpha=alpha)
            for k in range(1, curves.shape[1] + 1):
                use = ns >= k
                rows.append({**key, "grading": grading, "k": k, "n": int(ns[use].min()), "value": values[k - 1],
                             "ci_low": lows[k - 1], "ci_high": highs[k - 1], "n_problems": int(use.sum())})
    columns = [*group_cols, "grading", "k", "n", "value", "ci_low", "ci_high", "n_problems"]
    return pd.DataFrame(rows, columns=columns)
