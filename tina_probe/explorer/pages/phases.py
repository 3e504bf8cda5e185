"""Phase transitions page: training and eval curves with detected change points, and the completions behind them."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from tina_probe.explorer import summaries, tables, ui
from tina_probe.explorer.highlight import completion_html, escape, header_html

SHOW = ["all", "strict correct", "lenient only", "wrong"]
PREFERRED = ("format_reward", "format_rate", "accuracy_reward", "pass1_strict")


def curves_section(ctx: ui.Context) -> None:
    """Curve choice, the figure with change bands, and the change-point table."""
    train = summaries.training_frame(ui.load("training_log", scoped=False).df,
                                     ui.load("training_curves", scoped=False).df)
    passk, fmt = ui.load("passk"), ui.load("format")
    evals = summaries.eval_curves(passk.df, fmt.df)
    phases = ui.load("phases", scoped=False)
    if train.empty and evals.empty:
        st.info(f"No training curves or eval results yet: run `{tables.EVAL}` for the eval metrics per "
                f"checkpoint and `{tables.PHASE}` for the training curves and their change points.")
        return
    if train.empty:
        st.caption(f"No training log in the store (run `{tables.PHASE}`): eval metrics per checkpoint only.")
    runs = sorted({*summaries.options(train, "run"), *summaries.options(evals, "run")})
    chosen = st.multiselect("Runs", runs, default=runs, key="ph_runs")
    metrics = summaries.options(train, "metric") + [m for m in summaries.EVAL_METRICS
                                                   if m in set(evals["metric"])]
    default = next((m for m in PREFERRED if m in metrics), None)
    c1, c2, c3 = st.columns([2, 3, 1])
    with c1:
        metric = ui.choose("Curve", metrics, "ph_metric", default=default)
    with c2:
        avail = [m for m in summaries.EVAL_METRICS if m in set(evals["metric"])]
        overlay = st.multiselect("Eval metrics per checkpoint (right axis)", avail,
                                 default=[m for m in ("pass1_strict", "format_rate") if m in avail], key="ph_overlay")
    methods = summaries.options(phases.df, "method")
    with c3:
        method = ui.choose("Detector", methods, "ph_method", default="pelt")
    if not phases.ok:
        ui.need(phases, what="the change-point bands")
    rows = summaries.phase_rows(phases.df if phases.ok else pd.DataFrame(), metric, ctx.benchmark, method)
    if not chosen or metric is None:
        st.info("Choose at least one run.")
        return
    title = f"{metric}: change points (dashed) and their ranges (bands)"
    ui.show_figure(f"phases_{metric}", title, "phase_figure", train, evals, rows[rows["run"].isin(chosen)], metric,
                   chosen, overlay)
    if not rows.empty:
        ui.show_table(rows[rows["run"].isin(chosen)], f"change_points_{metric}")
    elif phases.ok:
        st.caption(f"No change point detected on `{metric}` for these runs.")


BEST_COLUMNS = ["run", "benchmark", "best_step", "best_value", "transition_metric", "transition_step",
                "transition_low", "transition_high", "lag_steps", "lag_share", "accuracy_change_step",
                "accuracy_change_size", "accuracy_lag_steps", "accuracy_lag_low", "accuracy_lag_high", "note"]


def best_section() -> None:
    """Where each run's best checkpoint sits relative to its format transition and its lenient accuracy change."""
    summary = ui.load("phase_summary", scoped=False)
    if not summary.ok:
        return
    st.subheader("Best checkpoint vs the transitions")
    st.caption("lag > 0: the best checkpoint (max strict pass@1) comes after the format transition (lag_steps) or "
               "after the lenient accuracy change, its largest fall else its largest change (accuracy_lag_steps); "
               "low/high from the change points' bootstrap ranges.")
    df = summary.df
    ui.show_table(df[[c for c in BEST_COLUMNS if c in df.columns]], "best_vs_transitions")


def completions_section() -> None:
    """The step slider and the sampled completions at that checkpoint, format parts highlighted."""
    st.subheader("Sampled completions")
    samples = ui.load("samples")
    if not ui.need(samples, what="the completion viewer"):
        return
    df = samples.df
    c1, c2, c3 = st.columns([2, 2, 1])
    with c1:
        run = ui.choose("Run", summaries.options(df, "run"), "ph_sample_run")
    steps = [int(s) for s in summaries.options(df[df["run"] == run], "step")]
    with c2:
        show = st.selectbox("Show", SHOW, key="ph_show")
    with c3:
        n = st.number_input("How many", min_value=1, max_value=50, value=6, key="ph_n")
    step = steps[0] if len(steps) == 1 else st.select_slider("Checkpoint step", steps, value=steps[0],
                                                              key=f"ph_step_{run}")
    at = df[(df["run"] == run) & (df["step"] == step)]
    wf = at["well_formatted"].mean() if "well_formatted" in at.columns else float("nan")
    st.markdown(f"**{escape(str(run))} at step {step}**: {len(at)} samples · strict "
                f"{at['correct_strict'].mean():.3f} · lenient {at['correct_lenient'].mean():.3f} · "
                f"well formatted {wf:.3f}")
    rows = summaries.completions_at(df, run, step, n, show)
    if rows.empty:
        st.info(f"No `{show}` completions at step {step}.")
        return
    for row in rows.to_dict("records"):
        st.markdown(header_html(row) + completion_html(row["completion"]), unsafe_allow_html=True)
    keep = [c for c in ("run", "step", "kind", "benchmark", "problem_id", "sample_idx", "completion",
                        "extracted_answer", "correct_strict", "correct_lenient", "well_formatted", "n_tokens")
            if c in rows.columns]
    ui.show_table(rows[keep], f"completions_{run}_step{step}")


def main() -> None:
    """Draw the page."""
    st.title("Phase transitions")
    ctx = ui.context()
    curves_section(ctx)
    best_section()
    completions_section()


main()
