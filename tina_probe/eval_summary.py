"""The eval summary tables (passk, format) recomputed from the current samples parts, and the per-run summary that
`eval` prints."""

from __future__ import annotations

from typing import Iterable

import pandas as pd

from tina_probe.eval_identical import format_rows, identical_to_base, stored_checks
from tina_probe.store import Store

SUMMARY_GROUPS = ("run", "step", "kind", "benchmark", "sampling")
SAMPLE_KEY_COLS = ["run", "step", "benchmark", "sampling", "problem_id", "sample_idx"]


def summarize(store: Store) -> dict[str, pd.DataFrame]:
    """Consolidate the samples parts present (the newest of each group: eval_sweep rule 6) and recompute the passk
    and format tables from them (format: with an identical_to_base row per LoRA group, eval_identical).
    Under the store's lock: shards finishing at once each write all three tables from the same parts."""
    with store.lock():
        return _summarize(store)


def _summarize(store: Store) -> dict[str, pd.DataFrame]:
    from tina_probe.passk import format_table, passk_table

    samples = store.consolidate("samples", key_cols=SAMPLE_KEY_COLS, sort_by=SAMPLE_KEY_COLS,
                                newest_per_key_prefix=True)
    if samples.empty:
        return {"samples": samples, "passk": pd.DataFrame(), "format": pd.DataFrame()}
    groups = [c for c in SUMMARY_GROUPS if c in samples.columns]
    passk = passk_table(samples, group_cols=groups)
    fmt = format_table(samples, group_cols=groups)
    same = identical_to_base(samples, stored_checks(store))
    if not same.empty:
        fmt = pd.concat([fmt, format_rows(same, groups)], ignore_index=True)
    store.write("passk", passk)
    store.write("format", fmt)
    return {"samples": samples, "passk": store.read("passk"), "format": store.read("format")}


def summary_frame(tables: dict[str, pd.DataFrame], runs: Iterable[str], sampling: str | None = None) -> pd.DataFrame:
    """Per run, benchmark and step: pass@1 strict/lenient with CIs, format rate, mean tokens, best checkpoint."""
    passk, fmt = tables["passk"], tables["format"]
    if passk.empty:
        return pd.DataFrame()
    p1 = passk[(passk["k"] == 1) & passk["run"].isin(list(runs))]
    if sampling is not None and "sampling" in p1.columns:
        p1 = p1[p1["sampling"] == sampling]
    keys = ["run", "benchmark", "step", "kind"]
    wide = p1.pivot_table(index=keys, columns="grading", values=["value", "ci_low", "ci_high"], aggfunc="first")
    wide.columns = [f"{g}_{v}" for v, g in wide.columns]
    wide = wide.reset_index()
    f = fmt[fmt["metric"].isin(["format_rate", "mean_tokens"])]
    if sampling is not None and "sampling" in f.columns:
        f = f[f["sampling"] == sampling]
    f = f.pivot_table(index=keys, columns="metric", values="value", aggfunc="first").reset_index()
    out = wide.merge(f, on=keys, how="left").sort_values(["run", "benchmark", "step"]).reset_index(drop=True)
    best = out.groupby(["run", "benchmark"])["strict_value"].transform("max")
    out["best"] = (out["strict_value"] == best) & (out["kind"] != "base")
    first_best = out[out["best"]].groupby(["run", "benchmark"]).head(1).index
    out["best"] = out.index.isin(first_best)
    return out


def print_summary(summary: pd.DataFrame) -> None:
    """One table per run: step, pass@1 strict and lenient with CIs, format rate, mean length; best marked (rich on a
    terminal, plain markdown in a log: tina_probe.console)."""
    from tina_probe.console import print_table

    if summary.empty:
        return

    def ci(row, g):
        return f"{row[f'{g}_value']:.3f} [{row[f'{g}_ci_low']:.2f}, {row[f'{g}_ci_high']:.2f}]"

    columns = ("benchmark", "step", "kind", "strict", "lenient", "format rate", "mean tokens", "best")
    for run, frame in summary.groupby("run", sort=False):
        rows = [(str(row["benchmark"]), str(row["step"]), str(row["kind"]), ci(row, "strict"), ci(row, "lenient"),
                 f"{row.get('format_rate', float('nan')):.3f}", f"{row.get('mean_tokens', float('nan')):.1f}",
                 "*" if row["best"] else "") for _, row in frame.iterrows()]
        print_table(f"{run}: pass@1 (95% CI)", columns, rows)
