"""`tina-probe grade`: grade completions made elsewhere (JSONL or parquet) into the samples, passk and format tables."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from tina_probe.benchmarks import answer_text, read_rows
from tina_probe.errors import TinaError
from tina_probe.evaluate import graded_fields, summarize
from tina_probe.store import Store, stable_key

NEEDED = ("problem_id", "completion", "answer")
EXTERNAL = "external"  # kind and sampling label of completions made elsewhere


def read_samples_file(path: Path) -> pd.DataFrame:
    """A JSONL / JSON / parquet file as a DataFrame; errors name the file (and line)."""
    if path.suffix.lower() == ".parquet":
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise TinaError(f"{path}: unreadable parquet ({exc})") from None
    return pd.DataFrame([row for _, row in read_rows(path)])


def apply_mapping(df: pd.DataFrame, mapping: dict[str, str], source: Path) -> pd.DataFrame:
    """Rename columns new <- old (e.g. completion=response); an absent old column is an error."""
    for new, old in mapping.items():
        if old not in df.columns:
            raise TinaError(f"{source}: --map {new}={old}: no column {old!r} (has {sorted(map(str, df.columns))})")
    return df.rename(columns={old: new for new, old in mapping.items()})


def to_one_row_per_completion(df: pd.DataFrame) -> pd.DataFrame:
    """Explode a `completions` list column (one row per problem) into one row per completion with sample_idx."""
    if "completion" in df.columns or "completions" not in df.columns:
        return df
    df = df.copy()
    df["completions"] = df["completions"].map(lambda v: list(v) if v is not None else [])
    df["sample_idx"] = df["completions"].map(lambda v: list(range(len(v))))
    df = df.explode(["completions", "sample_idx"], ignore_index=True)
    df = df[df["completions"].notna()]
    return df.rename(columns={"completions": "completion"}).reset_index(drop=True)


def normalize_samples(df: pd.DataFrame, source: Path) -> pd.DataFrame:
    """Check the needed columns and fill the optional ones (run, step, kind, benchmark, sample_idx, ...)."""
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise TinaError(f"{source}: missing column {missing[0]!r} (has {sorted(map(str, df.columns))})")
    df = df.copy()
    defaults = {"run": source.stem, "step": 0, "kind": EXTERNAL, "benchmark": source.stem, "sampling": EXTERNAL,
                "truncated": False, "think_in_prompt": False}
    for col, value in defaults.items():
        df[col] = df[col].fillna(value) if col in df.columns else value
    df["step"] = df["step"].astype(int)
    df["problem_id"] = df["problem_id"].map(answer_text)
    df["completion"] = df["completion"].fillna("").astype(str)
    if "sample_idx" not in df.columns:
        df["sample_idx"] = df.groupby(["run", "step", "benchmark", "problem_id"]).cumcount()
    df["sample_idx"] = df["sample_idx"].astype(int)
    if "n_tokens" not in df.columns:
        # no tokenizer here: whitespace-separated words stand in for tokens (column n_tokens_counted says so)
        df["n_tokens"] = df["completion"].str.split().str.len()
        df["n_tokens_counted"] = "words"
    return df


def grade_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Samples rows with the grade and format columns added (pure but for math-verify's timeouts)."""
    graded = [
        graded_fields(row.completion, row.answer, truncated=bool(row.truncated), think=bool(row.think_in_prompt))
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
    df = to_one_row_per_completion(apply_mapping(read_samples_file(path), mapping, path))
    df = normalize_samples(df, path)
    if df.empty:
        raise TinaError(f"{path}: no completions")
    rows = grade_frame(df)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    store = Store(out)
    store.write_part("samples", stable_key("grade", digest, json.dumps(mapping, sort_keys=True)), rows)
    return summarize(store)
