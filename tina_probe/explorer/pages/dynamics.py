"""Series dynamics page: each problem across the series, the pass@k crossover of base vs a checkpoint, maj@k beside
pass@k, the training dynamics with their change points, and the held-out checkpoint selection."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from tina_probe.explorer import dynamics_view as dv
from tina_probe.explorer import rl_views, summaries, tables, ui


def _fmt(x) -> str:
    return "–" if x is None or pd.isna(x) else f"{x:.3f}"


def _k(x) -> str:
    return "beyond n" if x is None or pd.isna(x) else str(int(x))


def problems_section(run: str, grading: str, dyn: tables.Loaded) -> None:
    """Label counts, the problems x steps heatmap (sortable, filterable by label) and the per-problem rows."""
    st.subheader("Problems across the series")
    samples = ui.load("samples")
    if not ui.need(dyn, samples, what="the per-problem heatmap"):
        return
    ui.show_table(dv.label_summary(dyn.df, run), f"labels_{run}")
    c1, c2 = st.columns([1, 3])
    with c1:
        sort_by = st.selectbox("Sort problems by", dv.SORTS, key="dy_sort")
    present = [lab for lab in dv.LABEL_ORDER if lab in set(dyn.df["label"])]
    with c2:
        keep = st.multiselect("Labels", present, default=present, key="dy_labels")
    grid, labels = dv.rate_grid(samples.df, dyn.df, run, grading, sort_by, keep)
    if grid.empty:
        st.info("No problems with these labels.")
        return
    title = f"{run}: {grading} share of samples correct per problem and step ({len(grid)} problems)"
    ui.show_figure(f"problems_{run}_{grading}", title, "problem_heatmap", grid, labels, title)
    rows = dyn.df[(dyn.df["run"] == run) & (dyn.df["grading"] == grading)]
    ui.show_table(rows.set_index("problem_id").loc[grid.index].reset_index(), f"problem_dynamics_{run}_{grading}")


def crossover_section(run: str, step: int, grading: str, passk: tables.Loaded, cross: tables.Loaded) -> None:
    """pass@k of the base and the chosen checkpoint with the crossover k* marked."""
    st.subheader("pass@k: base vs checkpoint")
    if not ui.need(passk, what="the pass@k curves"):
        return
    row = dv.crossover_row(cross.df, run, step, grading) if cross.ok else None
    if row is None:
        ui.need(cross, what="the crossover")
    else:
        st.markdown(f"**k\\* = {_k(row['k_star'])}** [{_k(row['k_star_low'])}, {_k(row['k_star_high'])}] · "
                    f"gap at k=1 {_fmt(row['gap_at_1'])} · gap at k={int(row['max_k'])} "
                    f"{_fmt(row['gap_at_max_k'])} (checkpoint minus base)")
    curves = dv.base_vs_checkpoint(passk.df, run, step, grading)
    title = f"{run}: {grading} pass@k, base (dotted) vs step {step}; k* dashed, its 95% range shaded"
    ui.show_figure(f"crossover_{run}_{step}_{grading}", title, "crossover_figure", curves, row, title,
                   f"pass@k ({grading})")


def maj_section(run: str, step: int, grading: str, passk: tables.Loaded, maj: tables.Loaded) -> None:
    """maj@k for every k beside pass@k of the same checkpoint."""
    st.subheader("maj@k beside pass@k")
    if not ui.need(maj, what="the maj@k curve"):
        return
    df = dv.maj_beside_pass(maj.df, passk.df if passk.ok else maj.df.iloc[:0], run, step, grading)
    title = f"{run} step {step}: {grading} maj@k (majority vote of k samples) and pass@k (95% CI)"
    ui.show_figure(f"maj_{run}_{step}_{grading}", title, "ci_lines", df, "k", "curve", title, "share of problems",
                   log2x=True)
    ui.show_table(df, f"maj_{run}_{step}_{grading}")


def training_section(run: str) -> None:
    """Entropy, completion length, clipped ratio, KL and frac_reward_zero_std with their change points."""
    st.subheader("Training dynamics")
    train = summaries.training_frame(ui.load("training_log", scoped=False).df,
                                     ui.load("training_curves", scoped=False).df)
    phases = ui.load("phases", scoped=False)
    t, changes = dv.training_dynamics(train, phases.df if phases.ok else pd.DataFrame(), run)
    if t.empty:
        st.info(f"No training curves for {run} in the store: run `{tables.PHASE}`.")
        return
    summary = ui.load("phase_summary", scoped=False)
    transition = None
    if summary.ok and "transition_step" in summary.df.columns:
        hit = summary.df[summary.df["run"] == run]
        transition = hit["transition_step"].iloc[0] if not hit.empty else None
    title = f"{run}: training dynamics; change points dashed, format transition dotted"
    ui.show_figure(f"training_dynamics_{run}", title, "dynamics_curves", t, changes, transition, title)
    if not changes.empty:
        keep = [c for c in ("metric", "change_step", "change_step_low", "change_step_high", "size") if c in changes]
        ui.show_table(changes[keep], f"training_changes_{run}")


def selection_section() -> None:
    """The held-out choice of best checkpoint beside the test's own maximum."""
    sel = ui.load("selection", scoped=False)
    st.subheader("Checkpoint selection")
    if not sel.ok:
        st.caption(f"No held-out selection: evaluate a held-out benchmark beside the test one (e.g. `lab-probe` "
                   f"beside `lab-test`) and run `{tables.DYNAMICS}`.")
        return
    st.caption("selected_step: best strict pass@1 on the held-out benchmark (selected_on); value_at_selected: its "
               "strict pass@1 on the test benchmark; optimism: the test's own max minus that.")
    ui.show_table(sel.df, "selection")


def main() -> None:
    """Draw the page."""
    st.title("Series dynamics")
    ctx = ui.context()
    dyn, cross, maj, passk = ui.load("problem_dynamics"), ui.load("crossover"), ui.load("maj"), ui.load("passk")
    if not any(t.ok for t in (dyn, cross, maj)):
        ui.need(dyn, what="the series dynamics page")
        if not passk.ok:
            st.info(f"Evaluate first: `{tables.EVAL}`, then `{tables.DYNAMICS}`.")
        return
    runs = sorted({*summaries.options(dyn.df, "run"), *summaries.options(cross.df, "run"),
                   *summaries.options(maj.df, "run")})
    c1, c2, c3 = st.columns([2, 1, 2])
    with c1:
        run = ui.choose("Run", runs, "dy_run")
    with c2:
        grading = st.radio("Grading", ["strict", "lenient"], horizontal=True, key="dy_grading")
    steps = sorted({int(s) for t in (cross, maj) if t.ok for s in t.df.loc[t.df["run"] == run, "step"] if s > 0})
    with c3:
        step = ui.choose("Checkpoint", steps, "dy_step", default=steps[-1] if steps else None)
    st.caption(f"benchmark: `{ctx.benchmark or 'all'}`")
    problems_section(run, grading, dyn)
    if step is not None:
        crossover_section(run, step, grading, passk, cross)
        maj_section(run, step, grading, passk, maj)
    rl_views.support_section(run, grading)
    rl_views.gpassk_section(run, grading)
    training_section(run)
    selection_section()


main()
