"""Spectra page: layer x module heatmap of a metric, singular-value curves, intruders vs eps, runs compared."""

from __future__ import annotations

import streamlit as st

from tina_probe.explorer import rl_views, summaries, ui

PREFERRED = ("effective_rank", "stable_rank", "energy_rank90", "intruders", "fro_norm")


def main() -> None:
    """Draw the page."""
    st.title("Spectra")
    spectra = ui.load("spectra", scoped=False)
    if not ui.need(spectra, what="the spectra page"):
        return
    df = spectra.df
    metrics = summaries.numeric_metrics(df)
    c1, c2, c3 = st.columns([2, 3, 2])
    with c1:
        run = ui.choose("Run", summaries.options(df, "run"), "sp_run")
    steps = [int(s) for s in summaries.options(df[df["run"] == run], "step")]
    with c2:
        step = steps[0] if len(steps) == 1 else st.select_slider("Step", steps, value=steps[-1], key=f"sp_step_{run}")
    with c3:
        metric = ui.choose("Metric", metrics, "sp_metric", default=next((m for m in PREFERRED if m in metrics), None))
    if metric is None:
        st.warning("The spectra table has no numeric metric columns; rerun `tina-probe spectra --ckpts runs/*`.")
        return
    kind = summaries.run_kinds(df).get(run, "?")
    title = f"{metric} · {run} ({kind}) · step {step}"
    grid = summaries.spectra_grid(df, run, step, metric)
    if grid.empty or grid.isna().all().all():
        st.info(f"No `{metric}` values for {run} at step {step} (null where the base weights were not available).")
    else:
        ui.show_figure(f"heatmap_{run}_{step}_{metric}", title, "heatmap", grid, title)
        ui.show_table(grid.reset_index(), f"heatmap_{run}_{step}_{metric}")

    st.subheader("Singular values")
    normalize = st.checkbox("Divide by the top singular value", value=True, key="sp_norm")
    sv = summaries.singular_value_curves(df, run, step, normalize)
    if sv.empty:
        st.info("No singular_values column in the spectra table; rerun `tina-probe spectra --ckpts runs/*`.")
    else:
        sv_title = f"singular values of the update · {run} · step {step}"
        ui.show_figure(f"singular_values_{run}_{step}", sv_title, "singular_values", sv, sv_title, normalize)

    st.subheader("Intruder dimensions vs eps")
    intr = summaries.intruder_curves(df, step)
    if intr.empty or intr["intruders"].isna().all():
        st.info("No intruders_eps columns with values (they need the base weights at spectra time).")
    else:
        in_title = f"intruder dimensions vs eps (each run at step {step} or its last step)"
        ui.show_figure(f"intruders_vs_eps_{step}", in_title, "intruders", intr, in_title)
        ui.show_table(intr, f"intruders_vs_eps_{step}")

    st.subheader("Runs compared")
    both = summaries.at_steps(df, step).dropna(subset=[metric])[["run", "kind", "step", metric]]
    if both.empty:
        st.info(f"No `{metric}` values to compare.")
    else:
        cmp_title = f"{metric} over layers and modules, per run (step {step} or each run's last)"
        ui.show_figure(f"runs_compared_{metric}_{step}", cmp_title, "runs_box", both, metric, cmp_title)

    rl_views.geometry_section(df)


main()
