"""LoRA vs full FT across runs (rule R8): update geometry and knowledge change, described per kind, and tested only
where each kind has several runs (runs are the replicates; modules of one run are not independent samples)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from analysis.claim import ClaimRow, fmt
from analysis.rules import VerdictRules

CROSS_RUN = "lora_vs_full"  # the run label of the claims that compare LoRA runs with full-FT runs


def _run_values(df: pd.DataFrame, column: str) -> dict[str, pd.Series]:
    """kind -> one value per run (the median over the run's modules)."""
    return {kind: g.groupby("run")[column].median().dropna() for kind, g in df.groupby("kind")}


def _replicated_test(run_vals: dict[str, pd.Series], sign: int, rules: VerdictRules) -> tuple[float, str, str]:
    """(p, verdict, note): Mann-Whitney over run-level values when each kind has min_geometry_runs runs."""
    a, b = run_vals.get("lora", pd.Series(dtype=float)), run_vals.get("full", pd.Series(dtype=float))
    if min(len(a), len(b)) < rules.min_geometry_runs:
        return np.nan, "inconclusive", (f"descriptive: {len(a)} LoRA and {len(b)} full-FT run(s); a test needs "
                                        f"{rules.min_geometry_runs} runs per kind")
    p = float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    right = np.sign(np.median(a) - np.median(b)) == sign
    verdict = "supported" if p < rules.alpha and right else "not supported" if p < rules.alpha else "inconclusive"
    return p, verdict, f"Mann-Whitney U over runs ({len(a)} LoRA, {len(b)} full)"


def geometry_claims(spectra: pd.DataFrame, steps: dict[str, int],
                    rules: VerdictRules = VerdictRules()) -> list[ClaimRow]:
    """update_geometry at each run's best (else last) checkpoint: intruder dimensions, LoRA vs full. energy_rank90
    is not compared (a rank-r LoRA has at most r by construction)."""
    if spectra.empty or not {"kind", "intruders"} <= set(spectra.columns):
        return []
    picked = []
    for run, g in spectra[spectra["kind"].isin(["lora", "full"])].groupby("run", sort=True):
        want = steps.get(run)
        picked.append(g[g["step"] == (want if want in set(g["step"]) else g["step"].max())])
    if not picked:
        return []
    df = pd.concat(picked, ignore_index=True)
    if "layer" in df.columns:  # the same modules on both sides: full FT's vocabulary matrices have no LoRA twin
        df = df[df["layer"] >= 0]
    vals = _run_values(df, "intruders")
    if "lora" not in vals or "full" not in vals or vals["lora"].empty or vals["full"].empty:
        return []
    diff = float(vals["lora"].median() - vals["full"].median())
    p, verdict, note = _replicated_test(vals, 1, rules)
    lora_mod, full_mod = df[df["kind"] == "lora"]["intruders"], df[df["kind"] == "full"]["intruders"]
    detail = (f"claim: LoRA has more intruder dimensions; median per module LoRA {fmt(float(lora_mod.median()), 2)} "
              f"({len(lora_mod)} modules), full {fmt(float(full_mod.median()), 2)} ({len(full_mod)} modules); {note}")
    return [ClaimRow(CROSS_RUN, "update_geometry", "intruders: median lora - full (run medians)", diff, np.nan,
                     np.nan, p, verdict, detail, "R8")]


def knowledge_lora_vs_full(changes: dict[str, pd.DataFrame], kinds: dict[str, str],
                           rules: VerdictRules = VerdictRules()) -> list[ClaimRow]:
    """knowledge_kept across kinds, per probe/metric: claim "LoRA loses less than full FT" (mean change per kind,
    sign-adjusted so + = LoRA keeps more); tested over runs only with replication (rule R8)."""
    frames = [c.assign(kind=kinds.get(run), run=run) for run, c in changes.items() if not c.empty]
    if not frames:
        return []
    df = pd.concat(frames, ignore_index=True)
    rows = []
    for (probe, metric), g in df.groupby(["probe", "metric"], sort=True):
        harm_sign = 1 if any(metric.lower().startswith(t) for t in ("kl", "nll", "ppl")) else -1
        g = g.assign(keep=-harm_sign * g["diff"])
        vals = {k: s.groupby("run")["keep"].mean() for k, s in g.groupby("kind")}
        if "lora" not in vals or "full" not in vals:
            continue
        diff = float(vals["lora"].mean() - vals["full"].mean())
        p, verdict, note = _replicated_test(vals, 1, rules)
        detail = (f"claim: LoRA loses less {probe}/{metric} than full FT; mean change LoRA "
                  f"{fmt(float(g[g['kind'] == 'lora']['diff'].mean()))}, full "
                  f"{fmt(float(g[g['kind'] == 'full']['diff'].mean()))}; {note}")
        rows.append(ClaimRow(CROSS_RUN, "knowledge_kept", f"{probe}/{metric}: kept lora - full", diff, np.nan,
                             np.nan, p, verdict, detail, "R8"))
    return rows
