"""Benchmark specs and loading: a registry (data/benchmarks.yaml) of local files or `datasets` ids -> Problems."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import string
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from tina_probe.errors import TinaError
from tina_probe.formats import check_answer_format
from tina_probe.grading import check_answer_kind

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
REGISTRY = DATA_DIR / "benchmarks.yaml"
EXTRACTIONS = ("field", "boxed_in_field", "after_hashes", "choice_index", "choice_shuffle", "auto")
CHOICE_EXTRACTIONS = ("choice_index", "choice_shuffle")  # gold is a letter: graded as multiple choice
# Environment variables that put the Hugging Face hub offline (datasets then reads only its local cache).
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
# Seconds the one reachability check of the hub may take (datasets itself retries a dead network for ~25 s).
HUB_PROBE_TIMEOUT_S = 5

# fields tried, in order, for an ad hoc file (`--benchmarks file.jsonl`)
_DEFAULT_QUESTION = ("question", "problem", "prompt", "input")
_DEFAULT_ANSWER = ("answer", "gold", "target", "final_answer")
_DEFAULT_ID = ("id", "idx", "unique_id", "problem_id")


@dataclass(frozen=True)
class Problem:
    """One benchmark problem: the question, the gold answer and the prompt built from the template."""

    id: str
    question: str
    answer: str
    prompt: str


@dataclass(frozen=True)
class BenchmarkSpec:
    """How to read one benchmark: its source, fields, answer extraction and prompt template."""

    name: str
    path: str | None = None
    dataset: str | None = None
    config: str | None = None
    split: str = "test"
    question: tuple[str, ...] = _DEFAULT_QUESTION
    answer: tuple[str, ...] = _DEFAULT_ANSWER
    id: tuple[str, ...] = _DEFAULT_ID
    extract: str = "auto"
    choices: str = "choices"
    distractors: tuple[str, ...] = ()
    template: str = "{question}"
    think_in_prompt: bool = False
    answer_format: str = "think_boxed"  # formats.ANSWER_FORMATS: what strict grading and format compliance ask
    answer_kind: str = "math"  # grading.ANSWER_KINDS: what a math answer may be (number: written out, no expression)


@dataclass(frozen=True)
class Benchmark:
    """A loaded benchmark: its problems in file order; `choice` when the answers are letters (multiple choice)."""

    name: str
    problems: list[Problem]
    source: str = ""
    think_in_prompt: bool = False
    answer_format: str = "think_boxed"
    answer_kind: str = "math"
    spec: BenchmarkSpec | None = field(default=None, compare=False)
    choice: bool = False  # grade with grading.grade(..., choice=True): a final `Answer: X` line, not a box


# ----------------------------------------------------------------------------- pure answer extraction


def last_boxed(text: str) -> str | None:
    """The balanced-brace content of the last \\boxed{...} (or \\fbox{...}) in a text, or None.

    Hand-written (a few lines) so the registry does not depend on the grader's module for gold answers."""
    starts = [i for tag in ("\\boxed{", "\\fbox{") for i in _find_all(text, tag)]
    for start in sorted(starts, reverse=True):
        open_at = text.index("{", start)
        depth = 0
        for j in range(open_at, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[open_at + 1 : j].strip()
    return None


def _find_all(text: str, sub: str) -> list[int]:
    out, i = [], text.find(sub)
    while i >= 0:
        out.append(i)
        i = text.find(sub, i + 1)
    return out


def after_hashes(text: str) -> str | None:
    """The GSM8K answer: the text after the last `####`, without thousands separators."""
    if "####" not in text:
        return None
    return text.rsplit("####", 1)[1].strip().replace(",", "")


def answer_text(value: Any) -> str:
    """A gold value as text; integer-valued floats lose their `.0` (AMC's 27.0 -> "27")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def with_choices(question: str, choices: list[str]) -> str:
    """The question followed by lettered choices, one a line (A) ..., B) ...)."""
    letters = string.ascii_uppercase
    return question.rstrip() + "\n\n" + "\n".join(f"{letters[i]}) {c}" for i, c in enumerate(choices))


def render_prompt(template: str, question: str) -> str:
    """The template with `{question}` replaced (plain replace: templates hold LaTeX braces like \\boxed{})."""
    return template.replace("{question}", question)


# ----------------------------------------------------------------------------- registry


def _as_tuple(value, default: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return default
    return tuple(value) if isinstance(value, (list, tuple)) else (str(value),)


def _read_registry(path: Path = REGISTRY) -> dict:
    try:
        reg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TinaError(f"{path}: unreadable benchmark registry ({exc})") from None
    if not isinstance(reg, dict) or not isinstance(reg.get("benchmarks"), dict):
        raise TinaError(f"{path}: expected a 'benchmarks' mapping")
    return reg


def _spec_from_entry(name: str, entry: dict, templates: dict, where: Path) -> BenchmarkSpec:
    """A BenchmarkSpec from one registry entry, checked."""
    if not isinstance(entry, dict):
        raise TinaError(f"{where}: benchmark {name!r} is not a mapping")
    unknown = set(entry) - {"path", "dataset", "config", "split", "question", "answer", "id", "extract",
                            "choices", "distractors", "template", "think_in_prompt", "answer_format",
                            "answer_kind"}
    if unknown:
        raise TinaError(f"{where}: benchmark {name!r} has unknown keys {sorted(unknown)}")
    if not entry.get("path") and not entry.get("dataset"):
        raise TinaError(f"{where}: benchmark {name!r} needs a 'path' or a 'dataset'")
    extract = entry.get("extract", "field")
    if extract not in EXTRACTIONS:
        raise TinaError(f"{where}: benchmark {name!r}: extract must be one of {list(EXTRACTIONS)}")
    template = str(entry.get("template", "raw"))
    template = str(templates.get(template, template))
    return BenchmarkSpec(
        name=name, path=entry.get("path"), dataset=entry.get("dataset"), config=entry.get("config"),
        split=str(entry.get("split", "test")), question=_as_tuple(entry.get("question"), _DEFAULT_QUESTION),
        answer=_as_tuple(entry.get("answer"), _DEFAULT_ANSWER), id=_as_tuple(entry.get("id"), _DEFAULT_ID),
        extract=extract, choices=str(entry.get("choices", "choices")),
        distractors=_as_tuple(entry.get("distractors"), ()), template=template,
        think_in_prompt=bool(entry.get("think_in_prompt", False)),
        answer_format=check_answer_format(str(entry.get("answer_format", "think_boxed")),
                                          f"{where}: benchmark {name!r}"),
        answer_kind=check_answer_kind(str(entry.get("answer_kind", "math")), f"{where}: benchmark {name!r}"),
    )


def registry(path: Path = REGISTRY) -> dict[str, BenchmarkSpec]:
    """All registered benchmark specs by name."""
    reg = _read_registry(path)
    templates = reg.get("templates") or {}
    return {name: _spec_from_entry(name, entry, templates, path) for name, entry in reg["benchmarks"].items()}


def resolve_spec(name_or_path: str, registry_path: Path = REGISTRY) -> BenchmarkSpec:
    """The spec for a registered name, `NAME=FILE` (a registered spec read from another file), or a file path."""
    specs = registry(registry_path)
    if "=" in name_or_path:
        name, _, file = name_or_path.partition("=")
        if name not in specs:
            raise TinaError(f"{name}: unknown benchmark (known: {', '.join(sorted(specs))})")
        return replace(specs[name], path=file, dataset=None)
    if name_or_path in specs:
        return specs[name_or_path]
    p = Path(name_or_path).expanduser()
    if p.suffix.lower() in (".jsonl", ".json", ".parquet") or p.exists():
        return BenchmarkSpec(name=p.stem, path=str(p))
    raise TinaError(f"{name_or_path}: unknown benchmark and no such file (known: {', '.join(sorted(specs))})")


# ----------------------------------------------------------------------------- reading rows


def _file_of(spec: BenchmarkSpec) -> Path | None:
    """The spec's local file (relative to data/ or absolute), or None when it has none or it is absent."""
    if not spec.path:
        return None
    p = Path(spec.path).expanduser()
    for candidate in ([p] if p.is_absolute() else [DATA_DIR / p, Path.cwd() / p]):
        if candidate.is_file():
            return candidate
    return None if spec.dataset else (p if p.is_absolute() else DATA_DIR / p)


def read_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) pairs from a JSONL, JSON-list or parquet file; `where` is 'file:line' for error messages."""
    if not path.is_file():
        raise TinaError(f"{path}: no such benchmark file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pandas as pd

        try:
            df = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise TinaError(f"{path}: unreadable parquet ({exc})") from None
        return [(f"{path}:row {i}", row) for i, row in enumerate(df.to_dict("records"))]
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        try:
            rows = json.loads(text)
        except ValueError as exc:
            raise TinaError(f"{path}: bad JSON ({exc})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise TinaError(f"{path}: expected a JSON list of objects")
        return [(f"{path}:item {i}", r) for i, r in enumerate(rows)]
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise TinaError(f"{path}:{lineno}: bad JSON line ({exc.args[0] if exc.args else exc})") from None
        if not isinstance(row, dict):
            raise TinaError(f"{path}:{lineno}: expected a JSON object")
        out.append((f"{path}:{lineno}", row))
    return out


def offline_var() -> str | None:
    """The environment variable that puts the hub offline (HF_HUB_OFFLINE=1, ...), or None."""
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return var
    return None


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached (one HEAD, no retries), or None when it answers."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
    except Exception as exc:  # DNS failure, refused or timed-out connection, proxy error, ...
        return type(exc).__name__
    return None


@contextmanager
def _hub_offline():
    """datasets and huggingface_hub in offline mode for a while (they read these flags at call time): a cached
    dataset then loads without the network, or fails at once instead of retrying."""
    import datasets
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _dataset_rows(spec: BenchmarkSpec) -> list[tuple[str, dict]]:
    """Rows of a `datasets` id; offline, unreachable or unknown -> one TinaError telling to pass a local file.

    Offline (an OFFLINE_VARS variable set) datasets reads its cache; online the hub is checked once first, since
    datasets would retry a dead network for ~25 s before failing; unreachable, the local cache is still tried."""
    import datasets

    way_out = f"pass a local file instead: --benchmarks {spec.name}=FILE.jsonl"
    offline = offline_var()
    down = None if offline else hub_unreachable()
    try:
        with _hub_offline() if down else nullcontext():
            ds = datasets.load_dataset(spec.dataset, spec.config, split=spec.split)
    except Exception as exc:  # ConnectionError offline, DatasetNotFoundError, gated access, ...
        if down:
            why = f"the Hugging Face hub could not be reached ({down}; offline or no hub access) and it is not " \
                  "in the local datasets cache"
        else:
            why = f"offline ({offline} is set) and not in the local datasets cache" if offline else type(exc).__name__
        raise TinaError(f"{spec.name}: cannot load dataset {spec.dataset!r}: {why}; {way_out}") from None
    return [(f"{spec.dataset}[{spec.split}] row {i}", dict(r)) for i, r in enumerate(ds)]


def _pick(row: dict, names: tuple[str, ...], where: str, what: str):
    for n in names:
        if n in row and row[n] is not None:
            return n, row[n]
    raise TinaError(f"{where}: missing field {' / '.join(repr(n) for n in names)} ({what}); has {sorted(row)}")


def row_extraction(spec: BenchmarkSpec, row: dict, raw) -> str:
    """The spec's extraction for one row; `auto` decided by the row (an index with choices, `####`, else field)."""
    if spec.extract != "auto":
        return spec.extract
    if spec.choices in row and isinstance(raw, int) and not isinstance(raw, bool):
        return "choice_index"
    if isinstance(raw, str) and "####" in raw:
        return "after_hashes"
    return "field"


def is_choice_letter(gold) -> bool:
    """A gold that is one upper-case choice letter A-J ("B", "(C)"): how an ad hoc file or a dump shows choices."""
    return bool(re.fullmatch(r"\(?[A-J]\)?", answer_text(gold).strip()))


def golds_are_choices(spec: BenchmarkSpec | None, golds) -> bool:
    """Whether a benchmark's golds are graded as letters, by the one rule `eval` and `grade` share: a registered
    extraction decides (a choice kind or not); with `auto` or no registry entry, every gold one letter A-J."""
    if spec is not None and spec.extract != "auto":
        return spec.extract in CHOICE_EXTRACTIONS
    golds = list(golds)
    return bool(golds) and all(is_choice_letter(g) for g in golds)


def is_choice(spec: BenchmarkSpec, rows: list[tuple[str, dict]]) -> bool:
    """Whether every row's gold is a choice letter (a choice extraction), so the benchmark grades letters."""
    kinds = {row_extraction(spec, row, _pick(row, spec.answer, where, "answer")[1]) for where, row in rows}
    return bool(kinds) and kinds <= set(CHOICE_EXTRACTIONS)


def problem_from_row(spec: BenchmarkSpec, row: dict, index: int, where: str) -> Problem:
    """One Problem from a raw row per the spec (pure)."""
    _, question = _pick(row, spec.question, where, "question")
    answer_field, raw = _pick(row, spec.answer, where, "answer")
    ids = [n for n in spec.id if n in row and row[n] is not None]
    pid = answer_text(row[ids[0]]) if ids else str(index)
    question = str(question)
    extract = row_extraction(spec, row, raw)
    if extract == "field":
        answer = answer_text(raw)
    elif extract == "boxed_in_field":
        answer = last_boxed(str(raw))
        if answer is None:
            raise TinaError(f"{where}: field {answer_field!r} has no \\boxed{{...}} answer")
    elif extract == "after_hashes":
        answer = after_hashes(str(raw))
        if answer is None:
            raise TinaError(f"{where}: field {answer_field!r} has no '####' answer")
    elif extract == "choice_index":
        _, choices = _pick(row, (spec.choices,), where, "choices")
        choices = [str(c) for c in list(choices)]
        try:
            idx = int(raw)
        except (TypeError, ValueError):
            raise TinaError(f"{where}: field {answer_field!r} is not a choice index") from None
        if not 0 <= idx < len(choices):
            raise TinaError(f"{where}: field {answer_field!r} = {idx} is outside the {len(choices)} choices")
        answer, question = string.ascii_uppercase[idx], with_choices(question, choices)
    else:  # choice_shuffle: correct text + distractors, shuffled by a seed derived from the problem id
        wrong = [str(_pick(row, (d,), where, "distractor")[1]).strip() for d in spec.distractors]
        options = [str(raw).strip(), *wrong]
        order = list(range(len(options)))
        random.Random(int(hashlib.sha256(f"{spec.name}/{pid}".encode()).hexdigest()[:8], 16)).shuffle(order)
        answer = string.ascii_uppercase[order.index(0)]
        question = with_choices(question, [options[i] for i in order])
    return Problem(id=pid, question=question, answer=answer, prompt=render_prompt(spec.template, question))


def load_spec(spec: BenchmarkSpec, limit: int | None = None) -> Benchmark:
    """Load a benchmark from its spec: the local file if present, else the `datasets` id."""
    file = _file_of(spec)
    if file is not None:
        rows, source = read_rows(file), str(file)
    elif spec.dataset:
        rows, source = _dataset_rows(spec), f"{spec.dataset}:{spec.split}"
    else:
        raise TinaError(f"{spec.name}: no source (neither a path nor a dataset)")
    if not rows:
        raise TinaError(f"{source}: no problems")
    if limit is not None:
        rows = rows[: max(int(limit), 0)]
    problems = [problem_from_row(spec, row, i, where) for i, (where, row) in enumerate(rows)]
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dupe = next(i for i in ids if ids.count(i) > 1)
        raise TinaError(f"{source}: problem id {dupe!r} appears twice")
    choice = is_choice(spec, rows) or golds_are_choices(spec, (p.answer for p in problems))
    return Benchmark(name=spec.name, problems=problems, source=source, think_in_prompt=spec.think_in_prompt,
                     answer_format=spec.answer_format, answer_kind=spec.answer_kind, spec=spec, choice=choice)


def load_benchmark(name_or_path: str, limit: int | None = None) -> Benchmark:
    """A benchmark by registered name, `NAME=FILE`, or a file path (ad hoc, default fields)."""
    return load_spec(resolve_spec(name_or_path), limit=limit)
