"""Plain-integer answers graded without math-verify, only where math-verify's own reading is certain.

math-verify parses every completion (0.05-0.15 ms a lab completion in benchmarks/bench_study.py, more for long
LaTeX; ~10-25x the integer path). A lab answer is a plain integer; where the gold and the answer the grader would read
are both plain integers, equality of the two integers is math-verify's verdict. The shapes below are narrow on
purpose: each one is a text where math-verify's extraction (math_verify.parser: its regexes by priority, rightmost
match first) can only pick that one number; anything else goes to math-verify, which stays the reference
(tests/test_integer_answers.py checks they agree).
"""

from __future__ import annotations

import re

# A plain integer as math-verify reads it exactly: ASCII digits, an optional sign, at most 15 digits (it compares
# integers exactly, but a short bound keeps every case inside what the agreement test covers).
_INTEGER = re.compile(r"[+-]?[0-9]{1,15}")
# ...and in running text without a box: no "+" (math-verify's number pattern has none) and no leading zeros
# (math-verify reports "007" as "7", so the extracted text would differ).
_BARE_INTEGER = r"-?(?:0|[1-9][0-9]{0,14})"
# The lab's unformatted ending "The answer is 20." as the completion's last line.
_ANSWER_IS = re.compile(r"(?:^|\n)The answer is (" + _BARE_INTEGER + r")\.?\Z")
BOX = "\\boxed{"


def plain_integer(text: str) -> int | None:
    """The integer a text is (sign, ASCII digits, surrounding whitespace), else None."""
    text = text.strip()
    return int(text) if _INTEGER.fullmatch(text) else None


def _no_other_reading(text: str, backslashes: int) -> bool:
    """No LaTeX environment, fraction or anchored phrase that math-verify ranks at or above the shape's own match:
    no `$`, no `[`, no backslash beyond the shape's own, no "final answer" / "I hope" phrasing; ASCII only, so
    math-verify's case-insensitive patterns cannot match a Unicode look-alike."""
    return (text.isascii() and "$" not in text and "[" not in text and text.count("\\") == backslashes
            and "I hope" not in text and "final answer" not in text.lower())


def lone_box_integer(text: str) -> str | None:
    """The content of the text's only `\\boxed{...}` when it is a plain integer and math-verify can read nothing
    else first (no braces after the box, no other LaTeX); else None. `text` has canonical box openers."""
    if text.count(BOX) != 1 or not _no_other_reading(text, backslashes=1):
        return None
    start = text.index(BOX) + len(BOX)
    end = text.find("}", start)
    if end < 0 or "{" in text[end + 1:] or "}" in text[end + 1:]:
        return None
    content = text[start:end].strip()
    return content if plain_integer(content) is not None else None


def answer_is_integer(text: str) -> str | None:
    """N when the text ends with the line "The answer is N." (N a plain integer), says "answer" nowhere else and holds
    no box or LaTeX; math-verify's "answer ... N" pattern then reads exactly N. Else None."""
    if text.lower().count("answer") != 1 or not _no_other_reading(text, backslashes=0):
        return None
    m = _ANSWER_IS.search(text)
    return m.group(1) if m else None


def lenient_integer(text: str) -> str | None:
    """The plain-integer answer math-verify's lenient extraction would read from the text (canonical box openers),
    where one of the certain shapes holds; None where only math-verify can tell."""
    return lone_box_integer(text) or answer_is_integer(text)
