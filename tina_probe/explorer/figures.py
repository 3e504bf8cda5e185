"""Figure builders for the explorer: matplotlib/seaborn Figures from summary frames, and their PNG bytes.

Figures are made with matplotlib's object API (no pyplot state), so concurrent sessions never share a figure."""

from __future__ import annotations

import io
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

KIND_COLORS = {"lora": "#1f77b4", "full": "#d62728", "base": "#7f7f7f"}
VERDICT_COLORS = {"supported": "#2e7d32", "not supported": "#c62828", "inconclusive": "#9e9e9e"}
EVAL_STYLE = {"pass1_strict": ("#2e7d32", "o"), "pass1_lenient": ("#ef6c00", "s"), "format_rate": ("#6a1b9a", "^")}
DPI = 110


def png_bytes(fig: Figure) -> bytes:
    """Render a figure to PNG bytes (what the page shows and what the download button hands out)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def _new(width: float = 8.0, height: float = 4.0, nrows: int = 1, ncols: int = 1, **kw):
    """A fresh Figure and its axes, seaborn-styled."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _run_color(kinds: dict[str, str], run: str, i: int) -> str:
    """Runs of a known kind take the kind's color family; others the default cycle."""
    kind = kinds.get(run)
    palette = {"lora": sns.color_palette("Blues_d", 6), "full": sns.color_palette("Reds_d", 6)}
    if kind in palette:
        return palette[kind][i % 6]
    return sns.color_palette("tab10")[i % 10]


def empty_figure(message: str) -> Figure:
    """A small figure that says why there is nothing to draw."""
    fig, axes = _new(6, 1.5)
    axes[0, 0].axis("off")
    axes[0, 0].text(0.5, 0.5, message, ha="center", va="center")
    return fig


def ci_lines(df: pd.DataFrame, x: str, hue: str, title: str, ylabel: str, kinds: dict[str, str] | None = None,
             style: dict[str, str] | None = None, log2x: bool = False, ylim=(0, 1.02)) -> Figure:
    """Lines of `value` over `x`, one per `hue` group, with shaded [ci_low, ci_high] bands when present."""
    fig, axes = _new()
    ax = axes[0, 0]
    kinds = kinds or {}
    seen: dict[str, int] = {}  # groups drawn so far per kind: each gets the next shade of its kind's color
    for label, g in df.groupby(hue, sort=False):  # callers order the groups
        g = g.sort_values(x)
        run = str(g["run"].iloc[0]) if "run" in g.columns else str(label)
        kind = kinds.get(run, "other")
        color = _run_color(kinds, run, seen.get(kind, 0))
        seen[kind] = seen.get(kind, 0) + 1
        ls = (style or {}).get(str(label), "-")
        ax.plot(g[x], g["value"], marker="o", ms=4, lw=1.8, color=color, ls=ls, label=str(label))
        if {"ci_low", "ci_high"} <= set(g.columns) and g["ci_low"].notna().any():
            ax.fill_between(g[x], g["ci_low"], g["ci_high"], color=color, alpha=0.15, lw=0)
    if log2x:
        ax.set_xscale("log", base=2)
        ks = sorted(df[x].unique())
        ax.set_xticks(ks, [str(int(k)) for k in ks])
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    return fig


def phase_figure(train: pd.DataFrame, evals: pd.DataFrame, phases: pd.DataFrame, metric: str, runs: list[str],
                 overlay: list[str]) -> Figure:
    """Per run: the chosen curve, its change points with their ranges as shaded bands, and eval metrics per
    checkpoint on a twin axis."""
    fig, axes = _new(9, 2.8 * max(1, len(runs)), nrows=max(1, len(runs)), sharex=True)
    for ax, run in zip(axes[:, 0], runs):
        main = train[(train["run"] == run) & (train["metric"] == metric)] if not train.empty else train
        if main.empty and not evals.empty:
            main = evals[(evals["run"] == run) & (evals["metric"] == metric)]
        if not main.empty:
            main = main.sort_values("step")
            ax.plot(main["step"], main["value"], color="#37474f", lw=1.4, marker="." if len(main) < 40 else None,
                    label=metric)
        ax.set_ylabel(metric)
        for j, row in enumerate(phases[phases["run"] == run].itertuples(index=False)):
            lo, hi = row.change_step_low, row.change_step_high
            if pd.notna(lo) and pd.notna(hi):
                ax.axvspan(lo, hi, color="#ffb300", alpha=0.25, lw=0, label="change range" if j == 0 else None)
            ax.axvline(row.change_step, color="#e65100", ls="--", lw=1.2, label="change point" if j == 0 else None)
        twin = None
        for m in overlay:
            e = evals[(evals["run"] == run) & (evals["metric"] == m)].sort_values("step") if not evals.empty else evals
            if e.empty or m == metric:
                continue
            if twin is None:
                twin = ax.twinx()
            color, marker = EVAL_STYLE.get(m, ("#455a64", "o"))
            err = None
            if e["ci_low"].notna().any():
                err = np.vstack([(e["value"] - e["ci_low"]).clip(lower=0), (e["ci_high"] - e["value"]).clip(lower=0)])
            twin.errorbar(e["step"], e["value"], yerr=err, color=color, marker=marker, ms=5, lw=1, capsize=2,
                          label=f"eval {m}")
        if twin is not None:
            twin.set_ylim(0, 1.02)
            twin.set_ylabel("eval metric")
            twin.grid(False)
            h2, l2 = twin.get_legend_handles_labels()
        else:
            h2, l2 = [], []
        h1, l1 = ax.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
        ax.set_title(f"{run}: {metric}", fontsize=10)
    axes[-1, 0].set_xlabel("step")
    return fig


def heatmap(grid: pd.DataFrame, title: str) -> Figure:
    """A layer x module heatmap with the values written in."""
    fig, axes = _new(1.3 * max(4, grid.shape[1]) + 2, 0.5 * max(4, grid.shape[0]) + 1.5)
    ax = axes[0, 0]
    sns.heatmap(grid, annot=grid.size <= 200, fmt=".3g", cmap="viridis", ax=ax, cbar_kws={"shrink": 0.8})
    ax.set_title(title)
    ax.set_xlabel("module")
    ax.set_ylabel("layer")
    return fig


def singular_values(curves: pd.DataFrame, title: str, normalized: bool) -> Figure:
    """Singular value spectra, one faint line per (layer, module), colored by module."""
    fig, axes = _new()
    ax = axes[0, 0]
    modules = sorted(curves["module"].unique())
    palette = dict(zip(modules, sns.color_palette("tab10", len(modules))))
    for (layer, module), g in curves.groupby(["layer", "module"], sort=True):
        ax.plot(g["i"], g["sigma"], color=palette[module], alpha=0.75, lw=1.2)
    for module in modules:
        ax.plot([], [], color=palette[module], label=module)
    ax.set_yscale("log")
    ax.set_xlabel("index i")
    ax.set_ylabel("sigma_i / sigma_1" if normalized else "sigma_i")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    return fig


def intruders(curves: pd.DataFrame, title: str) -> Figure:
    """Mean intruder dimensions per module vs eps, a line per run: each run its own shade of its kind's hue
    (LoRA blues, full-FT reds) and its own marker, so that runs of one kind can be told apart."""
    fig, axes = _new(7, 3.8)
    ax = axes[0, 0]
    kinds = {str(run): str(g["kind"].iloc[0]) for run, g in curves.groupby("run", sort=True)}
    seen: dict[str, int] = {}
    markers = "osD^vP*X"
    for j, (run, g) in enumerate(curves.groupby("run", sort=True)):
        kind = kinds[str(run)]
        color = _run_color(kinds, str(run), seen.get(kind, 0))
        seen[kind] = seen.get(kind, 0) + 1
        ax.plot(g["eps"], g["intruders"], marker=markers[j % len(markers)], color=color,
                ls="-" if kind == "lora" else "--", label=f"{run} ({kind}, step {int(g['step'].iloc[0])})")
    ax.set_xlabel("eps (cosine threshold)")
    ax.set_ylabel("intruder dimensions per module")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def runs_box(df: pd.DataFrame, metric: str, title: str) -> Figure:
    """A metric's spread over layers and modules, one box per run, colored by kind."""
    fig, axes = _new(7, 3.8)
    ax = axes[0, 0]
    order = sorted(df["run"].unique())
    with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11 a deprecated boxplot argument
        warnings.simplefilter("ignore", matplotlib.MatplotlibDeprecationWarning)
        sns.boxplot(data=df, x="run", y=metric, hue="kind", order=order, palette=KIND_COLORS, ax=ax, dodge=False)
    sns.stripplot(data=df, x="run", y=metric, order=order, color="black", size=3, alpha=0.5, ax=ax)
    ax.set_title(title)
    return fig


def scatter_gain(df: pd.DataFrame, title: str, ylabel: str) -> Figure:
    """Learning (strict pass@1 gain) vs forgetting, one point per checkpoint, colored by kind, step annotated."""
    fig, axes = _new(7, 4.5)
    ax = axes[0, 0]
    sns.scatterplot(data=df, x="strict_gain", y="forgetting", hue="kind", style="run", palette=KIND_COLORS,
                    s=70, ax=ax)
    for row in df.itertuples(index=False):
        ax.annotate(str(row.step), (row.strict_gain, row.forgetting), textcoords="offset points", xytext=(4, 3),
                    fontsize=7)
    ax.axhline(0, color="#999", lw=0.8)
    ax.axvline(0, color="#999", lw=0.8)
    ax.set_xlabel("strict pass@1 gain over base")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig


def forest(rows: pd.DataFrame, title: str) -> Figure:
    """Each claim row's value with its CI, colored by verdict."""
    fig, axes = _new(8, 0.45 * max(3, len(rows)) + 1.2)
    ax = axes[0, 0]
    labels = [f"{r.run}: {r.statistic}"[:70] for r in rows.itertuples(index=False)]
    y = np.arange(len(rows))[::-1]
    for yi, r in zip(y, rows.itertuples(index=False)):
        color = VERDICT_COLORS.get(str(r.verdict), "#455a64")
        lo, hi = getattr(r, "ci_low", np.nan), getattr(r, "ci_high", np.nan)
        if pd.notna(lo) and pd.notna(hi):
            ax.plot([lo, hi], [yi, yi], color=color, lw=2.5, alpha=0.7)
        ax.plot([r.value], [yi], "o", color=color, ms=7)
    ax.set_yticks(y, labels, fontsize=8)
    ax.axvline(0, color="#999", lw=0.8)
    ax.set_xlabel("value (CI)")
    ax.set_title(title)
    for verdict, color in VERDICT_COLORS.items():
        ax.plot([], [], "o", color=color, label=verdict)
    ax.legend(fontsize=7, loc="best")
    return fig


def decomposition_bars(dec: pd.DataFrame, title: str) -> Figure:
    """Strict pass@1 gain per run split into its format part and its correct-given-format part, with CIs."""
    fig, axes = _new(7, 3.8)
    ax = axes[0, 0]
    parts = [c for c in ("gain", "format_part", "correct_part") if c in dec.columns]
    x = np.arange(len(dec))
    width = 0.8 / max(1, len(parts))
    colors = {"gain": "#37474f", "format_part": "#6a1b9a", "correct_part": "#2e7d32"}
    for j, part in enumerate(parts):
        vals = dec[part].to_numpy(dtype=float)
        lo = dec.get(f"{part}_low", pd.Series(np.nan, index=dec.index)).to_numpy(dtype=float)
        hi = dec.get(f"{part}_high", pd.Series(np.nan, index=dec.index)).to_numpy(dtype=float)
        err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
        err = None if np.isnan(err).all() else np.nan_to_num(err)
        ax.bar(x + j * width, vals, width, yerr=err, capsize=3, color=colors[part], label=part)
    ax.set_xticks(x + width * (len(parts) - 1) / 2, dec["run"].astype(str).tolist())
    ax.axhline(0, color="#999", lw=0.8)
    ax.set_ylabel("strict pass@1 change")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


LABEL_COLORS = {"learned": "#2e7d32", "forgotten": "#c62828", "unstable": "#ef6c00", "kept_solved": "#1565c0",
                "never_solved": "#9e9e9e", "unlabelled": "#ffffff"}


def problem_heatmap(grid: pd.DataFrame, labels: pd.Series, title: str) -> Figure:
    """Problems (rows) x steps (columns) share of correct samples, with each problem's label as a colour strip."""
    fig, axes = _new(9, min(14.0, 1.6 + 0.16 * max(8, len(grid))), ncols=2,
                     gridspec_kw={"width_ratios": [1, 28]})
    strip, ax = axes[0, 0], axes[0, 1]
    sns.heatmap(grid, vmin=0, vmax=1, cmap="viridis", ax=ax, cbar_kws={"label": "share of samples correct"},
                yticklabels=len(grid) <= 60)
    ax.set_xlabel("step")
    ax.set_ylabel("")
    ax.set_title(title)
    colors = [matplotlib.colors.to_rgb(LABEL_COLORS.get(str(lab), "#ffffff")) for lab in labels]
    strip.imshow(np.array(colors)[:, None, :], aspect="auto", interpolation="nearest")
    strip.set_xticks([])
    strip.set_yticks([])
    strip.set_ylabel("label")
    handles = [matplotlib.lines.Line2D([], [], ls="", marker="s", color=LABEL_COLORS.get(lab, "#ffffff"), label=lab)
               for lab in dict.fromkeys(str(x) for x in labels)]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    return fig


def crossover_figure(curves: pd.DataFrame, cross: dict | None, title: str, ylabel: str) -> Figure:
    """pass@k of the base and a checkpoint over k (log2 axis), the crossover k_star dashed, its range shaded."""
    fig = ci_lines(curves, "k", "curve", title, ylabel, style={"base (step 0)": ":"}, log2x=True)
    ax = fig.axes[0]
    if cross is not None and pd.notna(cross.get("k_star")):
        lo, hi = cross.get("k_star_low"), cross.get("k_star_high")
        if pd.notna(lo):
            ax.axvspan(lo, hi if pd.notna(hi) else curves["k"].max(), color="#ffb300", alpha=0.2, lw=0,
                       label="k* range")
        ax.axvline(cross["k_star"], color="#e65100", ls="--", lw=1.4, label=f"k* = {int(cross['k_star'])}")
        ax.legend(fontsize=8, loc="best")
    return fig


def dynamics_curves(train: pd.DataFrame, changes: pd.DataFrame, transition: float | None, title: str) -> Figure:
    """One panel per training metric with its change points (dashed) and ranges (bands); the format transition
    as a purple dotted line on every panel."""
    metrics = sorted(train["metric"].unique())
    fig, axes = _new(9, 2.0 * max(1, len(metrics)) + 0.6, nrows=max(1, len(metrics)), sharex=True)
    for ax, metric in zip(axes[:, 0], metrics):
        m = train[train["metric"] == metric].sort_values("step")
        ax.plot(m["step"], m["value"], color="#37474f", lw=1.2, marker="." if len(m) < 40 else None)
        for row in changes[changes["metric"] == metric].itertuples(index=False):
            if pd.notna(row.change_step_low) and pd.notna(row.change_step_high):
                ax.axvspan(row.change_step_low, row.change_step_high, color="#ffb300", alpha=0.25, lw=0)
            ax.axvline(row.change_step, color="#e65100", ls="--", lw=1.2)
        if transition is not None and pd.notna(transition):
            ax.axvline(transition, color="#6a1b9a", ls=":", lw=1.4)
        ax.set_ylabel(metric, fontsize=8)
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("step")
    return fig


def razor_scatter(frame: pd.DataFrame) -> Figure:
    """RL's Razor: each retention metric's loss vs the base against the task KL, one point per checkpoint."""
    whats = sorted(frame["what"].unique())
    fig, axes = _new(width=3.4 * min(3, len(whats)), height=3.0 * ((len(whats) + 2) // 3),
                     nrows=(len(whats) + 2) // 3, ncols=min(3, len(whats)))
    for ax, what in zip(axes.flat, whats):
        part = frame[frame["what"] == what]
        sns.scatterplot(part, x="task_kl", y="loss", hue="run", style="kind", ax=ax)
        ax.set_title(what, fontsize=9)
        ax.set_xlabel(f"task KL ({part['task_kl_metric'].iloc[0]})")
        ax.set_ylabel("loss vs base")
    for ax in list(axes.flat)[len(whats):]:
        ax.set_visible(False)
    return fig
