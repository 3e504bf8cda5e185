"""Pure DataFrame summaries behind the explorer's pages: no I/O, no streamlit."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

EVAL_METRICS = ("pass1_strict", "pass1_lenient", "format_rate")
LOWER_IS_BETTER = ("kl", "perplexity", "ppl", "loss", "nll", "bits")  # retention metrics where a rise is forgetting
PHASE_COLUMNS = ["run", "metric", "change_step", "change_step_low", "change_step_high"]
_EPS_COL = re.compile(r"^intruders_eps(\d+)$")


TEST_SPLITS = "test splits (each run's own)"  # the sidebar's first benchmark choice when held-out splits exist


def test_benchmarks(benchmarks) -> list[str]:
    """The test splits among benchmark names: those with 'test' in the name (the naming rule that pairs a held-out
    'probe' split with its 'test' split, analysis/selection.py)."""
    return sorted(b for b in benchmarks if isinstance(b, str) and "test" in b)


def benchmark_choices(benchmarks) -> list[str]:
    """The sidebar's benchmark choices: every run's own test split first (TEST_SPLITS) when the store holds test
    and other splits, then each benchmark by name."""
    names = sorted(b for b in benchmarks if isinstance(b, str))
    tests = test_benchmarks(names)
    return ([TEST_SPLITS] if tests and len(tests) < len(names) else []) + names


def _benchmark_mask(col: pd.Series, val) -> pd.Series:
    return col.isin(test_benchmarks(col.dropna().unique())) if val == TEST_SPLITS else col == val


def filter_rows(df: pd.DataFrame, **equal) -> pd.DataFrame:
    """Rows whose columns equal the given values; a column the frame lacks or a None value filters nothing;
    benchmark=TEST_SPLITS keeps every test split."""
    out = df
    for col, val in equal.items():
        if val is None or col not in out.columns:
            continue
        out = out[_benchmark_mask(out[col], val)] if col == "benchmark" else out[out[col] == val]
    return out


def options(df: pd.DataFrame, col: str) -> list:
    """Sorted distinct non-null values of a column ([] when the column is absent)."""
    if df.empty or col not in df.columns:
        return []
    return sorted(df[col].dropna().unique().tolist(), key=lambda v: (str(type(v)), v))


def run_kinds(*tables: pd.DataFrame) -> dict[str, str]:
    """Each run's trained kind (lora | full) from whichever tables carry run and kind."""
    kinds: dict[str, str] = {}
    for t in tables:
        if t.empty or not {"run", "kind"} <= set(t.columns):
            continue
        for run, kind in t[t["kind"] != "base"][["run", "kind"]].drop_duplicates().itertuples(index=False):
            kinds.setdefault(str(run), str(kind))
    return kinds


def pass1(passk: pd.DataFrame, grading: str = "strict") -> pd.DataFrame:
    """pass@1 rows of one grading, sorted by run and step."""
    if passk.empty:
        return passk
    rows = passk[(passk["k"] == 1) & (passk["grading"] == grading)]
    return rows.sort_values(["run", "step"]).reset_index(drop=True)


def eval_curves(passk: pd.DataFrame, fmt: pd.DataFrame) -> pd.DataFrame:
    """Tidy per-checkpoint eval metrics: run, kind, step, metric (pass1_strict | pass1_lenient | format_rate),
    value, ci_low, ci_high."""
    cols = ["run", "kind", "step", "metric", "value", "ci_low", "ci_high"]
    parts = []
    for grading in ("strict", "lenient"):
        p = pass1(passk, grading) if not passk.empty else passk
        if not p.empty:
            parts.append(p.assign(metric=f"pass1_{grading}"))
    if not fmt.empty and "metric" in fmt.columns:
        parts.append(fmt[fmt["metric"] == "format_rate"])
    if not parts:
        return pd.DataFrame(columns=cols)
    df = pd.concat(parts, ignore_index=True)
    for c in ("ci_low", "ci_high"):
        if c not in df.columns:
            df[c] = np.nan
    return df[cols].sort_values(["run", "metric", "step"]).reset_index(drop=True)


def best_checkpoints(passk: pd.DataFrame) -> pd.DataFrame:
    """Per run: the trained step with the highest strict pass@1 (earliest on ties), and its value."""
    p = pass1(passk, "strict")
    if p.empty:
        return pd.DataFrame(columns=["run", "best_step", "best_strict"])
    trained = p[(p["kind"] != "base") & (p["step"] > 0)]
    rows = []
    for run, g in trained.groupby("run", sort=True):
        top = g.sort_values(["value", "step"], ascending=[False, True]).iloc[0]
        rows.append({"run": run, "best_step": int(top["step"]), "best_strict": float(top["value"])})
    return pd.DataFrame(rows, columns=["run", "best_step", "best_strict"])


def _value_at(df: pd.DataFrame, run: str, step: int, **equal) -> float:
    """The value of one run at one step (first match), or nan."""
    sel = filter_rows(df, run=run, **equal)
    sel = sel[sel["step"] == step] if not sel.empty else sel
    return float(sel["value"].iloc[0]) if not sel.empty else float("nan")


def _steps_text(steps: list[int]) -> str:
    """'0, 10, 20' for short lists, '0, 10, ..., 300 (31)' for long ones."""
    if len(steps) <= 8:
        return ", ".join(str(s) for s in steps)
    return f"{steps[0]}, {steps[1]}, ..., {steps[-1]} ({len(steps)})"


def runs_overview(runs: pd.DataFrame, passk: pd.DataFrame, fmt: pd.DataFrame, samples: pd.DataFrame,
                  *others: pd.DataFrame) -> pd.DataFrame:
    """One row per run: kind, base, steps evaluated, best checkpoint by strict pass@1 and the key numbers there."""
    tables = [t for t in (passk, fmt, samples, *others) if not t.empty and "run" in t.columns]
    names = sorted({*(runs["run"].astype(str) if not runs.empty and "run" in runs.columns else []),
                    *(str(r) for t in tables for r in t["run"].unique())})
    kinds = run_kinds(runs, passk, fmt, samples, *others)
    meta = runs.set_index("run") if not runs.empty and "run" in runs.columns else pd.DataFrame()
    best = best_checkpoints(passk).set_index("run")
    rows = []
    for run in names:
        steps = sorted({int(s) for t in tables if "step" in t.columns for s in t.loc[t["run"] == run, "step"]})
        row = {"run": run, "kind": kinds.get(run, ""),
               "base": str(meta["base"].get(run, "")) if "base" in meta else "",
               "steps": _steps_text(steps), "n_checkpoints": sum(s > 0 for s in steps)}
        b = int(best.loc[run, "best_step"]) if run in best.index else None
        strict, lenient = pass1(passk, "strict"), pass1(passk, "lenient")
        base_strict = _value_at(strict, run, 0) if not strict.empty else float("nan")
        row |= {"best_step": b,
                "strict_pass1_base": base_strict,
                "strict_pass1_best": _value_at(strict, run, b) if b is not None else float("nan"),
                "lenient_pass1_best": _value_at(lenient, run, b) if b is not None and not lenient.empty
                else float("nan"),
                "format_rate_best": _value_at(fmt, run, b, metric="format_rate")
                if b is not None and not fmt.empty and "metric" in fmt.columns else float("nan")}
        row["strict_gain"] = row["strict_pass1_best"] - base_strict
        rows.append(row)
    return pd.DataFrame(rows)


def completions_at(samples: pd.DataFrame, run: str, step: int, n: int, show: str = "all") -> pd.DataFrame:
    """The first `n` completions of a run at a step, in problem and sample order; `show` filters by grade:
    all | strict correct | lenient only (right answer, wrong format) | wrong."""
    df = filter_rows(samples, run=run)
    df = df[df["step"] == step] if not df.empty else df
    if df.empty:
        return df
    strict, lenient = df["correct_strict"].astype(bool), df["correct_lenient"].astype(bool)
    masks = {"strict correct": strict, "lenient only": lenient & ~strict, "wrong": ~lenient & ~strict}
    if show in masks:
        df = df[masks[show]]
    return df.sort_values(["problem_id", "sample_idx"]).head(int(n)).reset_index(drop=True)


def passk_curves(passk: pd.DataFrame, grading: str, runs: list[str], steps: list[int]) -> pd.DataFrame:
    """pass@k over k for the chosen runs and steps of one grading, with a label per (run, step)."""
    if passk.empty:
        return passk
    df = passk[(passk["grading"] == grading) & passk["run"].isin(runs) & passk["step"].isin(steps)]
    df = df.sort_values(["run", "step", "k"]).reset_index(drop=True)
    return df.assign(curve=df["run"].astype(str) + " @ step " + df["step"].astype(str))


def numeric_metrics(df: pd.DataFrame, exclude=("step", "layer")) -> list[str]:
    """Numeric scalar columns of a table, e.g. the spectra metrics a heatmap can show."""
    if df.empty:
        return []
    return [c for c in df.columns if c not in exclude and pd.api.types.is_numeric_dtype(df[c])
            and not pd.api.types.is_bool_dtype(df[c])]


def nearest_step(steps: list[int], want: int | None) -> int | None:
    """`want` when present, else the largest step (the last checkpoint), else None."""
    if not steps:
        return None
    return want if want in steps else max(steps)


def spectra_grid(spectra: pd.DataFrame, run: str, step: int, metric: str) -> pd.DataFrame:
    """Layer x module table of one spectra metric at one run and step (mean over duplicate rows)."""
    df = filter_rows(spectra, run=run)
    df = df[df["step"] == step] if not df.empty else df
    if df.empty or metric not in df.columns:
        return pd.DataFrame()
    return df.pivot_table(index="layer", columns="module", values=metric, aggfunc="mean").sort_index()


def singular_value_curves(spectra: pd.DataFrame, run: str, step: int, normalize: bool = True) -> pd.DataFrame:
    """Long table of singular values per (layer, module): index i (1-based), sigma (over sigma_1 if normalized)."""
    df = filter_rows(spectra, run=run)
    df = df[df["step"] == step] if not df.empty else df
    if df.empty or "singular_values" not in df.columns:
        return pd.DataFrame(columns=["layer", "module", "i", "sigma"])
    rows = []
    for layer, module, sv in df[["layer", "module", "singular_values"]].itertuples(index=False):
        vals = np.asarray(sv if sv is not None else [], dtype=float)
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            continue
        if normalize and vals[0] > 0:
            vals = vals / vals[0]
        rows += [{"layer": layer, "module": module, "i": i + 1, "sigma": v} for i, v in enumerate(vals)]
    return pd.DataFrame(rows, columns=["layer", "module", "i", "sigma"])


def eps_columns(df: pd.DataFrame) -> dict[float, str]:
    """intruders_epsNN columns by their eps (intruders_eps03 -> 0.3)."""
    out = {}
    for c in df.columns:
        m = _EPS_COL.match(str(c))
        if m:
            d = m.group(1)
            out[float(f"{d[0]}.{d[1:]}" if len(d) > 1 else d)] = c
    return dict(sorted(out.items()))


def at_steps(df: pd.DataFrame, step: int | None) -> pd.DataFrame:
    """Each run's rows at `step` when that run has it, else at the run's last step."""
    parts = []
    for _, g in df.groupby("run", sort=True):
        s = nearest_step(sorted(int(x) for x in g["step"].unique()), step)
        parts.append(g[g["step"] == s])
    return pd.concat(parts, ignore_index=True) if parts else df.iloc[0:0]


def intruder_curves(spectra: pd.DataFrame, step: int | None) -> pd.DataFrame:
    """Mean intruder dimensions per module vs eps, per run (at `step`, or each run's last step)."""
    cols = eps_columns(spectra)
    if spectra.empty or not cols:
        return pd.DataFrame(columns=["run", "kind", "step", "eps", "intruders"])
    df = at_steps(spectra, step)
    rows = []
    for (run, kind, s), g in df.groupby(["run", "kind", "step"], sort=True):
        for eps, col in cols.items():
            rows.append({"run": run, "kind": kind, "step": int(s), "eps": eps, "intruders": float(g[col].mean())})
    return pd.DataFrame(rows)


def lower_is_better(metric: str) -> bool:
    """Whether a retention metric gets worse as it rises (KL, perplexity, loss)."""
    m = str(metric).lower()
    return any(tag in m for tag in LOWER_IS_BETTER)


def learning_vs_forgetting(passk: pd.DataFrame, retention: pd.DataFrame, probe: str, metric: str) -> pd.DataFrame:
    """Per run and trained step: strict pass@1 gain over step 0, and forgetting on one retention probe/metric
    (base - value for accuracies, value - base for lower-is-better metrics such as KL)."""
    cols = ["run", "kind", "step", "strict_gain", "forgetting"]
    strict = pass1(passk, "strict")
    ret = filter_rows(retention, probe=probe, metric=metric)
    if strict.empty or ret.empty:
        return pd.DataFrame(columns=cols)
    sign = -1.0 if lower_is_better(metric) else 1.0
    rows = []
    for run, g in ret.groupby("run", sort=True):
        base_r = g.loc[g["step"] == 0, "value"]
        s = strict[strict["run"] == run]
        base_s = s.loc[s["step"] == 0, "value"]
        if base_r.empty or base_s.empty:
            continue
        for step, kind, value in g[g["step"] > 0][["step", "kind", "value"]].itertuples(index=False):
            at = s.loc[s["step"] == step, "value"]
            if at.empty:
                continue
            rows.append({"run": run, "kind": kind, "step": int(step),
                         "strict_gain": float(at.iloc[0] - base_s.iloc[0]),
                         "forgetting": sign * float(base_r.iloc[0] - value)})
    return pd.DataFrame(rows, columns=cols)


def training_frame(training_log: pd.DataFrame, training_curves: pd.DataFrame) -> pd.DataFrame:
    """The tidy training curves (run, step, metric, value): the training log when present, else phase's copy."""
    for df in (training_log, training_curves):
        if not df.empty and {"run", "step", "metric", "value"} <= set(df.columns):
            return df[["run", "step", "metric", "value"]].sort_values(["run", "metric", "step"]).reset_index(drop=True)
    return pd.DataFrame(columns=["run", "step", "metric", "value"])


def phase_rows(phases: pd.DataFrame, metric: str, benchmark: str | None = None, method: str | None = None
               ) -> pd.DataFrame:
    """Change points of one metric (rows of the chosen method; eval rows of other benchmarks left out)."""
    if phases.empty or "metric" not in phases.columns:
        return pd.DataFrame(columns=PHASE_COLUMNS)
    df = phases[phases["metric"] == metric]
    if method is not None and "method" in df.columns:
        df = df[df["method"] == method]
    if benchmark is not None and "benchmark" in df.columns:
        df = df[df["benchmark"].isna() | _benchmark_mask(df["benchmark"], benchmark) | (df["benchmark"] == "")]
    return df.dropna(subset=["change_step"]).reset_index(drop=True)


def verdict_counts(hypothesis: pd.DataFrame) -> pd.DataFrame:
    """Number of claims per verdict, per run."""
    if hypothesis.empty:
        return pd.DataFrame(columns=["run", "verdict", "n"])
    return hypothesis.groupby(["run", "verdict"]).size().reset_index(name="n")
