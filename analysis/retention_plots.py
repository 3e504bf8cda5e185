"""The learning-forgetting figure (Biderman et al. 2024): gain on the RL task against loss on retention probes.

Gain: strict pass@1 of a checkpoint minus its run's base (step 0). Loss: each probe's headline metric turned
into "higher = more forgotten": accuracy drop from the base, perplexity rise, or KL to the base as is.
Built on matplotlib Figure objects (no pyplot state, any backend)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

log = logging.getLogger(__name__)

ACCURACY_METRICS = ("exact_match", "acc", "acc_norm")
PRIMARY_METRICS = ("exact_match", "acc", "kl", "ppl")  # each probe's headline metric: the first it has


def _loss_of(metric: str, value: pd.Series, base: pd.Series) -> pd.Series:
    """Forgetting as a number that grows: accuracy drop, perplexity / NLL rise, KL itself (already vs the base)."""
    if metric in ACCURACY_METRICS:
        return base - value
    if metric in ("ppl", "nll"):
        return value - base
    return value


def _loss_label(probe: str, metric: str) -> str:
    what = "drop" if metric in ACCURACY_METRICS else "rise" if metric in ("ppl", "nll") else ""
    return f"{probe} {metric} {what}".strip()


def _minus_base(df: pd.DataFrame, by: list[str]) -> pd.Series:
    """Each row's base value (step 0 of the same run and `by` group); NaN where the base is missing."""
    base = df[df["step"] == 0].drop_duplicates(["run", *by]).set_index(["run", *by])["value"]
    idx = pd.MultiIndex.from_frame(df[["run", *by]])
    return pd.Series(base.reindex(idx).to_numpy(), index=df.index)


def _run_kinds(*frames: pd.DataFrame) -> dict[str, str]:
    """A run's kind (lora | full) from its non-base rows."""
    kinds: dict[str, str] = {}
    for df in frames:
        for run, kind in df[df["kind"] != "base"][["run", "kind"]].drop_duplicates().itertuples(index=False):
            kinds.setdefault(run, kind)
    return kinds


def learning_forgetting_frame(passk: pd.DataFrame, retention: pd.DataFrame, *, grading: str = "strict",
                              k: int = 1) -> pd.DataFrame:
    """Per (run, step, benchmark, probe): gain = pass@k - base pass@k and loss on the probe's headline metric.

    Columns: run, step, kind, run_kind, benchmark, gain, probe, metric, loss, loss_label. Empty when the
    tables do not overlap."""
    cols = ["run", "step", "kind", "run_kind", "benchmark", "gain", "probe", "metric", "loss", "loss_label"]
    need_p = {"run", "step", "kind", "benchmark", "grading", "k", "value"}
    need_r = {"run", "step", "kind", "probe", "metric", "value"}
    if passk is None or retention is None or passk.empty or retention.empty \
            or not need_p <= set(passk.columns) or not need_r <= set(retention.columns):
        return pd.DataFrame(columns=cols)
    p = passk[(passk["grading"] == grading) & (passk["k"].astype(int) == int(k))].copy()
    p["step"] = p["step"].astype(int)
    p["gain"] = p["value"] - _minus_base(p, ["benchmark"])
    r = retention.copy()
    r["step"] = r["step"].astype(int)
    headline = {}
    for probe, metrics in r.groupby("probe")["metric"]:
        present = set(metrics)
        headline[probe] = next((m for m in PRIMARY_METRICS if m in present), sorted(present)[0])
    r = r[[headline[pr] == m for pr, m in zip(r["probe"], r["metric"])]].copy()
    r["loss"] = _loss_of_rows(r)
    merged = p[["run", "step", "kind", "benchmark", "gain"]].merge(
        r[["run", "step", "probe", "metric", "loss"]], on=["run", "step"], how="inner")
    merged = merged.dropna(subset=["gain", "loss"])
    if merged.empty:
        return pd.DataFrame(columns=cols)
    kinds = _run_kinds(passk, retention)
    merged["run_kind"] = [kinds.get(run, kind) for run, kind in zip(merged["run"], merged["kind"])]
    merged["loss_label"] = [_loss_label(pr, m) for pr, m in zip(merged["probe"], merged["metric"])]
    return merged[cols].sort_values(["benchmark", "loss_label", "run", "step"]).reset_index(drop=True)


def _loss_of_rows(r: pd.DataFrame) -> pd.Series:
    """The loss of every retention row against its run's base row of the same probe and metric."""
    base = _minus_base(r, ["probe", "metric"])
    out = pd.Series(index=r.index, dtype=float)
    for metric in r["metric"].unique():
        sel = r["metric"] == metric
        out[sel] = _loss_of(metric, r.loc[sel, "value"].astype(float), base[sel].astype(float))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "benchmark"


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_across_runs(frame: pd.DataFrame, path: Path) -> Path:
    """Gain against loss, one panel per loss measure, one line per run through its checkpoints in step order."""
    labels = list(dict.fromkeys(frame["loss_label"]))
    fig = Figure(figsize=(4.2 * len(labels), 3.8), layout="constrained")
    axes = fig.subplots(1, len(labels), squeeze=False)[0]
    for ax, label in zip(axes, labels):
        part = frame[frame["loss_label"] == label].sort_values(["run", "step"])
        sns.lineplot(data=part, x="loss", y="gain", hue="run", style="run_kind", markers=True, sort=False,
                     estimator=None, ax=ax, legend=ax is axes[-1])
        ax.axhline(0, color="0.7", lw=0.8)
        ax.axvline(0, color="0.7", lw=0.8)
        ax.set_xlabel(f"forgetting: {label}")
        ax.set_ylabel("gain (pass@1 - base)")
    if axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(f"learning vs forgetting - {frame['benchmark'].iloc[0]}")
    return _save(fig, path)


def plot_per_run(frame: pd.DataFrame, path: Path) -> Path:
    """Per run (rows): gain and each loss measure (columns) over training steps."""
    runs = sorted(frame["run"].unique())
    labels = list(dict.fromkeys(frame["loss_label"]))
    fig = Figure(figsize=(3.4 * (1 + len(labels)), 2.6 * len(runs)), layout="constrained")
    axes = fig.subplots(len(runs), 1 + len(labels), squeeze=False)
    for i, run in enumerate(runs):
        part = frame[frame["run"] == run].sort_values("step")
        gain = part.drop_duplicates("step")
        sns.lineplot(data=gain, x="step", y="gain", marker="o", ax=axes[i][0], color="C0")
        axes[i][0].set_title(f"{run} ({part['run_kind'].iloc[0]}): gain")
        for j, label in enumerate(labels, start=1):
            sns.lineplot(data=part[part["loss_label"] == label], x="step", y="loss", marker="o", ax=axes[i][j],
                         color="C3")
            axes[i][j].set_title(label)
            axes[i][j].set_ylabel("loss")
    fig.suptitle(f"gain and forgetting over training - {frame['benchmark'].iloc[0]}")
    return _save(fig, path)


def plot_learning_forgetting(passk: pd.DataFrame | None, retention: pd.DataFrame | None, out_dir: Path) -> list[Path]:
    """Learning-forgetting PNGs per benchmark (across runs, and per run over steps); [] when a table is missing."""
    frame = learning_forgetting_frame(passk, retention)
    if frame.empty:
        log.info("learning-forgetting figure skipped: the passk and retention tables are missing or do not overlap")
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for bench, part in frame.groupby("benchmark", sort=True):
        slug = _slug(bench)
        paths.append(plot_across_runs(part, out_dir / f"learning_forgetting_{slug}.png"))
        paths.append(plot_per_run(part, out_dir / f"learning_forgetting_steps_{slug}.png"))
    return paths
