"""pass@k page: curves over k (log2 axis) per checkpoint, LoRA vs full FT overlaid, with CI bands."""

from __future__ import annotations

import streamlit as st

from tina_probe.explorer import summaries, ui


def default_steps(passk, runs: list[str]) -> list[int]:
    """The base, each run's best checkpoint and the last step: the three curves worth comparing first."""
    best = summaries.best_checkpoints(passk)
    steps = {0, *best.loc[best["run"].isin(runs), "best_step"].astype(int)}
    last = passk.loc[passk["run"].isin(runs), "step"]
    if not last.empty:
        steps.add(int(last.max()))
    return sorted(steps)


def main() -> None:
    """Draw the page."""
    st.title("pass@k")
    ctx = ui.context()
    passk = ui.load("passk")
    if not ui.need(passk, what="the pass@k page"):
        return
    df = passk.df
    c1, c2, c3 = st.columns([1, 2, 2])
    with c1:
        grading = st.radio("Grading", ["strict", "lenient"], horizontal=True, key="pk_grading")
    runs = summaries.options(df, "run")
    with c2:
        chosen = st.multiselect("Runs", runs, default=runs, key="pk_runs")
    steps = [int(s) for s in summaries.options(df[df["run"].isin(chosen)], "step")]
    with c3:
        picked = st.multiselect("Checkpoints (steps)", steps,
                                default=[s for s in default_steps(df, chosen) if s in steps], key="pk_steps")
    curves = summaries.passk_curves(df, grading, chosen, picked)
    if curves.empty:
        st.info("Choose at least one run and one step.")
        return
    kinds = summaries.run_kinds(df)
    labels = [c for c in curves["curve"].unique()]
    style = {c: ":" for c in labels if c.endswith("step 0")}
    title = f"{grading} pass@k · {ctx.benchmark or 'all benchmarks'} (95% CI; blue LoRA, red full FT, dotted base)"
    ui.show_figure(f"passk_{grading}", title, "ci_lines", curves, "k", "curve", title, f"pass@k ({grading})",
                   kinds=kinds, style=style, log2x=True)
    wide = curves.pivot_table(index=["run", "kind", "step"], columns="k", values="value").reset_index()
    wide.columns = [c if isinstance(c, str) else f"pass@{c}" for c in wide.columns]
    st.markdown("**pass@k per checkpoint**")
    ui.show_table(wide, f"passk_{grading}_wide")
    with st.expander("All rows, with CIs"):
        ui.show_table(curves.drop(columns=["curve"]), f"passk_{grading}_rows")


main()
