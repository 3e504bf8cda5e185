"""The report's figures for the 2025 analyses of what RL changes: where the update lands (The Path Not Taken),
what support RL kept, gained and lost and how diverse its answers are (The Invisible Leash), how stable its
correctness is (G-Pass@k_tau), and whether task KL tracks forgetting (RL's Razor). Each takes store tables and a
folder, saves one seaborn PNG, returns markdown."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

GEOMETRY_PANELS = {"sparsity_rel": "unchanged share (rtol 1e-3)", "rotation_max_deg_u": "largest top-k rotation (deg)",
                   "spectral_shift": "spectral shift", "principal_overlap": "overlap with principal weights"}


def _md(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, floatfmt=".3f") + "\n"


def test_split(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows of one benchmark: the first whose name has "test" (the split verdicts score on), else the first."""
    if "benchmark" not in df.columns or df.empty:
        return df, ""
    names = sorted(df["benchmark"].dropna().unique())
    pick = next((b for b in names if "test" in b), names[0])
    return df[df["benchmark"] == pick], pick


def geometry_section(spectra: pd.DataFrame, folder, save) -> str:
    """Median over modules of the Path-Not-Taken columns per run and step, LoRA and full FT side by side."""
    cols = [c for c in GEOMETRY_PANELS if c in spectra.columns and spectra[c].notna().any()]
    if spectra.empty or not cols:
        return ("_No Path-Not-Taken columns in `spectra` (they need the base weights and W_t: run "
                "`tina-probe spectra --ckpts runs/*` without --no-intruders)._\n")
    med = spectra.groupby(["run", "kind", "step"])[cols].median().reset_index()
    long = med.melt(id_vars=["run", "kind", "step"], var_name="metric", value_name="median").dropna()
    g = sns.relplot(long, x="step", y="median", hue="run", style="kind", col="metric", kind="line", marker="o",
                    col_wrap=min(4, len(cols)), height=2.8, facet_kws={"sharey": False})
    for ax, metric in zip(g.axes.flat, [m for m in GEOMETRY_PANELS if m in set(long.metric)]):
        ax.set_title(GEOMETRY_PANELS[metric], fontsize=9)
        if metric == "principal_overlap" and "principal_baseline" in spectra:
            ax.axhline(float(spectra["principal_baseline"].dropna().iloc[0]), ls="--", color="grey", lw=1)
    name = save(g.figure, folder, "path_not_taken.png")
    last = med.sort_values("step").groupby("run").tail(1)
    k = spectra["principal_k"].dropna()
    note = (f"Median over modules; principal weights: top {float(spectra['principal_baseline'].dropna().iloc[0]):.0%} "
            f"of W_0's rank-{int(k.iloc[0])} reconstruction (dashed: the random baseline). " if len(k) else "")
    return (note + "Rules G1-G4 in analysis/path_not_taken.py.\n\n"
            f"![where the update lands]({name})\n\n" + _md(last))


def support_section(support: pd.DataFrame, entropy: pd.DataFrame, folder, save) -> str:
    """Support flows (kept / gained / lost) per run and step, and mean answer entropy over the series."""
    if support.empty:
        return "_No `support` table: run `tina-probe dynamics`._\n"
    support, bench = test_split(support)
    entropy = test_split(entropy)[0]
    s = support[(support.grading == "lenient") & (support.metric == "srr")]
    if s.empty:
        s = support[support.metric == "srr"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
    flows = s.melt(id_vars=["run", "benchmark", "step"], value_vars=["kept", "gained", "lost"], var_name="flow",
                   value_name="problems")
    sns.lineplot(flows, x="step", y="problems", hue="run", style="flow", marker="o", ax=axes[0])
    axes[0].set_title("support vs the base: problems kept / gained / lost", fontsize=9)
    if not entropy.empty:
        e = entropy.dropna(subset=["answer_entropy"])
        sns.lineplot(e, x="step", y="answer_entropy", hue="run", marker="o", errorbar=("ci", 95), ax=axes[1])
        axes[1].set_title("answer-level entropy (nats), mean over problems", fontsize=9)
    name = save(fig, folder, "support.png")
    wide = support[support.grading == s.grading.iloc[0]].pivot_table(
        index=["run", "benchmark", "step", "kept", "gained", "lost", "threshold"], columns="metric",
        values="value").reset_index()
    last = wide.sort_values("step").groupby(["run", "benchmark"]).tail(1)
    return (f"Benchmark {bench}, grading {s.grading.iloc[0]}; a problem is in support with at least "
            f"{int(s.min_correct.iloc[0])} correct sample(s) (threshold column = that / n). Rules S1-S4 in "
            f"analysis/support.py.\n\n![support]({name})\n\nEach run's last step:\n\n" + _md(last))


def gpassk_section(gpassk: pd.DataFrame, folder, save) -> str:
    """G-Pass@k_tau at the largest k, per tau, over the series."""
    if gpassk.empty:
        return "_No `gpassk` table: run `tina-probe dynamics`._\n"
    gpassk, bench = test_split(gpassk)
    g = gpassk[gpassk.grading == "lenient"]
    kmax = int(g["k"].max())
    g = g[g["k"] == kmax]
    grid = sns.relplot(g, x="step", y="value", hue="run", col="tau", col_wrap=3, kind="line", marker="o",
                       height=2.8, facet_kws={"sharey": True})
    name = save(grid.figure, folder, "gpassk.png")
    return (f"Benchmark {bench}, lenient G-Pass@{kmax}_tau: the chance that at least ceil(tau*k) of {kmax} samples are right "
            f"(tina_probe/gpassk.py).\n\n![G-Pass@k]({name})\n")


def razor_section(points: pd.DataFrame, razor: pd.DataFrame, folder, save) -> str:
    """Each retention metric's loss vs the base against the task KL, one point per checkpoint, per run."""
    if points.empty:
        return ("_No `razor_points` table: run `tina-probe retention` with a `kl_task` probe, then "
                "`tina-probe dynamics`._\n")
    frame = points.dropna(subset=["task_kl", "loss"])
    if frame.empty:
        return "_No checkpoint has both a task KL (`kl_task` probe) and another retention metric._\n"
    frame = frame.assign(what=frame["probe"] + "/" + frame["metric"])
    grid = sns.relplot(frame, x="task_kl", y="loss", hue="run", style="kind", col="what", kind="scatter",
                       col_wrap=min(3, frame["what"].nunique()), height=2.8, facet_kws={"sharey": False})
    metric = str(frame["task_kl_metric"].iloc[0])
    grid.set_axis_labels(f"task KL ({metric}, nats/token)", "loss vs base")
    name = save(grid.figure, folder, "razor.png")
    rows = ""
    if not razor.empty:
        keep = razor[(razor["scope"] == "all runs")]
        cols = [c for c in ("probe", "metric", "predictor", "statistic", "n_points", "value", "ci_low", "ci_high",
                            "verdict") if c in keep.columns]
        rows = "\nPooled over runs (rules Z3-Z5 in analysis/razor.py):\n\n" + _md(keep[cols])
    return (f"Task KL: `{metric}` (kl_forward: KL(base || checkpoint) on the base's completions, the paper's "
            f"direction; kl: KL(checkpoint || base) on the checkpoint's). Loss: a fall in accuracy, a rise in KL "
            f"or NLL.\n\n![task KL vs forgetting]({name})\n" + rows)
