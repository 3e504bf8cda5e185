"""Explorer sections for the 2025 analyses of what RL changes: support flows and G-Pass@k (dynamics page), where the
update lands and cross-run overlap (spectra page), task KL vs forgetting (retention page)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from tina_probe.explorer import tables, ui

GEOMETRY = ("sparsity_rel", "rotation_max_deg_u", "rotation_max_deg_v", "spectral_shift", "principal_overlap")


def support_section(run: str, grading: str) -> None:
    """SRR / NDR / NSCR of every checkpoint against the base, with the kept / gained / lost counts."""
    st.subheader("Support: kept, gained, lost vs the base (The Invisible Leash)")
    sup = ui.load("support")
    if not ui.need(sup, what="the support flows"):
        return
    df = sup.df[(sup.df["run"] == run) & (sup.df["grading"] == grading)]
    if df.empty:
        st.info(f"No support rows for {run} ({grading}).")
        return
    thr = df["threshold"].iloc[0]
    st.caption(f"A problem is in a checkpoint's support with at least {int(df['min_correct'].iloc[0])} correct "
               f"sample(s) (threshold {thr:.2f} of its samples). SRR = kept / (kept + lost); NDR = gained / (kept + "
               "gained); NSCR = (gained - lost) / (kept + gained + lost); 95% bootstrap CIs over problems.")
    title = f"{run}: support vs the base ({grading})"
    ui.show_figure(f"support_{run}_{grading}", title, "ci_lines", df, "step", "metric", title, "rate",
                   ylim=(-1.02, 1.02))
    wide = df.pivot_table(index=["benchmark", "step", "kept", "gained", "lost", "out"], columns="metric",
                          values="value").reset_index()
    wide.columns.name = None
    ui.show_table(wide, f"support_{run}_{grading}")
    ent = ui.load("answer_entropy")
    if ent.ok:
        e = ent.df[ent.df["run"] == run].groupby("step")["answer_entropy"].agg(["mean", "count"]).reset_index()
        st.caption("Answer-level entropy (nats over the distinct final answers of a problem's samples), mean over "
                   "problems per checkpoint:")
        ui.show_table(e.rename(columns={"mean": "answer_entropy", "count": "problems"}), f"answer_entropy_{run}")


def gpassk_section(run: str, grading: str) -> None:
    """G-Pass@k_tau over the series at the largest k, one line per tau."""
    st.subheader("Stability of correctness: G-Pass@k_tau")
    g = ui.load("gpassk")
    if not ui.need(g, what="G-Pass@k"):
        return
    df = g.df[(g.df["run"] == run) & (g.df["grading"] == grading)]
    if df.empty:
        st.info(f"No G-Pass@k rows for {run} ({grading}).")
        return
    k = int(df["k"].max())
    df = df[df["k"] == k].assign(tau=lambda d: "tau " + d["tau"].map(lambda t: f"{t:g}"))
    title = f"{run}: {grading} G-Pass@{k}_tau (at least ceil(tau*{k}) of {k} samples right; 95% CI)"
    ui.show_figure(f"gpassk_{run}_{grading}", title, "ci_lines", df, "step", "tau", title, f"G-Pass@{k}")


def geometry_section(spectra: pd.DataFrame) -> None:
    """Medians over modules of the Path-Not-Taken columns per run and step, and the cross-run overlap table."""
    st.subheader("Where the update lands (The Path Not Taken)")
    cols = [c for c in GEOMETRY if c in spectra.columns and spectra[c].notna().any()]
    if not cols:
        st.info("No Path-Not-Taken columns with values: they need the base weights and W_t (run "
                "`tina-probe spectra --ckpts runs/*` without --no-intruders).")
    else:
        st.caption("sparsity_rel: unchanged share at relative tolerance 1e-3; rotation: largest angle between W_0's "
                   "and W_t's own top-k singular subspaces; spectral_shift: ||sigma_t - sigma_0|| / ||sigma_0||; "
                   "principal_overlap: share of changed entries among W_0's principal weights (baseline: "
                   "principal_baseline). Pick any of them above for the layer x module heatmap.")
        med = spectra.dropna(subset=cols, how="all").groupby(["run", "kind", "step"])[cols].median().reset_index()
        if "principal_baseline" in spectra.columns:
            med["principal_baseline"] = float(spectra["principal_baseline"].dropna().iloc[0])
        ui.show_table(med, "path_not_taken_medians")
    ov = tables.load_table(ui.context().store, "update_overlap")
    if ov.ok:
        st.caption("Cross-run overlap of changed masks (each run at its last checkpoint): Jaccard vs the baseline "
                   "of independent masks pq / (p + q - pq); ratio > 1: the runs change the same weights more "
                   "than chance.")
        ui.show_table(ov.df[ov.df["module_path"] == "overall"], "update_overlap_overall")


def razor_section() -> None:
    """Spearman of task KL and of the weight-change norm with each retention loss (RL's Razor)."""
    st.subheader("Task KL vs forgetting (RL's Razor)")
    rz = tables.load_table(ui.context().store, "razor")
    if not rz.ok:
        st.info("No `razor` table: it needs retention rows at several checkpoints, then `tina-probe dynamics`.")
        return
    st.caption("Spearman's rho (statistic 'spearman') and the paper's R^2 of a quadratic fit ('r2_quadratic') of "
               "the metric's loss vs the base on the predictor, over a run's checkpoints and all runs pooled; "
               "'task_kl - rel_norm': which predicts forgetting better (rules Z1-Z5 in analysis/razor.py). Task KL "
               "is the column task_kl_metric: kl_forward = KL(base || checkpoint), the paper's direction.")
    ui.show_table(rz.df, "razor")
    points = tables.load_table(ui.context().store, "razor_points")
    if points.ok:
        frame = points.df.dropna(subset=["task_kl", "loss"])
        if not frame.empty:
            frame = frame.assign(what=frame["probe"] + "/" + frame["metric"])
            ui.show_figure("razor", "Task KL vs each retention loss, one point per checkpoint", "razor_scatter",
                           frame)
