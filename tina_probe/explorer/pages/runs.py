"""Runs page: every run with its kind, base, steps, best checkpoint by strict pass@1 and the key numbers."""

from __future__ import annotations

import math
from datetime import datetime

import pandas as pd
import streamlit as st

from tina_probe.explorer import summaries, tables, ui


def store_status(ctx: ui.Context) -> pd.DataFrame:
    """One row per table the explorer knows: present or not, rows, last change, the command that fills it."""
    rows = []
    for name in tables.FILLS:
        if name == "report":
            continue
        got = tables.load_table(ctx.store, name)
        when = datetime.fromtimestamp(got.stamp[0] / 1e9).isoformat(" ", "seconds") if got.stamp else ""
        rows.append({"table": name, "status": got.status if got.status != "ok" else "present",
                     "rows": len(got.df), "modified": when, "filled by": tables.FILLS[name]})
    return pd.DataFrame(rows)


def fmt(x: float) -> str:
    """Three decimals, or a dash for missing numbers."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def key_numbers(overview: pd.DataFrame) -> None:
    """One metric card per run: best strict pass@1 and its gain over the base."""
    cols = st.columns(min(4, max(1, len(overview))))
    for i, row in enumerate(overview.itertuples(index=False)):
        best = row.best_step
        delta = None if math.isnan(row.strict_gain) else f"{row.strict_gain:+.3f} vs base"
        cols[i % len(cols)].metric(f"{row.run} ({row.kind or '?'})", fmt(row.strict_pass1_best), delta=delta,
                                   help=f"best strict pass@1, at step {best}" if best is not None else None)


SELECTION_COLUMNS = ["run", "benchmark", "selected_on", "selected_step", "value_at_selected", "max_step",
                     "max_value", "optimism"]


def held_out_section() -> None:
    """Each run's checkpoint chosen on a held-out benchmark, scored on the test one, beside the test's own max."""
    sel = ui.load("selection", scoped=False)
    if not sel.ok:
        st.caption(f"No held-out checkpoint selection yet: evaluate a held-out benchmark beside the test one (the "
                   f"lab's `lab-probe` beside `lab-test`) and run `{tables.DYNAMICS}`.")
        return
    st.subheader("Best checkpoint chosen on a held-out benchmark")
    st.caption("selected_step: highest strict pass@1 on `selected_on`; value_at_selected: its strict pass@1 on "
               "`benchmark`; max_step / max_value: the best on `benchmark` itself; optimism = max_value - "
               "value_at_selected, what picking on the test set would overstate.")
    df = sel.df
    ui.show_table(df[[c for c in SELECTION_COLUMNS if c in df.columns]], "held_out_selection")


def main() -> None:
    """Draw the page."""
    st.title("Runs")
    ctx = ui.context()
    runs_t = ui.load("runs", scoped=False)
    passk, fmt_t, samples = ui.load("passk"), ui.load("format"), ui.load("samples")
    spectra, retention = ui.load("spectra", scoped=False), ui.load("retention", scoped=False)
    found = [t for t in (runs_t, passk, fmt_t, samples, spectra, retention) if t.ok]
    if not found:
        st.info(f"No results in `{ctx.store}` yet. Train runs with `tina-probe train --recipe R`, then fill the "
                f"store with `{tables.EVAL}` (or run `{tables.LAB}` for the whole study on the lab organism).")
    else:
        for t in (runs_t, passk, fmt_t, samples, spectra, retention):
            if t.status == "bad":
                ui.need(t)
        overview = summaries.runs_overview(runs_t.df, passk.df, fmt_t.df, samples.df, spectra.df, retention.df)
        st.caption(f"benchmark: `{ctx.benchmark or 'all'}` · best checkpoint = trained step with the highest strict "
                   "pass@1 (earliest on ties)")
        key_numbers(overview)
        ui.show_table(overview, "runs_overview")
        if ui.need(passk, what="the pass@1 curves"):
            curves = pd.concat([summaries.pass1(passk.df, g).assign(curve=lambda d, g=g: d["run"] + f" {g}")
                                for g in ("strict", "lenient")], ignore_index=True)
            curves = curves.sort_values(["run", "curve", "step"])
            style = {c: "--" for c in curves["curve"].unique() if c.endswith("lenient")}
            kinds = summaries.run_kinds(passk.df)
            title = "pass@1 per checkpoint (strict solid, lenient dashed; 95% CI)"
            ui.show_figure("pass1_per_checkpoint", title, "ci_lines", curves, "step", "curve", title, "pass@1",
                           kinds=kinds, style=style)
        held_out_section()
    st.subheader("Store contents")
    ui.show_table(store_status(ctx), "store_status")


main()
