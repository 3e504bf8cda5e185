"""Retention page: knowledge probes per checkpoint, and learning (strict pass@1 gain) vs forgetting."""

from __future__ import annotations

import streamlit as st

from tina_probe.explorer import rl_views, summaries, ui


def probe_label(row) -> str:
    """'probe / metric'."""
    return f"{row['probe']} / {row['metric']}"


def default_forgetting(labels: list[str]) -> str | None:
    """The facts accuracy when present, else a KL, else the first probe."""
    for test in (lambda s: "fact" in s.lower() and not summaries.lower_is_better(s.split(" / ")[1]),
                 lambda s: "kl" in s.split(" / ")[1].lower()):
        hit = next((s for s in labels if test(s)), None)
        if hit:
            return hit
    return labels[0] if labels else None


def main() -> None:
    """Draw the page."""
    st.title("Retention")
    ret = ui.load("retention", scoped=False)
    if not ui.need(ret, what="the retention page"):
        return
    _probes_and_learning(ret)  # returns early where a part has no data; the razor section follows either way
    rl_views.razor_section()


def _probes_and_learning(ret) -> None:
    """Each probe per checkpoint, then learning vs forgetting."""
    df = ret.df.assign(label=lambda d: d.apply(probe_label, axis=1))
    labels = sorted(df["label"].unique())
    kinds = summaries.run_kinds(df)
    label = ui.choose("Probe / metric", labels, "rt_probe", default=default_forgetting(labels))
    sel = df[df["label"] == label].sort_values(["run", "step"])
    if "stderr" in sel.columns:
        sel = sel.assign(ci_low=sel["value"] - 1.96 * sel["stderr"], ci_high=sel["value"] + 1.96 * sel["stderr"])
    metric = sel["metric"].iloc[0]
    title = f"{label} per checkpoint (95% CI from stderr)"
    ylim = None if summaries.lower_is_better(metric) or sel["value"].max() > 1 else (0, 1.02)
    ui.show_figure(f"retention_{label}", title, "ci_lines", sel, "step", "run", title, str(metric), kinds=kinds,
                   ylim=ylim)
    wide = df.pivot_table(index=["run", "kind", "step"], columns="label", values="value").reset_index()
    wide.columns.name = None
    ui.show_table(wide, "retention_per_checkpoint")

    st.subheader("Learning vs forgetting")
    passk = ui.load("passk")
    if not ui.need(passk, what="the learning axis (strict pass@1 gain)"):
        return
    probe, metric = label.split(" / ", 1)
    pts = summaries.learning_vs_forgetting(passk.df, ret.df, probe, metric)
    if pts.empty:
        st.info(f"No checkpoint has both strict pass@1 and `{label}` at the base (step 0) and a trained step.")
        return
    word = "rise" if summaries.lower_is_better(metric) else "drop"
    ylabel = f"{label}: {word} from base (forgetting)"
    sc_title = f"strict pass@1 gain vs {label} {word}"
    ui.show_figure(f"learning_vs_forgetting_{label}", sc_title, "scatter_gain", pts, sc_title, ylabel)
    ui.show_table(pts, f"learning_vs_forgetting_{label}")


main()
