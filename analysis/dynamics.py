"""`tina-probe dynamics`: series dynamics from the store's samples and passk tables.

Writes four tables (per run, benchmark, sampling and grading where they apply):
- `problem_dynamics`: each problem across the series, labelled learned / forgotten / kept_solved / never_solved /
  unstable (analysis/problem_dynamics.py);
- `crossover`: the smallest k at which the base's pass@k reaches each checkpoint's (analysis/crossover.py);
- `maj`: maj@k for every k <= n, exact over k-subsets (tina_probe/majority.py);
- `selection`: the best checkpoint chosen on a held-out benchmark and scored on the test one
  (analysis/selection.py);
- `support`: support flows of each checkpoint against the base (kept / gained / lost, SRR, NDR, NSCR) and
  `answer_entropy` per problem and checkpoint (analysis/support.py, after "The Invisible Leash");
- `gpassk`: G-Pass@k_tau beside pass@k (tina_probe/gpassk.py);
- `razor`, `razor_points` (its inputs: per checkpoint and retention metric, loss, task_kl, rel_norm): whether task
  KL or the weight-change norm predicts forgetting along the series (analysis/razor.py,
  after "RL's Razor"), when the store has retention rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from tqdm import tqdm

from analysis.crossover import CROSSOVER_COLUMNS, crossover_table
from analysis.problem_dynamics import PROBLEM_COLUMNS, problem_dynamics_table
from analysis.process_map import process_map
from analysis.selection import parse_pairs, selection_table
from analysis.support import ENTROPY_COLUMNS, MIN_CORRECT, SUPPORT_COLUMNS, answer_entropy_table, support_table
from tina_probe.errors import TinaError
from tina_probe.gpassk import GPASSK_COLUMNS, gpassk_table
from tina_probe.majority import MAJ_COLUMNS, maj_table
from tina_probe.passk import CORRECT_COLS, passk_table
from tina_probe.store import Store, read_parquet_file

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["run", "step", "kind", "benchmark", "sampling", "problem_id", "sample_idx", "extracted_answer",
                  "correct_strict", "correct_lenient", "well_formatted", "think_closed", "boxed", "truncated"]
NEEDED = ["run", "step", "benchmark", "problem_id", "correct_strict", "correct_lenient"]
N_BOOT = 1000


def read_samples(store: Store) -> pd.DataFrame:
    """The samples table without its completions (the statistics need only grades and extracted answers)."""
    path = store.table_path("samples")
    if not path.is_file():
        raise TinaError(f"{path}: no samples table (run `tina-probe eval --ckpts runs/*`)")
    try:
        have = set(pq.read_schema(path).names)
        df = read_parquet_file(path, columns=[c for c in SAMPLE_COLUMNS if c in have])
    except Exception as exc:  # pyarrow raises several types for a torn or foreign file
        raise TinaError(f"{path}: unreadable parquet ({type(exc).__name__})") from None
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise TinaError(f"{path}: missing columns {missing}")
    if df.empty:
        raise TinaError(f"{path}: no rows (run `tina-probe eval --ckpts runs/*`)")
    if "sampling" not in df.columns:
        df["sampling"] = ""
    if "kind" not in df.columns:
        df["kind"] = None
    return df.assign(sampling=df["sampling"].fillna(""))


def run_tables(job: tuple[pd.DataFrame, int, int, int]) -> dict[str, pd.DataFrame]:
    """One run's problem_dynamics, crossover, maj, support, answer_entropy and gpassk rows from its samples
    (frame, n_boot, seed, min_correct). Pure, and every bootstrap starts from `seed`: the same rows in any process."""
    frame, n_boot, seed, min_correct = job
    return {"problem_dynamics": problem_dynamics_table(frame, CORRECT_COLS),
            "crossover": crossover_table(frame, CORRECT_COLS, n_boot=n_boot, seed=seed),
            "maj": maj_table(frame, n_boot=n_boot, seed=seed),
            "support": support_table(frame, CORRECT_COLS, min_correct=min_correct, n_boot=n_boot, seed=seed),
            "answer_entropy": answer_entropy_table(frame),
            "gpassk": gpassk_table(frame, n_boot=n_boot, seed=seed)}


def dynamics_tables(samples: pd.DataFrame, passk: pd.DataFrame, *, select_on: list[str] | None = None,
                    n_boot: int = N_BOOT, seed: int = 0, show: bool = True, min_correct: int = MIN_CORRECT,
                    workers: int = 1) -> dict[str, pd.DataFrame]:
    """Every dynamics table from a samples table (and passk for the selection; rebuilt from samples when empty);
    `workers` > 1 computes the runs in that many processes (analysis/process_map.py: the same rows)."""
    pairs = parse_pairs(select_on)
    parts: dict[str, list[pd.DataFrame]] = {"problem_dynamics": [], "crossover": [], "maj": [], "support": [],
                                            "answer_entropy": [], "gpassk": []}
    runs = sorted(samples["run"].unique())
    jobs = [(samples[samples["run"] == run], n_boot, seed, min_correct) for run in runs]
    for tables in tqdm(process_map(run_tables, jobs, workers), total=len(runs), desc="dynamics", unit="run",
                       disable=not show or None):
        for name, frame in tables.items():
            parts[name].append(frame)
    columns = {"problem_dynamics": PROBLEM_COLUMNS, "crossover": CROSSOVER_COLUMNS, "maj": MAJ_COLUMNS,
               "support": SUPPORT_COLUMNS, "answer_entropy": ENTROPY_COLUMNS, "gpassk": GPASSK_COLUMNS}
    tables = {name: (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns[name]))
              for name, frames in parts.items()}
    if passk.empty:
        passk = passk_table(samples, group_cols=["run", "step", "kind", "benchmark", "sampling"], n_boot=200,
                            seed=seed)
    tables["selection"] = selection_table(passk, pairs)
    if tables["selection"].empty:
        log.warning("no held-out benchmark beside a test benchmark (e.g. lab-probe beside lab-test, or "
                    "--select-on HELD=TEST): the selection table is empty")
    return tables


def run_dynamics(out: Path, *, select_on: list[str] | None = None, n_boot: int = N_BOOT,
                 seed: int = 0, min_correct: int = MIN_CORRECT, workers: int = 1) -> dict[str, pd.DataFrame]:
    """`tina-probe dynamics`: read the store at `out`, write every table in the module docstring (the runs' tables
    over `workers` processes)."""
    if min_correct < 1:
        raise TinaError(f"--support-min-correct {min_correct}: a problem needs >= 1 correct sample to be in support")
    store = Store(out)
    samples = read_samples(store)
    tables = dynamics_tables(samples, store.read("passk"), select_on=select_on, n_boot=n_boot, seed=seed,
                             min_correct=min_correct, workers=workers)
    retention = store.read("retention")
    if not retention.empty:
        from analysis.razor import forgetting_frame, razor_table

        path = store.table_path("spectra")
        spectra = read_parquet_file(path, columns=["run", "step", "rel_norm"]) if path.is_file() else None
        tables["razor"] = razor_table(retention, spectra, n_boot=n_boot, seed=seed)
        tables["razor_points"] = forgetting_frame(retention, spectra)  # what the razor rows were computed from
    for name, df in tables.items():
        store.write(name, df.reset_index(drop=True))
    return tables
