"""Correctness of a completion against a gold answer with math-verify: strict (format-compliant) and lenient."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from tina_probe.errors import TinaError
from tina_probe.formats import FormatReport, answer_region, boxed_contents, canonical_boxes, format_report

# Boxed answers first (priority 0), then the last LaTeX / plain expression: math-verify's own extraction.
EXTRACTION = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
# Seconds math-verify may spend on one parse / comparison; its timeout uses SIGALRM, main thread only.
TIMEOUT_S = 5
# A gold string containing one of these is already LaTeX-delimited; a bare value gets wrapped in $...$.
_DELIMITERS = ("$", "\\boxed", "\\(", "\\[")


@dataclass(frozen=True)
class Grade:
    """One completion's grade: the answer read, strict and lenient correctness, and its format report."""

    extracted_answer: str | None  # the answer the strict grader read (boxed after </think>) or else lenient's
    correct_strict: bool  # well formatted and the boxed answer after </think> equals gold
    correct_lenient: bool  # math-verify finds the gold answer in the completion (boxed or last expr)
    format: FormatReport


def _timeout() -> int | None:
    """math-verify's timeout where its signal-based alarm works (main thread), else none, so threads can grade."""
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse(text: str) -> list:
    """math-verify parse with the project's extraction order and a thread-safe timeout."""
    return parse(text, EXTRACTION, parsing_timeout=_timeout())


def normalize_gold(gold: str | int | float) -> str:
    """Gold answer as text: numbers from JSON (27.0) become "27"; errors name an empty or unusable gold."""
    if isinstance(gold, bool) or gold is None:
        raise TinaError(f"gold answer {gold!r}: not a math answer")
    if isinstance(gold, int):
        return str(gold)
    if isinstance(gold, float):
        return str(int(gold)) if gold.is_integer() else repr(gold)
    text = str(gold).strip()
    if not text:
        raise TinaError("gold answer: empty")
    return text


@lru_cache(maxsize=65536)
def parse_gold(gold: str) -> tuple:
    """Parsed gold answer (cached: the same gold is graded against many samples); the raw string if unparsable."""
    candidates = [gold] if any(d in gold for d in _DELIMITERS) else [f"${gold}$", gold]
    for text in candidates:
        parsed = _parse(text)
        if parsed:
            return tuple(parsed)
    return (gold,)  # math-verify then compares strings


def _matches(gold: str, parsed_pred: list) -> bool:
    """True when math-verify finds the parsed prediction equal to the gold answer."""
    if not parsed_pred:
        return False
    return verify(list(parse_gold(gold)), parsed_pred, timeout_seconds=_timeout())


def _extracted_text(parsed: list) -> str | None:
    """The matched text math-verify reports beside its sympy value, else the value as text."""
    strings = [p for p in parsed if isinstance(p, str)]
    if strings:
        return strings[0]
    return str(parsed[0]) if parsed else None


def grade(
    completion: str, gold: str | int | float, *, truncated: bool = False, think_in_prompt: bool = False
) -> Grade:
    """Grade one completion: strict needs the format and its single boxed answer; lenient reads anywhere."""
    return _grade(completion, normalize_gold(gold), bool(truncated), bool(think_in_prompt), _timeout())


@lru_cache(maxsize=4096)  # completions can be long: a bounded cache (tens of MB at most)
def _grade(completion: str, gold_text: str, truncated: bool, think_in_prompt: bool, timeout: int | None) -> Grade:
    """grade() of a normalized gold, cached: a sweep meets the same completion often (greedy checkpoints that
    agree, short sampled answers) and math-verify takes ~1 ms per parse. `timeout` (main thread or not) is part of
    the key only: a parse cut by the alarm is not reused by a thread that would run it to the end."""
    report = format_report(completion, truncated=truncated, think_in_prompt=think_in_prompt)
    after = boxed_contents(answer_region(completion))
    strict = report.well_formatted and _matches(gold_text, _parse("\\boxed{" + after[0] + "}"))
    lenient_parsed = [] if strict else _parse(canonical_boxes(completion))
    # A strict-correct answer is found in the completion by definition: strict implies lenient.
    lenient = strict or _matches(gold_text, lenient_parsed)
    extracted = after[-1] if after else _extracted_text(lenient_parsed)
    return Grade(extracted_answer=extracted, correct_strict=strict, correct_lenient=lenient, format=report)


def grade_many(
    completions: Sequence[str],
    golds: Sequence[str | int | float],
    truncated: Sequence[bool] | None = None,
    think_in_prompt: bool = False,
) -> list[Grade]:
    """Grade completions against their golds, pairwise (one gold per completion)."""
    if truncated is None:
        truncated = [False] * len(completions)
    if not len(completions) == len(golds) == len(truncated):
        raise ValueError(
            f"grade_many: {len(completions)} completions, {len(golds)} golds, {len(truncated)} truncated flags"
        )
    return [
        grade(c, g, truncated=bool(t), think_in_prompt=think_in_prompt)
        for c, g, t in zip(completions, golds, truncated)
    ]
