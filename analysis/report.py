"""The markdown report: verdicts, phase transitions, accuracy and format over training, gain decomposition.

Reads the store only (never recomputes); every figure is a seaborn PNG beside report.md. A section whose table
is missing says which command fills it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on the machines this runs on

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis import report_rl  # noqa: E402
from analysis.phase import PRIMARY_METHOD  # noqa: E402
from tina_probe.store import Store, atomic_write_text  # noqa: E402

log = logging.getLogger(__name__)

FILLS = {  # table -> the command that writes it
    "hypothesis": "tina-probe hypothesis", "gain_decomposition": "tina-probe hypothesis",
    "phases": "tina-probe phase --runs runs/*", "phase_summary": "tina-probe phase --runs runs/*",
    "training_curves": "tina-probe phase --runs runs/*", "passk": "tina-probe eval --ckpts runs/*",
    "format": "tina-probe eval --ckpts runs/*", "spectra": "tina-probe spectra --ckpts runs/*",
    "support": "tina-probe dynamics", "answer_entropy": "tina-probe dynamics", "gpassk": "tina-probe dynamics",
    "razor_points": "tina-probe dynamics", "razor": "tina-probe dynamics",
}
SUMMARY_COLUMNS = ["run", "benchmark", "best_step", "best_value", "base_value", "transition_metric",
                   "transition_step", "transition_low", "transition_high", "lag_steps", "lag_share",
                   "accuracy_change_step", "accuracy_change_size", "accuracy_lag_steps", "metrics_changed", "metrics_unchanged", "note"]


def _missing(table: str) -> str:
    """The line a section shows when its table is missing."""
    return f"_No `{table}` table in the store: run `{FILLS[table]}` to fill this section._\n"


def _save(fig, folder: Path, name: str) -> str:
    """Save a figure as PNG (written beside, then moved in, so a crash leaves no torn file); return its name."""
    path = folder / name
    tmp = folder / f".{name}.tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return name


def _band_plot(data: pd.DataFrame, color=None, label=None, **_):
    """A line with its CI band (ci_low..ci_high) in the current axes (for FacetGrid.map_dataframe)."""
    d = data.sort_values("step")
    ax = plt.gca()
    ax.plot(d["step"], d["value"], marker="o", ms=3, color=color, label=label)
    if {"ci_low", "ci_high"} <= set(d.columns) and d["ci_low"].notna().any():
        ax.fill_between(d["step"], d["ci_low"], d["ci_high"], color=color, alpha=0.2, linewidth=0)


def figure_training(curves: pd.DataFrame, phases: pd.DataFrame, folder: Path) -> str:
    """Training curves per run and metric, with change points (lines) and their bootstrap ranges (bands)."""
    g = sns.relplot(data=curves, x="step", y="value", row="run", col="metric", kind="line", height=2.2,
                    aspect=1.3, facet_kws={"sharey": False, "sharex": "row", "margin_titles": True})
    cps = phases[(phases["source"] == "train") & (phases["method"] == PRIMARY_METHOD)] if not phases.empty else phases
    for (run, metric), ax in g.axes_dict.items():
        for cp in (cps[(cps["run"] == run) & (cps["metric"] == metric)].to_dict("records") if not cps.empty else []):
            ax.axvspan(cp["change_step_low"], cp["change_step_high"], color="tab:red", alpha=0.15, linewidth=0)
            ax.axvline(cp["change_step"], color="tab:red", lw=1)
    g.set_titles(row_template="{row_name}", col_template="{col_name}")
    return _save(g.figure, folder, "training_curves.png")


def figure_eval(df: pd.DataFrame, hue: str, phases: pd.DataFrame, metrics: dict, folder: Path, name: str) -> str:
    """Eval curves with 95% CI bands per run and benchmark (one panel each); change points of `metrics`
    (eval metric name -> hue value) drawn as dashed lines with bands."""
    one_each = df.groupby("run")["benchmark"].nunique().max() == 1
    if one_each:  # one benchmark per run (the usual case): one panel per run, wrapped, no empty panels
        df = df.assign(panel=df["run"] + " · " + df["benchmark"])
        n = df["panel"].nunique()
        g = sns.FacetGrid(df, col="panel", col_wrap=min(3, n), hue=hue, height=2.6, aspect=1.3, sharey=True)
        where = df.drop_duplicates("panel").set_index("panel")[["benchmark", "run"]]
        panels = {tuple(where.loc[k]): ax for k, ax in g.axes_dict.items()}
    else:
        g = sns.FacetGrid(df, col="run", row="benchmark", hue=hue, height=2.6, aspect=1.3, sharey=True,
                          margin_titles=True)
        panels = g.axes_dict
    g.map_dataframe(_band_plot)
    g.add_legend()
    cps = phases[(phases["source"] == "eval") & (phases["method"] == PRIMARY_METHOD)] if not phases.empty else phases
    palette = dict(zip(g.hue_names, sns.color_palette(n_colors=len(g.hue_names))))
    for (bench, run), ax in panels.items():
        for metric, level in metrics.items():
            sel = cps[(cps["run"] == run) & (cps["metric"] == metric) & (cps["benchmark"] == bench)] \
                if not cps.empty else cps
            for cp in sel.to_dict("records"):
                color = palette.get(level, "gray")
                ax.axvspan(cp["change_step_low"], cp["change_step_high"], color=color, alpha=0.1, linewidth=0)
                ax.axvline(cp["change_step"], color=color, ls="--", lw=1)
    if one_each:
        g.set_titles(col_template="{col_name}")
        return _save(g.figure, folder, name)
    g.set_titles(row_template="{row_name}", col_template="{col_name}")
    return _save(g.figure, folder, name)


def figure_gain(decomp: pd.DataFrame, folder: Path) -> str:
    """Strict pass@1 gain per run split into its format part and its correctness-given-format part."""
    long = decomp.melt(id_vars="run", value_vars=["format_part", "correct_part"], var_name="part",
                       value_name="strict pass@1 gain")
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * decomp["run"].nunique() + 2), 3))
    sns.barplot(data=long, x="run", y="strict pass@1 gain", hue="part", ax=ax)
    gain = decomp["gain"].to_numpy(dtype=float)
    low, high = decomp["gain_low"].to_numpy(dtype=float), decomp["gain_high"].to_numpy(dtype=float)
    yerr = np.vstack([gain - low, high - gain])
    ax.errorbar(np.arange(len(decomp)), gain, yerr=np.clip(np.nan_to_num(yerr), 0, None), fmt="k_", ms=14,
                capsize=4, label="total gain (90% CI: the one-sided tests at 5%)")
    ax.axhline(0, color="black", lw=0.6)
    ax.legend(fontsize=8)
    return _save(fig, folder, "gain_decomposition.png")


def _md(df: pd.DataFrame) -> str:
    """A DataFrame as a markdown table, floats to 3 decimals."""
    return df.to_markdown(index=False, floatfmt=".3f") + "\n"


def _section(lines: list[str], title: str, body) -> None:
    """Append a section; a failing figure becomes one line in the report, not a crash."""
    lines.append(f"\n## {title}\n")
    try:
        lines.append(body())
    except Exception as exc:  # a plotting failure must not lose the rest of the report
        log.warning("report section %r failed: %s", title, exc)
        lines.append(f"_This section failed: {type(exc).__name__}: {exc}_\n")


def write_report(out: Path) -> Path:
    """`tina-probe report`: write <out>/report/report.md with its PNG figures; returns the markdown path."""
    store = Store(out)
    folder = Path(out) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    t = {name: store.read(name) for name in FILLS}
    lines = ["# tina-probe report\n", f"Store: `{Path(out)}`.\n"]

    def verdicts():
        if t["hypothesis"].empty:
            return _missing("hypothesis")
        cols = ["run", "claim", "statistic", "value", "ci_low", "ci_high", "p_value", "verdict"]
        main = t["hypothesis"][cols]
        notes = "\n".join(f"- **{r.run} / {r.claim}**: {r.detail}" for r in t["hypothesis"].itertuples()
                          if isinstance(r.detail, str) and r.detail)
        return _md(main) + "\n" + notes + "\n"

    def transitions():
        parts = []
        if t["phase_summary"].empty:
            parts.append(_missing("phase_summary"))
        else:
            cols = [c for c in SUMMARY_COLUMNS if c in t["phase_summary"].columns]
            parts.append("Best checkpoint (max strict pass@1) relative to the format transition; lag > 0: the best "
                         "checkpoint comes after it; accuracy_lag the same against the lenient accuracy change (its largest "
                         "fall, else its largest change).\n\n" + _md(t["phase_summary"][cols]))
        if t["training_curves"].empty:
            parts.append(_missing("training_curves"))
        else:
            parts.append(f"\n![training curves]({figure_training(t['training_curves'], t['phases'], folder)})\n")
        if not t["phases"].empty:
            parts.append("\n<details><summary>All change points</summary>\n\n" + _md(t["phases"]) + "\n</details>\n")
        return "\n".join(parts)

    def accuracy():
        if t["passk"].empty:
            return _missing("passk")
        p = t["passk"][t["passk"]["k"] == 1]
        name = figure_eval(p, "grading", t["phases"], {"pass1_strict": "strict", "pass1_lenient": "lenient"},
                           folder, "pass1.png")
        return f"pass@1, strict and lenient grading, with 95% CIs.\n\n![pass@1]({name})\n"

    def fmt():
        if t["format"].empty:
            return _missing("format")
        f = t["format"][t["format"]["metric"] == "format_rate"]
        if f.empty:
            return "_The `format` table has no format_rate rows._\n"
        name = figure_eval(f, "metric", t["phases"], {"format_rate": "format_rate"}, folder, "format_rate.png")
        return f"Share of well-formatted samples, with 95% CIs.\n\n![format rate]({name})\n"

    def gain():
        if t["gain_decomposition"].empty:
            return _missing("gain_decomposition")
        d = t["gain_decomposition"]
        cols = [c for c in ("run", "best_step", "strict_base", "strict_best", "format_base", "format_best",
                            "cond_base", "cond_best", "gain", "format_part", "correct_part", "share", "share_low",
                            "share_high") if c in d.columns]
        return ("P(strict) = P(well formatted) x P(correct | well formatted); Shapley split of the gain from base "
                f"to best checkpoint.\n\n![gain decomposition]({figure_gain(d, folder)})\n\n" + _md(d[cols]))

    _section(lines, "Verdicts", verdicts)
    _section(lines, "Phase transitions", transitions)
    _section(lines, "Accuracy over training", accuracy)
    _section(lines, "Format over training", fmt)
    _section(lines, "Gain decomposition", gain)
    _section(lines, "Where the update lands (The Path Not Taken)",
             lambda: report_rl.geometry_section(t["spectra"], folder, _save))
    _section(lines, "Support kept, gained, lost; answer diversity (The Invisible Leash)",
             lambda: report_rl.support_section(t["support"], t["answer_entropy"], folder, _save))
    _section(lines, "Stability of correctness (G-Pass@k)", lambda: report_rl.gpassk_section(t["gpassk"], folder, _save))
    _section(lines, "Task KL and forgetting (RL's Razor)",
             lambda: report_rl.razor_section(t["razor_points"], t["razor"], folder, _save))
    return atomic_write_text(folder / "report.md", "\n".join(lines))
