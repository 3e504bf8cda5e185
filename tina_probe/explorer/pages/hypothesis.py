"""Hypothesis page: the verdict table with colored verdicts, the evidence behind each claim, and the report."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from tina_probe.errors import TinaError
from tina_probe.explorer import figures, summaries, tables, ui
from tina_probe.explorer.highlight import escape
from tina_probe.explorer.report import is_remote, split_images

COLUMNS = ["run", "claim", "statistic", "value", "ci_low", "ci_high", "p_value", "verdict", "detail", "rule"]


def verdict_style(value) -> str:
    """CSS for a verdict cell."""
    color = figures.VERDICT_COLORS.get(str(value))
    return f"background-color: {color}; color: white; font-weight: 600" if color else ""


def evidence_pass1(ctx: ui.Context) -> None:
    """Strict and lenient pass@1 per checkpoint, the McNemar claims' evidence."""
    passk = ui.load("passk")
    if not ui.need(passk, what="this evidence"):
        return
    curves = pd.concat([summaries.pass1(passk.df, g).assign(curve=lambda d, g=g: d["run"] + f" {g}")
                        for g in ("strict", "lenient")], ignore_index=True).sort_values(["run", "curve", "step"])
    style = {c: "--" for c in curves["curve"].unique() if c.endswith("lenient")}
    title = "evidence: strict (solid) and lenient (dashed) pass@1 per checkpoint"
    ui.show_figure("evidence_pass1", title, "ci_lines", curves, "step", "curve", title, "pass@1",
                   kinds=summaries.run_kinds(passk.df), style=style)


def evidence_format_first(ctx: ui.Context) -> None:
    """The format curve and lenient pass@1 with their change points."""
    evals = summaries.eval_curves(ui.load("passk").df, ui.load("format").df)
    train = summaries.training_frame(ui.load("training_log", scoped=False).df,
                                     ui.load("training_curves", scoped=False).df)
    phases = ui.load("phases", scoped=False)
    if evals.empty and train.empty:
        st.info(f"No curves to show: run `{tables.EVAL}` and `{tables.PHASE}`.")
        return
    metric = "format_rate" if "format_rate" in set(evals["metric"]) else "format_reward"
    rows = summaries.phase_rows(phases.df if phases.ok else pd.DataFrame(), metric, ctx.benchmark, "pelt")
    if not phases.ok:
        ui.need(phases, what="the change-point bands")
    runs = sorted({*summaries.options(evals, "run"), *summaries.options(train, "run")})
    title = f"evidence: {metric} change points vs lenient pass@1"
    ui.show_figure("evidence_format_first", title, "phase_figure", train, evals, rows, metric, runs, ["pass1_lenient"])


def evidence_decomposition(ctx: ui.Context) -> None:
    """The strict gain split into format and correctness parts."""
    dec = ui.load("gain_decomposition", scoped=False)
    if not ui.need(dec, what="the gain decomposition"):
        return
    title = "evidence: strict pass@1 gain = format part + correct-given-format part (90% CI)"
    ui.show_figure("evidence_gain_decomposition", title, "decomposition_bars", dec.df, title)
    ui.show_table(dec.df, "gain_decomposition")


def evidence_retention(ctx: ui.Context) -> None:
    """Every retention probe per checkpoint."""
    ret = ui.load("retention", scoped=False)
    if not ui.need(ret, what="the retention evidence"):
        return
    df = ret.df.assign(curve=lambda d: d["run"] + " · " + d["probe"] + "/" + d["metric"]).sort_values(
        ["run", "curve", "step"])
    title = "evidence: retention probes per checkpoint"
    ui.show_figure("evidence_retention", title, "ci_lines", df, "step", "curve", title, "value",
                   kinds=summaries.run_kinds(df), ylim=None)


def evidence_geometry(ctx: ui.Context) -> None:
    """Intruder dimensions and energy rank by kind."""
    spectra = ui.load("spectra", scoped=False)
    if not ui.need(spectra, what="the update-geometry evidence"):
        return
    df = summaries.at_steps(spectra.df, None)
    for metric in ("intruders", "energy_rank90"):
        if metric in df.columns and df[metric].notna().any():
            title = f"evidence: {metric} over modules at each run's last checkpoint"
            ui.show_figure(f"evidence_{metric}", title, "runs_box", df.dropna(subset=[metric])[["run", "kind", metric]],
                           metric, title)


EVIDENCE = {
    "format_first": evidence_format_first,
    "gain_decomposition": evidence_decomposition,
    "format_adaptation": evidence_decomposition,
    "strict_gain": evidence_pass1,
    "lenient_kept": evidence_pass1,
    "knowledge_kept": evidence_retention,
    "update_geometry": evidence_geometry,
}


def report_section(ctx: ui.Context) -> None:
    """report/report.md, with its figures read only from inside the store."""
    try:
        text = tables.load_text(ctx.store, "report/report.md")
    except TinaError as exc:
        st.warning(str(exc))
        return
    if text is None:
        st.info(f"No report yet: run `{tables.FILLS['report']}`.")
        return
    for part, a, b in split_images(text):
        if part == "text":
            st.markdown(a)
            continue
        if is_remote(b):
            st.caption(f"(image {escape(b)} not shown: only figures inside the results folder are drawn)")
            continue
        try:
            data = tables.load_bytes(ctx.store, f"report/{b}")
        except TinaError as exc:
            st.warning(f"Image not shown: {exc}")
            continue
        if data is None:
            st.caption(f"(missing figure {escape(b)})")
        else:
            st.image(data, caption=a or b)


OVERALL = "format_adaptation"


def overall_lines(df: pd.DataFrame) -> list[dict]:
    """Per run: the overall verdict whole, its one-line reason (the detail's first sentence) and the parts behind
    it (format_adaptation's detail, rule R9)."""
    overall = df[df["claim"] == OVERALL].sort_values("run")
    out = []
    for row in overall.to_dict("records"):
        detail = str(row.get("detail") or "")
        reason, _, parts = detail.partition(". ")
        out.append({"run": str(row["run"]), "verdict": str(row["verdict"]), "reason": reason, "parts": parts})
    return out


def overall_verdicts(df: pd.DataFrame) -> None:
    """The headline: each run's overall verdict (the `format_adaptation` claim) in full, with its reason and what
    was and was not shown; never cut to fit a tile."""
    lines = overall_lines(df)
    if not lines:
        st.info("No overall verdict (`format_adaptation`) in the hypothesis table: rerun `tina-probe hypothesis`.")
        return
    for line in lines:
        color = figures.VERDICT_COLORS.get(line["verdict"], "#455a64")
        st.markdown(f'<div style="margin-bottom:0.6em"><b>{escape(line["run"])}</b>: '
                    f'<span style="color:{color};font-weight:700">{escape(line["verdict"])}</span> · '
                    f'{escape(line["reason"])}<br><span style="color:#555;font-size:0.9em">'
                    f'{escape(line["parts"])}</span></div>', unsafe_allow_html=True)


def main() -> None:
    """Draw the page."""
    st.title("Hypothesis")
    ctx = ui.context()
    hyp = ui.load("hypothesis", scoped=False)
    if ui.need(hyp, what="the verdict table"):
        df = hyp.df[[c for c in COLUMNS if c in hyp.df.columns]]
        overall_verdicts(df)
        st.caption("The sub-claims behind each overall verdict:")
        numbers = [c for c in ("value", "ci_low", "ci_high", "p_value") if c in df.columns]
        styled = df.style.map(verdict_style, subset=["verdict"]).format(precision=3, na_rep="–", subset=numbers)
        ui.show_table(df, "hypothesis", styled=styled)
        st.subheader("Evidence")
        claims = summaries.options(df, "claim")
        claim = ui.choose("Claim", claims, "hy_claim", default="format_adaptation")
        rows = df[df["claim"] == claim]
        for row in rows.to_dict("records"):
            color = figures.VERDICT_COLORS.get(str(row["verdict"]), "#455a64")
            st.markdown(f'<div><b>{escape(str(row["run"]))}</b> · {escape(str(row["statistic"]))} · '
                        f'<span style="color:{color};font-weight:700">{escape(str(row["verdict"]))}</span><br>'
                        f'<span style="color:#555">{escape(str(row.get("detail", "")))}</span></div>',
                        unsafe_allow_html=True)
        forest_title = f"{claim}: value and CI per row, colored by verdict"
        ui.show_figure(f"forest_{claim}", forest_title, "forest", rows, forest_title)
        EVIDENCE.get(claim, evidence_pass1)(ctx)
    with st.expander("Report (report/report.md)"):
        report_section(ctx)


main()
