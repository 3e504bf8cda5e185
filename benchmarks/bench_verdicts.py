"""How often is each verdict of `tina-probe hypothesis` wrong? Simulated series with known truths (analysis/
calibration.py) at the sizes our studies use, R replicates each; prints per scenario, size and claim the share of
wrong firm verdicts and of right ones (power), and checks the goals: wrong <= 5% in every cell, power >= 80% at the
lab validation's size where the truth is firm.

    python benchmarks/bench_verdicts.py [--replicates 100] [--quick] [--out calibration.parquet]
    python benchmarks/bench_verdicts.py --table calibration.parquet      (print a saved table again)

--quick: 20 replicates at the lab validation's size only (a few minutes). A Monte Carlo share of R replicates has
a standard error of about sqrt(p (1 - p) / R): 2.2 points at 5% and R = 100, so a level-5% rule whose truth sits on
its boundary (no change at all) shows 7-10% in some cells by chance. The goal check therefore reports the largest raw
share and the cells whose share is significantly above 5% (one-sided binomial test, Holm over all cells).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.calibration import (CALIBRATED, LAB_VALIDATION, SCENARIOS, SIZES, calibrate,  # noqa: E402
                                  knowledge_power_bound, lenient_power_bound)

WRONG_GOAL, POWER_GOAL = 0.05, 0.80


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="20 replicates at the lab validation's size only")
    ap.add_argument("--out", type=Path, default=None, help="also write the tidy table (parquet or csv)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table", type=Path, default=None, help="print a table saved with --out instead of simulating")
    ap.add_argument("--markdown", action="store_true",
                    help="print the lab validation's size as the README's markdown table, then the goal checks")
    args = ap.parse_args(argv)
    logging.getLogger("analysis").setLevel(logging.ERROR)  # "too short" per 4-checkpoint series: expected here
    if args.table is not None:
        df = pd.read_parquet(args.table) if args.table.suffix == ".parquet" else pd.read_csv(args.table)
        reps, took = int(df["replicates"].iloc[0]), float("nan")
    else:
        reps = 20 if args.quick else args.replicates
        sizes = (LAB_VALIDATION,) if args.quick else SIZES
        n_cells = sum(1 for sc in SCENARIOS for sz in sizes
                      if not (sc.checkpoints and sz.checkpoints <= sc.checkpoints))
        t0 = time.perf_counter()
        with tqdm(total=n_cells * reps, desc="verdict calibration", unit="series") as bar:
            df = calibrate(SCENARIOS, sizes, reps, seed=args.seed, progress=bar)
        took = time.perf_counter() - t0
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            (df.to_parquet if args.out.suffix == ".parquet" else df.to_csv)(args.out)
    if args.markdown:
        print(markdown_table(df))
    report(df, reps, took)
    return 0


def markdown_table(df: pd.DataFrame) -> str:
    """The README's table: per scenario at the lab validation's size (or the scenario's own checkpoint count), each
    claim's truth and wrong / right percent, and the largest wrong share over all sizes with where it was."""
    truth = {"supported": "S", "not supported": "N", "neither": "-"}
    lines = ["| scenario (truth per claim: S / N / - neither) | " + " | ".join(CALIBRATED[:-1]) + " | **overall** | "
             "max wrong, all sizes |", "|" + "---|" * (len(CALIBRATED) + 2)]
    for name, g in df.groupby("scenario", sort=False):
        at = g[g["size"] == LAB_VALIDATION.label]
        if at.empty:  # a scenario with its own checkpoint count: the lab validation's problems and samples
            at = g[(g["problems"] == LAB_VALIDATION.problems) & (g["samples"] == LAB_VALIDATION.samples)]
            name = f"{name} ({at['size'].iloc[0]})"
        cells = at.set_index("claim")
        row = [f"{truth[cells.loc[c, 'truth']]}: {100 * cells.loc[c, 'wrong']:.0f} / {100 * cells.loc[c, 'right']:.0f}"
               for c in CALIBRATED]
        worst = g.loc[g["wrong"].idxmax()]
        where = f" ({worst['claim']}, {worst['size']})" if worst["wrong"] > 0 else ""
        lines.append(f"| {name} | " + " | ".join(row) + f" | {100 * worst['wrong']:.0f}%{where} |")
    return "\n".join(lines)


def significantly_over(df: pd.DataFrame, goal: float = WRONG_GOAL, alpha: float = 0.05) -> pd.DataFrame:
    """The cells whose wrong share is significantly above `goal`: one-sided binomial test per cell, Holm over all
    cells (statsmodels)."""
    counts = (df["wrong"] * df["replicates"]).round().astype(int)
    p = [stats.binomtest(int(k), int(n), goal, alternative="greater").pvalue
         for k, n in zip(counts, df["replicates"])]
    reject = multipletests(p, alpha=alpha, method="holm")[0]
    return df[reject]


def report(df: pd.DataFrame, reps: int, took: float) -> None:
    """Print the table and the goal checks."""
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 20)
    short = {"format_first": "first", "gain_decomposition": "gain", "strict_gain": "strict", "lenient_kept":
             "lenient", "knowledge_kept": "knowledge", "format_adaptation": "OVERALL"}
    cell = df.assign(claim=df["claim"].map(short),
                     text=(100 * df["wrong"]).round().astype(int).astype(str) + "/"
                     + (100 * df["right"]).round().astype(int).astype(str)
                     + df["truth"].map({"supported": "S", "not supported": "N", "neither": "-"}))
    table = cell.pivot_table(index=["scenario", "size"], columns="claim", values="text", aggfunc="first")
    table = table[[c for c in short.values() if c in table.columns]]
    print(f"\nwrong% / right% per claim, truth S (supported), N (not supported), - (neither firm verdict is right); "
          f"{reps} replicates per cell" + (f"; {took:.0f} s" if took == took else "") + "\n")
    print(table.to_string())
    worst = df.loc[df["wrong"].idxmax()]
    lab = df[(df["size"] == LAB_VALIDATION.label) & (df["truth"] != "neither")]
    weak = lab[lab["right"] < POWER_GOAL]
    over = significantly_over(df)
    print(f"\nwrong firm verdicts: max {100 * worst['wrong']:.0f}% ({worst['scenario']}, {worst['size']}, "
          f"{worst['claim']}); cells significantly above {100 * WRONG_GOAL:.0f}% (binomial, Holm over {len(df)} "
          f"cells): {len(over)}; goal <= {100 * WRONG_GOAL:.0f}%: {'met' if over.empty else 'MISSED'}")
    for r in over.itertuples():
        print(f"  over: {r.scenario} / {r.size} / {r.claim}: {100 * r.wrong:.0f}% wrong")
    print(f"power at the lab validation's size ({LAB_VALIDATION.label}), firm truths: min "
          f"{100 * lab['right'].min():.0f}%; goal >= {100 * POWER_GOAL:.0f}%: "
          f"{'met' if weak.empty else 'MISSED in ' + str(len(weak)) + ' of ' + str(len(lab)) + ' cells'}")
    for r in weak.itertuples():
        print(f"  below: {r.scenario} / {r.claim}: {100 * r.right:.0f}% right, {100 * r.inconclusive:.0f}% inconclusive")
    b = knowledge_power_bound(n_items=LAB_VALIDATION.retention_items)
    print(f"what the probe allows: knowledge_kept at {b['n_items']} items (no loss planted; true harm "
          f"{b['true_harm']:.3f}, true SE {b['true_se']:.4f}): rule R7 {100 * b['power_rule']:.0f}%, an oracle z test "
          f"that knows the SE {100 * b['power_oracle']:.0f}%; the overall verdict needs every part, so it cannot "
          f"reach more")
    held_out = {sc.name: sc for sc in SCENARIOS if sc.held_out}
    for r in weak[(weak["claim"] == "lenient_kept") & weak["scenario"].isin(list(held_out))].itertuples():
        b = lenient_power_bound(held_out[r.scenario])
        print(f"what the problems allow: lenient_kept under {r.scenario} (truth {b['truth']}; change "
              f"{b['true_change']:+.3f}, true SE {b['true_se']:.4f}): rule R6 {100 * r.right:.0f}%, an oracle z test "
              f"that knows the SE {100 * b['power_oracle']:.0f}%")


if __name__ == "__main__":
    raise SystemExit(main())
