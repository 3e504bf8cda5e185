"""Pure format checks of a completion: think tags, answer tags, \\boxed{} answers, truncation."""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# `\boxed{`, `\boxed {` and `\fbox{` all open a box; the content is read by brace matching below.
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_TAG = re.compile(r"<answer>.*?</answer>", re.DOTALL)


@dataclass(frozen=True)
class FormatReport:
    """What a completion's format looks like; the shared record behind format rewards and format metrics."""

    think_opened: bool  # "<think>" in completion, or the prompt ended with it
    think_closed: bool  # "</think>" present exactly once (after the opening, if any)
    answer_tag: bool  # "<answer>" ... "</answer>" present
    n_boxed: int  # number of \boxed{...} in the whole completion
    n_boxed_after_think: int  # number of \boxed{...} after "</think>"
    truncated: bool  # generation hit max tokens
    well_formatted: bool  # think_closed and n_boxed_after_think == 1 and not truncated


def _closing_brace(text: str, start: int) -> int:
    """Index of the brace closing the group that starts just after `start`, or -1 if it never closes."""
    depth = 1
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":  # an escaped character (\{, \}, \\) never opens or closes a group
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def boxed_contents(text: str) -> list[str]:
    """Balanced-brace contents of every top-level \\boxed{...} / \\fbox{...}; unclosed boxes are skipped."""
    # Regex alone cannot match nested braces (\boxed{\frac{1}{2}}), hence the hand-written scan.
    out: list[str] = []
    pos = 0
    while True:
        m = _BOX_OPEN.search(text, pos)
        if m is None:
            return out
        end = _closing_brace(text, m.end())
        if end < 0:  # e.g. cut off by truncation: not an answer
            return out
        out.append(text[m.end() : end].strip())
        pos = end + 1  # boxes nested inside this one are part of its content, not answers of their own


def canonical_boxes(text: str) -> str:
    """Rewrite every box opener (`\\boxed {`, `\\fbox{`) as `\\boxed{`, the one spelling math-verify reads."""
    return _BOX_OPEN.sub(lambda _m: "\\boxed{", text)


def answer_region(completion: str) -> str:
    """Text after the single "</think>", or "" when the completion does not close its thinking exactly once."""
    parts = completion.split(THINK_CLOSE)
    return parts[1] if len(parts) == 2 else ""


def _think_closed(completion: str) -> bool:
    """True when "</think>" occurs exactly once and no "<think>" opens after it (or twice)."""
    if completion.count(THINK_CLOSE) != 1:
        return False
    n_open = completion.count(THINK_OPEN)
    if n_open == 0:
        return True
    return n_open == 1 and completion.index(THINK_OPEN) < completion.index(THINK_CLOSE)


def format_report(completion: str, *, truncated: bool = False, think_in_prompt: bool = False) -> FormatReport:
    """Classify a completion's format; think_in_prompt for chat templates whose prompt ends with "<think>\\n"."""
    think_closed = _think_closed(completion)
    n_after = len(boxed_contents(answer_region(completion)))
    return FormatReport(
        think_opened=think_in_prompt or THINK_OPEN in completion,
        think_closed=think_closed,
        answer_tag=_ANSWER_TAG.search(completion) is not None,
        n_boxed=len(boxed_contents(completion)),
        n_boxed_after_think=n_after,
        truncated=bool(truncated),
        well_formatted=think_closed and n_after == 1 and not truncated,
    )
