"""Loading the store's tables for the explorer: path-checked, cached on (mtime, size, inode), never raising."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import streamlit as st

from tina_probe.errors import TinaError
from tina_probe.explorer.paths import resolve_inside

EVAL = "tina-probe eval --ckpts runs/*"
PHASE = "tina-probe phase --runs runs/*"
HYPOTHESIS = "tina-probe hypothesis"
DYNAMICS = "tina-probe dynamics"
LAB = "tina-probe lab"

FILLS = {  # table -> the command that writes it
    "samples": EVAL, "passk": EVAL, "format": EVAL,
    "spectra": "tina-probe spectra --ckpts runs/*",
    "retention": "tina-probe retention --ckpts runs/*",
    "phases": PHASE, "phase_summary": PHASE, "training_curves": PHASE,
    "hypothesis": HYPOTHESIS, "gain_decomposition": HYPOTHESIS,
    "runs": EVAL, "training_log": PHASE,
    "problem_dynamics": DYNAMICS, "crossover": DYNAMICS, "maj": DYNAMICS, "selection": DYNAMICS,
    "support": DYNAMICS, "answer_entropy": DYNAMICS, "gpassk": DYNAMICS, "razor": DYNAMICS,
    "update_overlap": "tina-probe spectra --ckpts runs/*",
    "report": "tina-probe report",
}

REQUIRED = {  # table -> the columns the explorer reads
    "samples": ["run", "step", "kind", "benchmark", "problem_id", "sample_idx", "completion",
                "correct_strict", "correct_lenient"],
    "passk": ["run", "step", "kind", "benchmark", "grading", "k", "value", "ci_low", "ci_high"],
    "format": ["run", "step", "kind", "benchmark", "metric", "value"],
    "spectra": ["run", "step", "kind", "layer", "module"],
    "retention": ["run", "step", "kind", "probe", "metric", "value"],
    "phases": ["run", "metric", "change_step", "change_step_low", "change_step_high"],
    "hypothesis": ["run", "claim", "statistic", "value", "verdict"],
    "gain_decomposition": ["run", "gain", "format_part", "correct_part"],
    "training_log": ["run", "step", "metric", "value"],
    "training_curves": ["run", "step", "metric", "value"],
    "runs": ["run"],
    "phase_summary": ["run"],
    "problem_dynamics": ["run", "benchmark", "grading", "problem_id", "base_rate", "final_rate", "label"],
    "crossover": ["run", "step", "benchmark", "grading", "k_star", "k_star_low", "k_star_high", "gap_at_1"],
    "maj": ["run", "step", "benchmark", "grading", "k", "value", "ci_low", "ci_high"],
    "selection": ["run", "benchmark", "selected_on", "selected_step", "value_at_selected", "max_value",
                  "max_step", "optimism"],
    "support": ["run", "benchmark", "grading", "step", "metric", "value", "ci_low", "ci_high", "kept", "gained",
                "lost", "out", "threshold", "min_correct"],
    "answer_entropy": ["run", "step", "problem_id", "answer_entropy"],
    "gpassk": ["run", "step", "benchmark", "grading", "k", "tau", "value", "ci_low", "ci_high"],
    "razor": ["scope", "probe", "metric", "predictor", "value"],
    "update_overlap": ["run_a", "run_b", "module_path", "jaccard", "baseline"],
}


@dataclass(frozen=True)
class Loaded:
    """A table as the explorer got it: rows plus what went wrong, if anything."""

    name: str
    df: pd.DataFrame = field(default_factory=pd.DataFrame)
    status: str = "ok"  # ok | missing | empty (no rows in the file) | filtered (none for the choices) | bad
    message: str = ""
    stamp: tuple[int, int, int] | None = None  # the file's fingerprint when it was read

    @property
    def ok(self) -> bool:
        """True when the table exists, is readable and has rows."""
        return self.status == "ok" and not self.df.empty


def fingerprint(path: Path) -> tuple[int, int, int] | None:
    """(mtime_ns, size, inode) of a file, or None when absent: the cache key that changes with every rewrite."""
    try:
        st_ = os.stat(path)
    except OSError:
        return None
    return (st_.st_mtime_ns, st_.st_size, st_.st_ino)


def read_parquet_file(path: str) -> pd.DataFrame:
    """Read one parquet file (kept separate so tests can count the reads behind the cache), through one handle so
    that a table replaced meanwhile by a running command is never read torn (store.read_parquet_file)."""
    from tina_probe.store import read_parquet_file as read_whole

    return read_whole(path)


@st.cache_data(show_spinner=False, max_entries=256)
def _cached_parquet(path: str, stamp: tuple[int, int, int]) -> pd.DataFrame:
    """The table at `path`; `stamp` is only a cache key, so a rewritten file is read afresh."""
    return read_parquet_file(path)


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_text(path: str, stamp: tuple[int, int, int]) -> str:
    """A text file's contents, cached like the tables."""
    return Path(path).read_text(encoding="utf-8", errors="replace")


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_bytes(path: str, stamp: tuple[int, int, int]) -> bytes:
    """A binary file's bytes (report figures), cached like the tables."""
    return Path(path).read_bytes()


def missing_columns(df: pd.DataFrame, name: str) -> list[str]:
    """The columns the explorer needs from table `name` that `df` lacks."""
    return [c for c in REQUIRED.get(name, []) if c not in df.columns]


def load_table(store: Path | str, name: str) -> Loaded:
    """The table `<store>/<name>.parquet`, path-checked and cached; problems come back as a status, not raised."""
    try:
        path = resolve_inside(store, f"{name}.parquet")
    except TinaError as exc:
        return Loaded(name, status="bad", message=str(exc))
    stamp = fingerprint(path)
    if stamp is None or not path.is_file():
        return Loaded(name, status="missing", message=f"no `{name}` table in {Path(store)}")
    try:
        df = _cached_parquet(str(path), stamp)
    except Exception as exc:  # a torn or foreign file must not take the page down
        return Loaded(name, status="bad", message=f"{path}: unreadable parquet ({type(exc).__name__}: {exc})")
    if df.empty:
        return Loaded(name, df, status="empty", message=f"{path}: no rows", stamp=stamp)
    lacking = missing_columns(df, name)
    if lacking:
        return Loaded(name, df, status="bad", message=f"{path}: lacks columns {lacking}", stamp=stamp)
    return Loaded(name, df, stamp=stamp)


def load_text(store: Path | str, rel: str) -> str | None:
    """A text file inside the store (e.g. report/report.md), or None when absent; refuses paths outside."""
    path = resolve_inside(store, rel)
    stamp = fingerprint(path)
    if stamp is None or not path.is_file():
        return None
    return _cached_text(str(path), stamp)


def load_bytes(store: Path | str, rel: str) -> bytes | None:
    """A binary file inside the store (a report figure), or None when absent; refuses paths outside."""
    path = resolve_inside(store, rel)
    stamp = fingerprint(path)
    if stamp is None or not path.is_file():
        return None
    return _cached_bytes(str(path), stamp)


def clear_caches() -> None:
    """Drop every cached table and text (tests and the sidebar's reload button)."""
    _cached_parquet.clear()
    _cached_text.clear()
    _cached_bytes.clear()
