"""Seaborn figures of the `spectra` table: layer x module heatmaps, singular-value curves, intruders vs eps,
LoRA vs full FT over training. Built on matplotlib Figure objects (no pyplot state, any backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

MODULE_ORDER = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
HEATMAP_METRICS = ["effective_rank", "stable_rank", "rel_norm", "intruders"]
TREND_METRICS = ["effective_rank", "stable_rank", "fro_norm"]
EPS_COLUMNS = {0.3: "intruders_eps03", 0.5: "intruders_eps05", 0.7: "intruders_eps07", 0.9: "intruders_eps09"}


def _modules(df: pd.DataFrame) -> list[str]:
    """Module names in projection order, unknown ones after."""
    present = list(dict.fromkeys(df["module"]))
    return [m for m in MODULE_ORDER if m in present] + sorted(m for m in present if m not in MODULE_ORDER)


def _last_steps(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run's last analysed step."""
    last = df.groupby("run")["step"].transform("max")
    return df[df["step"] == last]


def _has(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and pd.to_numeric(df[col], errors="coerce").notna().any()


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_heatmap(df: pd.DataFrame, metric: str, path: Path) -> Path:
    """One layer x module heatmap of `metric` per run (each run at its last step), side by side."""
    rows = _last_steps(df[df["layer"] >= 0])
    runs = sorted(rows["run"].unique())
    modules = _modules(rows)
    width = 1.2 + 0.9 * len(modules) * len(runs)
    fig = Figure(layout="constrained", figsize=(width, 2.2 + 0.35 * rows["layer"].nunique()))
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    for ax, run in zip(axes, runs):
        part = rows[rows["run"] == run]
        grid = part.pivot_table(index="layer", columns="module", values=metric, aggfunc="mean")
        grid = grid.reindex(columns=[m for m in modules if m in grid.columns]).astype(float)
        sns.heatmap(grid, ax=ax, cmap="viridis", annot=grid.size <= 64, fmt=".2g", cbar=True)
        kind = part["kind"].iloc[0]
        ax.set_title(f"{run}\n{kind}, step {part['step'].iloc[0]}")
    fig.suptitle(metric)
    return _save(fig, path)


def plot_singular_values(df: pd.DataFrame, path: Path) -> Path:
    """σ_i/σ_1 of ΔW against i, averaged over layers, one panel per module, one line per run (last step)."""
    rows = _last_steps(df)
    long = []
    for _, row in rows.iterrows():
        s = np.asarray(row["singular_values"], dtype=float)
        if s.size and s[0] > 0:
            long.append(pd.DataFrame({"run": row["run"], "module": row["module"], "index": np.arange(1, s.size + 1),
                                      "sigma_rel": s / s[0]}))
    data = pd.concat(long, ignore_index=True) if long else pd.DataFrame(columns=["run", "module", "index", "sigma_rel"])
    modules = _modules(rows)
    cols = min(4, max(1, len(modules)))
    nrows = -(-len(modules) // cols)
    fig = Figure(layout="constrained", figsize=(3.6 * cols, 3.0 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, module in zip(axes, modules):
        part = data[data["module"] == module]
        if not part.empty:
            sns.lineplot(part, x="index", y="sigma_rel", hue="run", ax=ax, errorbar=None)
        ax.set_yscale("log")
        ax.set_title(module)
        ax.set_xlabel("i")
        ax.set_ylabel("σ_i / σ_1")
    for ax in axes[len(modules):]:
        ax.set_visible(False)
    fig.suptitle("update singular values (mean over layers, last step)")
    return _save(fig, path)


def plot_intruders_vs_eps(df: pd.DataFrame, path: Path) -> Path:
    """Mean intruder dimensions per module (top-10 of W_t) against the cosine threshold eps, per run (last step)."""
    rows = _last_steps(df)
    long = rows.melt(id_vars=["run", "kind", "module"], value_vars=list(EPS_COLUMNS.values()),
                     var_name="col", value_name="count")
    long["eps"] = long["col"].map({v: k for k, v in EPS_COLUMNS.items()})
    long["intruders"] = pd.to_numeric(long["count"], errors="coerce").astype(float)
    fig = Figure(layout="constrained", figsize=(5.5, 4))
    ax = fig.subplots()
    sns.lineplot(long.dropna(subset=["intruders"]), x="eps", y="intruders", hue="run", style="kind", marker="o",
                 ax=ax)
    ax.set_xlabel("eps (max |cos| with the base's singular vectors)")
    ax.set_ylabel("intruder dimensions per module (k=10)")
    return _save(fig, path)


def plot_kind_trends(df: pd.DataFrame, metric: str, path: Path) -> Path:
    """`metric` over training steps, one panel per kind (LoRA vs full FT side by side), one line per module."""
    kinds = [k for k in ("lora", "full") if k in set(df["kind"])] or sorted(df["kind"].unique())
    fig = Figure(layout="constrained", figsize=(5 * len(kinds), 4))
    axes = fig.subplots(1, len(kinds), squeeze=False, sharey=True)[0]
    modules = _modules(df)
    for ax, kind in zip(axes, kinds):
        part = df[df["kind"] == kind].copy()
        part[metric] = part[metric].astype(float)
        sns.lineplot(part, x="step", y=metric, hue="module", hue_order=modules, style="run", marker="o", ax=ax)
        ax.set_title(f"{kind}: {metric} (mean over layers)")
    return _save(fig, path)


def plot_spectra(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Every figure the table supports, as PNGs in out_dir; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if df.empty:
        return []
    paths = [plot_heatmap(df, m, out_dir / f"spectra_heatmap_{m}.png") for m in HEATMAP_METRICS if _has(df, m)]
    paths.append(plot_singular_values(df, out_dir / "spectra_singular_values.png"))
    if any(_has(df, c) for c in EPS_COLUMNS.values()):
        paths.append(plot_intruders_vs_eps(df, out_dir / "spectra_intruders_vs_eps.png"))
    paths += [plot_kind_trends(df, m, out_dir / f"spectra_trend_{m}.png") for m in TREND_METRICS if _has(df, m)]
    return paths
