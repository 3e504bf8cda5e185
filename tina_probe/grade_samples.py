"""`tina-probe grade`: grade completions made elsewhere (JSONL or parquet) into the samples, passk and format tables."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from tina_probe.benchmarks import BenchmarkSpec, answer_text, golds_are_choices, read_rows, registry
from tina_probe.errors import TinaError
from tina_probe.eval_generate import graded_fields
from tina_probe.eval_summary import summarize
from tina_probe.store import Store, stable_key

NEEDED = ("problem_id", "completion", "answer")
EXTERNAL = "external"  # kind and sampling label of completions made elsewhere


def read_samples_file(path: Path) -> pd.DataFrame:
    """A JSONL / JSON / parquet file as a DataFrame indexed by 'line N' / 'item N' / 'row N', for error messages."""
    if path.suffix.lower() == ".parquet":
        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise TinaError(f"{path}: unreadable parquet ({exc})") from None
        return df.set_axis([f"row {i}" for i in range(len(df))])
    rows = read_rows(path)
    labels = [where.rsplit(":", 1)[-1] for where, _ in rows]
    return pd.DataFrame([row for _, row in rows], index=[f"line {x}" if x.isdigit() else x for x in labels])


def apply_mapping(df: pd.DataFrame, mapping: dict[str, str], source: Path) -> pd.DataFrame:
    """Rename columns new <- old (e.g. completion=response); an absent old column is an error."""
    for new, old in mapping.items():
        if old not in df.columns:
            raise TinaError(f"{source}: --map {new}={old}: no column {old!r} (has {sorted(map(str, df.columns))})")
    return df.rename(columns={old: new for new, old in mapping.items()})


def merge_completions_column(df: pd.DataFrame, source: Path) -> pd.DataFrame:
    """Accept a `completions` column as `completion` (older layout); having both is ambiguous, so an error."""
    if "completions" not in df.columns:
        return df
    if "completion" in df.columns:
        raise TinaError(f"{source}: both 'completion' and 'completions' columns; drop one or --map completion=...")
    return df.rename(columns={"completions": "completion"})


def check_columns(df: pd.DataFrame, source: Path) -> None:
    """Fail on the first absent needed column, listing the ones the file has."""
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise TinaError(f"{source}: missing column {missing[0]!r} (has {sorted(map(str, df.columns))})")


def is_list(value) -> bool:
    """A list of completions: a JSON list, or a numpy array (how parquet list columns come back)."""
    return isinstance(value, (list, tuple, np.ndarray))


def is_null(value) -> bool:
    """None, NaN, pd.NA (not a list: pd.isna of a list is elementwise)."""
    return not is_list(value) and bool(pd.isna(value))


def is_blank(value) -> bool:
    """Null or an empty / whitespace-only string: no gold answer or problem id at all."""
    return is_null(value) or (isinstance(value, str) and not value.strip()) or (is_list(value) and not len(value))


def is_missing_completion(value) -> bool:
    """Null, an empty list or a list holding a null (an empty string is a real, wrong, completion)."""
    if is_list(value):
        return not len(value) or any(is_null(v) for v in value)
    return is_null(value)


def rows_where(df: pd.DataFrame, col: str, missing) -> list[str]:
    """Labels ('line 3', 'row 0') of the rows whose `col` value is missing by the given test."""
    return [str(label) for label, value in df[col].items() if missing(value)]


def check_values(df: pd.DataFrame, source: Path) -> None:
    """Missing problem ids, gold answers and completions are errors naming the rows (they would grade as 'nan')."""
    checks = [("problem_id", is_blank, "problem_id"), ("answer", is_blank, "gold answer"),
              ("completion", is_missing_completion, "completion (null or empty list)")]
    for col, missing, what in checks:
        bad = rows_where(df, col, missing)
        if bad:
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise TinaError(f"{source}: missing {what} at {', '.join(bad[:5])}{more}")


def to_one_row_per_completion(df: pd.DataFrame, source: Path) -> pd.DataFrame:
    """Explode list-valued `completion` rows (one row per problem) into one row per completion; strings stay one."""
    lists = df["completion"].map(is_list)
    if not lists.any():
        return df
    if "sample_idx" in df.columns:
        raise TinaError(f"{source}: sample_idx given with lists of completions; drop it (lists are numbered 0..n-1)")
    df = df.copy()
    df["completion"] = df["completion"].map(lambda v: list(v) if is_list(v) else v)
    # no sample_idx column: normalize_samples numbers each problem's completions 0..n-1 in file order
    return df.explode("completion", ignore_index=True)


def normalize_samples(df: pd.DataFrame, source: Path) -> pd.DataFrame:
    """Check the needed columns and fill the optional ones (run, step, kind, benchmark, sample_idx, ...)."""
    check_columns(df, source)
    df = df.copy()
    defaults = {"run": source.stem, "step": 0, "kind": EXTERNAL, "benchmark": source.stem, "sampling": EXTERNAL,
                "truncated": False, "think_in_prompt": False}
    for col, value in defaults.items():
        df[col] = df[col].fillna(value) if col in df.columns else value
    df["step"] = df["step"].astype(int)
    df["problem_id"] = df["problem_id"].map(answer_text)
    df["completion"] = df["completion"].astype(str)
    if "sample_idx" not in df.columns:
        df["sample_idx"] = df.groupby(["run", "step", "benchmark", "problem_id"]).cumcount()
    df["sample_idx"] = df["sample_idx"].astype(int)
    if "n_tokens" not in df.columns:
        # no tokenizer here: whitespace-separated words stand in for tokens (column n_tokens_counted says so)
        df["n_tokens"] = df["completion"].str.split().str.len()
        df["n_tokens_counted"] = "words"
    return df.reset_index(drop=True)


def choice_benchmarks(df: pd.DataFrame, specs: dict) -> set[str]:
    """Benchmarks whose golds are choice letters: a registry entry read with a choice extraction, else (an unknown
    name) every gold a single letter A-J, so that GPQA / MMLU dumps are graded by their `Answer: X` lines."""
    return {str(name) for name, golds in df.groupby("benchmark")["answer"]
            if golds_are_choices(specs.get(str(name)), golds)}


def grading_settings(df: pd.DataFrame, specs: dict) -> dict[str, BenchmarkSpec]:
    """Each benchmark's spec for its grading settings (answer format and kind): its registry entry, else a spec with
    the defaults (an unregistered name)."""
    return {str(name): specs.get(str(name)) or BenchmarkSpec(name=str(name)) for name in df["benchmark"].unique()}


def grade_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Samples rows with the grade and format columns added (pure but for math-verify's timeouts)."""
    specs = registry()  # read once for every lookup
    choice, settings = choice_benchmarks(df, specs), grading_settings(df, specs)
    graded = [
        graded_fields(row.completion, row.answer, truncated=bool(row.truncated), think=bool(row.think_in_prompt),
                      choice=row.benchmark in choice, answer_format=settings[str(row.benchmark)].answer_format,
                      answer_kind=settings[str(row.benchmark)].answer_kind)
        for row in tqdm(df.itertuples(index=False), total=len(df), desc="grading", unit="completion")
    ]
    out = df.drop(columns=[c for c in graded[0] if c in df.columns]) if graded else df
    out = pd.concat([out.reset_index(drop=True), pd.DataFrame(graded)], axis=1)
    out["answer"] = out["answer"].map(answer_text)
    return out


def run_grade(samples_file, out=Path("results"), mapping: dict[str, str] | None = None) -> dict[str, pd.DataFrame]:
    """Grade a file of completions and write the samples, passk and format tables to the store `out`."""
    path = Path(samples_file)
    if not path.is_file():
        raise TinaError(f"{path}: no such samples file")
    mapping = dict(mapping or {})
    df = merge_completions_column(apply_mapping(read_samples_file(path), mapping, path), path)
    check_columns(df, path)
    check_values(df, path)
    df = normalize_samples(to_one_row_per_completion(df, path), path)
    if df.empty:
        raise TinaError(f"{path}: no completions")
    rows = grade_frame(df)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    store = Store(out)
    store.write_part("samples", stable_key("grade", digest, json.dumps(mapping, sort_keys=True)), rows)
    return summarize(store)
