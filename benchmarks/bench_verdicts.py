"""How often is each verdict of `tina-probe hypothesis` wrong? Simulated series with known truths (analysis/
calibration.py) at the sizes our studies use, R replicates each; prints per scenario, size and claim the share of
wrong firm verdicts and of right ones (power), and checks the goals: wrong <= 5% in every cell, power >= 80% at the
lab validation's size where the truth is firm.

    python benchmarks/bench_verdicts.py [--replicates 100] [--quick] [--out calibration.parquet]

--quick: 20 replicates at the lab validation's size only (a few minutes). A Monte Carlo share of R replicates has
a standard error of about sqrt(p (1 - p) / R): 2.2 points at 5% and R = 100.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.calibration import LAB_VALIDATION, SCENARIOS, SIZES, calibrate  # noqa: E402

WRONG_GOAL, POWER_GOAL = 0.05, 0.80


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="20 replicates at the lab validation's size only")
    ap.add_argument("--out", type=Path, default=None, help="also write the tidy table (parquet or csv)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.getLogger("analysis").setLevel(logging.ERROR)  # "too short" per 4-checkpoint series: expected here
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
          f"{reps} replicates per cell; {took:.0f} s\n")
    print(table.to_string())
    worst = df.loc[df["wrong"].idxmax()]
    lab = df[(df["size"] == LAB_VALIDATION.label) & (df["truth"] != "neither")]
    weak = lab[lab["right"] < POWER_GOAL]
    print(f"\nwrong firm verdicts: max {100 * worst['wrong']:.0f}% ({worst['scenario']}, {worst['size']}, "
          f"{worst['claim']}); goal <= {100 * WRONG_GOAL:.0f}%: {'met' if worst['wrong'] <= WRONG_GOAL else 'MISSED'}")
    print(f"power at the lab validation's size ({LAB_VALIDATION.label}), firm truths: min "
          f"{100 * lab['right'].min():.0f}%; goal >= {100 * POWER_GOAL:.0f}%: "
          f"{'met' if weak.empty else 'MISSED in ' + str(len(weak)) + ' of ' + str(len(lab)) + ' cells'}")
    for r in weak.itertuples():
        print(f"  below: {r.scenario} / {r.claim}: {100 * r.right:.0f}% right, {100 * r.inconclusive:.0f}% inconclusive")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
