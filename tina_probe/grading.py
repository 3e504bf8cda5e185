"""Correctness of a completion against a gold answer: strict (format-compliant) and lenient.

Math answers are compared with math-verify; multiple-choice answers (choice=True) are letters read by pattern.
What a math answer may be is its benchmark's answer kind (ANSWER_KINDS):
  math    any expression math-verify finds equal to the gold (the default; the paper's benchmarks)
  number  a number written out: an integer, a decimal or a fraction, or an equation whose right side is one
          ("7 + 5 = 12"). For tasks whose question holds the computable expression: math-verify evaluates what it
          parses, so `\\boxed{7 + 5}` would pass for 12 and restating the question would earn full marks (the real
          study's runs learned exactly that under the math kind).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from sympy import Eq

from tina_probe.errors import TinaError
from tina_probe.formats import (FormatReport, boxed_contents, canonical_boxes, final_region, format_report,
                                thinking_required)
from tina_probe.integer_answers import lenient_integer, plain_integer
from tina_probe.slow_paths import slow_paths

# Boxed answers first (priority 0), then the last LaTeX / plain expression: math-verify's own extraction.
EXTRACTION = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
# Seconds math-verify may spend on one parse / comparison; its timeout uses SIGALRM, main thread only.
TIMEOUT_S = 5
# A gold string containing one of these is already LaTeX-delimited; a bare value gets wrapped in $...$.
_DELIMITERS = ("$", "\\boxed", "\\(", "\\[")
# A plain number in e-notation (Minerva's 4.5e33): math-verify's LaTeX parser reads the e as Euler's number.
_E_NUMBER = re.compile(r"([+-]?\d+(?:\.\d+)?)[eE]([+-]?\d+)")
# A box holding only such a number, in a completion (after canonical_boxes).
_E_NUMBER_BOX = re.compile(r"\\boxed\{\s*(" + _E_NUMBER.pattern + r")\s*\}")

ANSWER_KINDS = ("math", "number")

# ----- multiple choice: a letter answer, read by pattern (math-verify would read a bare letter as a variable)
# The letter itself. Enclosed, in either case: "(B)", "(b)", "\text{B}". Bare, only an upper-case A-J that ends the
# statement: followed (after any markdown/$/} closers) by ")", punctuation, the end of the line, or a lower-case word
# ("B because", "B is correct"); never a bare "I" before a word ("I think"). So "a 7-digit number", "$E = mc^2$"
# and "n = 5" state no letter.
_ENCLOSED_LETTER = r"\(\s*([A-Za-z])\s*\)|\\text(?:bf)?\{\s*([A-Za-z])\s*\}"
_BARE_LETTER = r"([A-J])(?=[*$}\]]*(?:[).,;:!?]|[ \t]*$)|(?<=[A-HJ])[*$}\]]*\s+[a-z])"
_LETTER = r"(?:" + _ENCLOSED_LETTER + "|" + _BARE_LETTER + ")"
_I_THINK = r"(?:I\s+[a-z]+\s+)?"  # "the answer is I think B": the letter after the aside
# The letter in a box: enclosed (either case) or a bare upper-case A-J alone (not \boxed{x}, \boxed{E = mc^2}).
_BOXED_LETTER = r"\\boxed\{\s*(?:" + _ENCLOSED_LETTER + r"|([A-J]))\s*\}"
# A whole "Answer: X" line (markdown *, $X$, a final "."): its letter counts in either case and any letter.
_ANSWER_LINE = (
    r"(?:(?i:final[ \t*]+)?(?i:answer)[ \t*]*:[ \t*]*)(?:" + _ENCLOSED_LETTER
    + r"|\$\s*(?:\\text(?:bf)?\{\s*([A-Za-z])\s*\}|([A-Za-z]))\s*\$|([A-Za-z]))"
)
# Where answers are stated: "Answer: X" (also **Answer:** X, Answer: $X$), "answer is (X)", \boxed{X}, an Answer line.
_CHOICE_PATTERNS = (
    re.compile(r"\b(?i:answer)\s*\**\s*:\s*\**\s*\$?\s*" + _I_THINK + _LETTER, re.MULTILINE),
    re.compile(r"\b(?i:answer)\s+is\s*:?\s*\**\s*\$?\s*" + _I_THINK + _LETTER, re.MULTILINE),
    re.compile(_BOXED_LETTER),
    re.compile(r"^[ \t*]*" + _ANSWER_LINE + r"[ \t*]*\.?[ \t*]*$", re.MULTILINE),
)
# The strict final line (markdown * removed): the Answer line above, or one \boxed{X} (with "Answer:", $...$, ".").
_FINAL_BOX = re.compile(r"(?:(?i:final\s+)?(?i:answer)\s*:\s*)?\$?" + _BOXED_LETTER + r"\$?\.?")
_FINAL_LINE = re.compile(_ANSWER_LINE + r"\.?")


@dataclass(frozen=True)
class Grade:
    """One completion's grade: the answer read, strict and lenient correctness, and its format report."""

    extracted_answer: str | None  # the answer the strict grader read (boxed after </think>) or else lenient's;
    # for multiple choice the last letter answer found anywhere
    correct_strict: bool  # well formatted and the boxed answer after </think> (choice: final Answer line) equals gold
    correct_lenient: bool  # the gold answer is found in the completion (math: boxed or last expr; choice: last letter)
    format: FormatReport  # for multiple choice, well_formatted judges the final Answer line instead of one box


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


def check_answer_kind(kind: str, where: str) -> str:
    """The answer kind, checked against ANSWER_KINDS; a TinaError naming `where` otherwise."""
    if kind not in ANSWER_KINDS:
        raise TinaError(f"{where}: answer_kind must be one of {', '.join(ANSWER_KINDS)}, got {kind!r}")
    return kind


def written_number(parsed: list) -> bool:
    """Rule `number`: math-verify's reading is a number as written (an integer, decimal or fraction), or an
    equation whose right side is one; `7 + 5`, `2^3` or `7 \\times 5` are expressions, not numbers. math-verify
    parses without evaluating (its sympy value of `\\boxed{7 + 5}` is an unevaluated sum), so the test is on it."""
    if not parsed:
        return False
    value = parsed[0]
    if isinstance(value, Eq):
        value = value.rhs
    return bool(getattr(value, "is_Number", False))


def _kind_filter(parsed: list, answer_kind: str) -> list:
    """The parsed answer as math-verify read it, or no answer where the kind rejects it (see ANSWER_KINDS)."""
    return parsed if answer_kind == "math" or written_number(parsed) else []


def scientific_latex(text: str) -> str:
    """A plain e-notation number as LaTeX (4.5e33 -> 4.5 \\times 10^{33}): math-verify reads `e` as Euler's e."""
    m = _E_NUMBER.fullmatch(text.strip())
    if m is None:
        return text
    return f"{m.group(1).lstrip('+')} \\times 10^{{{int(m.group(2))}}}"


def _scientific_boxes(text: str) -> str:
    """Every \\boxed{4.5e33} (a box holding only an e-notation number) rewritten by scientific_latex."""
    return _E_NUMBER_BOX.sub(lambda m: "\\boxed{" + scientific_latex(m.group(1)) + "}", text)


@lru_cache(maxsize=65536)
def parse_gold(gold: str) -> tuple:
    """Parsed gold answer (cached: the same gold is graded against many samples); the raw string if unparsable."""
    gold = scientific_latex(gold)
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


def choice_gold(gold: str | int | float) -> str:
    """A multiple-choice gold as its upper-case letter ("B", " (b) " -> "B"); anything else is not a choice."""
    text = normalize_gold(gold).strip("() ").upper()
    if len(text) != 1 or not "A" <= text <= "Z":
        raise TinaError(f"gold answer {gold!r}: not a choice letter")
    return text


def choice_answers(text: str) -> list[str]:
    """Every letter answer stated in a text (Answer: X, answer is (X), \\boxed{X}), upper-cased, in text order."""
    found = {}  # letter position -> letter (a whole Answer line is also an "Answer: X" statement)
    for pattern in _CHOICE_PATTERNS:
        for m in pattern.finditer(text):
            i = next(i for i, g in enumerate(m.groups(), start=1) if g)
            found[m.start(i)] = m.group(i).upper()
    return [found[i] for i in sorted(found)]


def final_choice(region: str) -> str | None:
    """The upper-cased letter of the answer region's last line when it is the requested `Answer: X` (or one
    \\boxed{X}); choice_answers reads the same letter from that line."""
    lines = region.strip().splitlines()
    if not lines:
        return None
    line = lines[-1].replace("*", "").strip()
    m = _FINAL_LINE.fullmatch(line)
    if m is None:
        m = _FINAL_BOX.fullmatch(line)
        if m is None or len(boxed_contents(region)) != 1:
            return None
    return next(g for g in m.groups() if g).upper()


def grade(
    completion: str,
    gold: str | int | float,
    *,
    truncated: bool = False,
    think_in_prompt: bool = False,
    choice: bool = False,
    answer_format: str = "think_boxed",
    answer_kind: str = "math",
) -> Grade:
    """Grade one completion: strict needs the format and its single final answer; lenient reads anywhere.

    choice=True for multiple-choice benchmarks: the answer is a letter on a final `Answer: X` line, not a box.
    answer_format: formats.ANSWER_FORMATS (think_boxed: after </think>; boxed: thinking tags optional).
    answer_kind: ANSWER_KINDS (math: any equal expression; number: a number written out), strict and lenient alike."""
    gold_text = choice_gold(gold) if choice else normalize_gold(gold)
    return _grade(completion, gold_text, bool(truncated), bool(think_in_prompt), _timeout(), bool(choice),
                  str(answer_format), not slow_paths(), check_answer_kind(str(answer_kind), "grade"))


@lru_cache(maxsize=4096)  # completions can be long: a bounded cache (tens of MB at most)
def _grade(
    completion: str, gold_text: str, truncated: bool, think_in_prompt: bool, timeout: int | None, choice: bool,
    answer_format: str = "think_boxed", fast: bool = True, answer_kind: str = "math",
) -> Grade:
    """grade() of a normalized gold, cached: a sweep meets the same completion often (greedy checkpoints that
    agree, short sampled answers) and math-verify takes ~1 ms per parse. `timeout` (main thread or not) is part of
    the key only: a parse cut by the alarm is not reused by a thread that would run it to the end. `fast`: plain
    integers compared as integers where math-verify's reading is certain (integer_answers), else math-verify."""
    report = format_report(completion, truncated=truncated, think_in_prompt=think_in_prompt,
                           answer_format=answer_format)
    region = final_region(completion, think_in_prompt=think_in_prompt, answer_format=answer_format)
    if choice:
        closed = report.think_closed or not thinking_required(completion, think_in_prompt, answer_format)
        return _grade_choice(completion, gold_text, report, region if closed else "")
    after = boxed_contents(region)
    gold_int = plain_integer(gold_text) if fast else None
    if gold_int is not None:
        return _grade_integer(completion, gold_text, gold_int, report, after, answer_kind)
    strict = report.well_formatted and _matches(
        gold_text, _kind_filter(_parse("\\boxed{" + scientific_latex(after[0]) + "}"), answer_kind))
    lenient_parsed = [] if strict else _parse(_scientific_boxes(canonical_boxes(completion)))
    # A strict-correct answer is found in the completion by definition: strict implies lenient.
    lenient = strict or _matches(gold_text, _kind_filter(lenient_parsed, answer_kind))
    extracted = after[-1] if after else _extracted_text(lenient_parsed)
    return Grade(extracted_answer=extracted, correct_strict=strict, correct_lenient=lenient, format=report)


def _grade_integer(completion: str, gold_text: str, gold: int, report: FormatReport, after: list[str],
                   answer_kind: str = "math") -> Grade:
    """A math grade against a plain-integer gold (text and value): integers compared as integers where the answer
    read is a plain integer in a shape math-verify reads only one way (integer_answers), math-verify elsewhere.
    A plain integer is a written number, so the answer kind only filters what goes to math-verify."""
    strict = False
    if report.well_formatted:
        boxed = plain_integer(after[0])
        strict = boxed == gold if boxed is not None else _matches(
            gold_text, _kind_filter(_parse("\\boxed{" + scientific_latex(after[0]) + "}"), answer_kind))
    lenient_parsed: list = []
    if strict:
        lenient, read = True, None
    else:
        text = _scientific_boxes(canonical_boxes(completion))
        read = lenient_integer(text)
        if read is not None:
            lenient = int(read) == gold
        else:
            lenient_parsed = _parse(text)
            lenient = _matches(gold_text, _kind_filter(lenient_parsed, answer_kind))
    extracted = after[-1] if after else read if read is not None else _extracted_text(lenient_parsed)
    return Grade(extracted_answer=extracted, correct_strict=strict, correct_lenient=lenient, format=report)


def _grade_choice(completion: str, gold_letter: str, report: FormatReport, region: str) -> Grade:
    """A multiple-choice grade: strict needs closed thinking, no truncation and a final `Answer: X` line that every
    answer stated after </think> agrees with (no hedging); lenient takes the last letter answer anywhere."""
    final = final_choice(region) if region and not report.truncated else None  # region "": thinking not closed
    formatted = final is not None and set(choice_answers(region)) == {final}
    strict = formatted and final == gold_letter
    answers = choice_answers(completion)
    extracted = answers[-1] if answers else None
    lenient = strict or extracted == gold_letter
    report = replace(report, well_formatted=formatted)
    return Grade(extracted_answer=extracted, correct_strict=strict, correct_lenient=lenient, format=report)


def grade_many(
    completions: Sequence[str],
    golds: Sequence[str | int | float],
    truncated: Sequence[bool] | None = None,
    think_in_prompt: bool = False,
    choice: bool = False,
    answer_format: str = "think_boxed",
    answer_kind: str = "math",
) -> list[Grade]:
    """Grade completions against their golds, pairwise (one gold per completion); choice for letter answers."""
    if truncated is None:
        truncated = [False] * len(completions)
    if not len(completions) == len(golds) == len(truncated):
        raise ValueError(
            f"grade_many: {len(completions)} completions, {len(golds)} golds, {len(truncated)} truncated flags"
        )
    return [
        grade(c, g, truncated=bool(t), think_in_prompt=think_in_prompt, choice=choice, answer_format=answer_format,
              answer_kind=answer_kind)
        for c, g, t in zip(completions, golds, truncated)
    ]
