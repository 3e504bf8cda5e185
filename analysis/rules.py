"""Every threshold that decides a change point or a verdict, in one place; the CLI options of `phase` and
`hypothesis` set them, and `benchmarks/bench_verdicts.py` measures how often the verdicts they give are wrong.

The verdict rules, named where they are applied (analysis/claims_*.py, analysis/hypothesis.py):

R0 evidence    A claim that lacks what it needs (points, formatted samples, problems, stderr, retention rows, runs)
               is *inconclusive*, and its detail says what was missing ("5 eval points; change points need 6").
               *not supported* only ever rests on evidence against.
R1 held out    The best checkpoint is never scored on the data that chose it: chosen on the held-out benchmark when
               the store has one, else on one half of the test problems (a fixed split by problem id) and scored
               on the other half; with fewer than `min_split_problems` problems per half the per-problem claims are
               inconclusive.
R2 one noise   Every eval curve's noise is the checkpoint-to-checkpoint variation of its mean on the same problems:
               sd over problems of the per-problem change between consecutive checkpoints / sqrt(2 n_problems),
               median over consecutive pairs. Format and accuracy curves are judged alike (analysis/phase.py).
R3 order       format_first: the format rate (eval, test benchmark) has a rise of at least `min_rise`. Change points
               (test benchmark) suggest the order; paired tests on the held-out benchmark's samples (independent of
               the data that placed the change points; without one, the test's own, flagged) confirm it.
               Lenient changes smaller than `accuracy_margin` lie within equivalence and do not count as a move.
               Supported when, over the evaluated steps from the end of the format onset's range up to any later
               lenient change point, the format rate has risen by `min_rise` (CI above 0) while lenient accuracy is
               equivalent to the base's (paired TOST within `accuracy_margin`). Not supported when the first
               lenient change point's range lies wholly before the format onset's and, on the steps between,
               lenient accuracy differs from the base's while the format has not risen by `min_rise`; or when the
               format did not rise (the paired CI of the format change base -> best lies below `min_rise`, or the base
               already formats more than 1 - `min_rise`: Wilson lower bound). A tie
               (overlapping ranges, or lenient moving with the format) counts for neither side.
R4 gain        gain_decomposition: Shapley split of the strict gain S1 - S0 = F1 C1 - F0 C0 (F: well-formatted
               share, C: P(correct | well formatted)); when the base has fewer than `min_formatted_base` formatted
               samples, C is read as lenient accuracy at both steps (format taken as independent of correctness)
               and the detail says so. D = format part - `share_threshold` x gain, bootstrap over problems:
               supported when the gain's CI and D's CI lie above 0, not supported when the gain's CI lies above 0
               and D's below (correctness carries the gain); otherwise inconclusive. No share is ever forced.
R5 strict      strict_gain: paired t test of per-problem strict accuracy, best vs base: supported when the
               two-sided (1 - alpha) CI lies above 0 (a gain is claimed two-sided, by convention: wrong in alpha / 2
               of series with no gain), not supported when it lies below `accuracy_margin` (no gain worth the name).
R6 task kept   lenient_kept: per-problem lenient accuracy best vs base, paired: supported (nothing lost) when the
               non-inferiority test (H0: change <= -margin) rejects at alpha; not supported when the (1 - 2 alpha)
               CI lies wholly below -margin; a rise is never a loss. The detail adds the two-sided paired test and
               the TOST p (statsmodels).
R7 knowledge   knowledge_kept, per retention metric with its own direction and margin (accuracy-like: absolute
               `retention_margin`, higher is better; kl: `kl_margin` on the value; nll: `nll_margin`; ppl follows
               nll and is shown, not tested, when nll is present, else `ppl_rel_margin` relative): kept by a
               one-sided test at alpha, lost when the (1 - 2 alpha) CI lies wholly beyond the margin on the bad
               side, Holm-adjusted over a run's metrics (statsmodels). Paired over items where the table has them
               (lm-eval probes; no item changed: the Clopper-Pearson bound of the changed share), else the
               unpaired sqrt(se0^2 + se1^2) (conservative). No stderr (or stderr 0 without items) is no test.
               KL on the task's own prompts (`task_probes`) measures how far RL moved the policy where it trained
               it, which the hypothesis expects; it is shown, not tested as knowledge.
R8 geometry    update_geometry is descriptive (medians per kind) unless each kind has `min_geometry_runs` runs:
               then a Mann-Whitney test over run-level medians (runs, not pooled modules, are the replicates).
               energy_rank90 is not compared: a rank-r LoRA update has at most r by construction.
R9 overall     format_adaptation: supported <=> format_first, gain_decomposition, lenient_kept and knowledge_kept
               are all supported (an intersection-union test: each at alpha); not supported <=> format_first or
               gain_decomposition is not supported, or task or retention knowledge was lost; inconclusive
               otherwise. The detail names each part's verdict and what was not tested.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class PhaseRules:
    """Change-point detection settings (analysis/changepoints.py, analysis/phase.py)."""

    min_points: int = 6  # curves with fewer points are not segmented (the verdicts say so)
    min_size: int = 2  # shortest segment, in points
    # Penalty per change point = penalty_c * sigma^2 * log(n): the MBIC-like constant 3 (Zhang & Siegmund 2007).
    # Measured here on Gaussian noise with known sigma: 2-3% of curves of 8-100 points get a spurious change.
    penalty_c: float = 3.0
    n_boot: int = 200  # bootstrap refits per curve and method for a change point's range
    ci_level: float = 95.0  # a change point's range: the central ci_level% of its bootstrap positions


@dataclass(frozen=True)
class VerdictRules:
    """Verdict thresholds (rules R0-R9 above)."""

    alpha: float = 0.05  # level of every test (one-sided; R5 claims a gain two-sided, alpha / 2 a side)
    accuracy_margin: float = 0.10  # task accuracy: TOST / non-inferiority margin, absolute (R3, R5, R6)
    min_rise: float = 0.10  # the smallest format-rate rise that counts as a format transition (R3)
    share_threshold: float = 0.5  # the format part must carry more than this share of the strict gain (R4)
    min_formatted_base: int = 20  # formatted base samples below which C is read as lenient accuracy (R4)
    min_split_problems: int = 8  # problems per half when the test problems are split to choose the best (R1)
    retention_margin: float = 0.05  # accuracy-like retention metrics, absolute (R7)
    kl_margin: float = 0.05  # retention KL to the base, nats per token (R7)
    nll_margin: float = 0.05  # retention NLL change, nats per token (R7)
    ppl_rel_margin: float = 0.05  # retention perplexity change, relative, when no nll is given (R7)
    min_geometry_runs: int = 4  # runs per kind before geometry is tested rather than described (R8)
    # probes on the task's own prompts (KL of the policy where RL trained it): shown, not tested as knowledge (R7)
    task_probes: tuple[str, ...] = ("kl_task", "kl_task_real")
    n_boot: int = 2000  # bootstrap resamples over problems (R4)


def describe(rules) -> str:
    """One line naming every threshold of a rules record (for details and logs)."""
    return ", ".join(f"{f.name}={getattr(rules, f.name)}" for f in fields(rules))
