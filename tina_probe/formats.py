"""Pure format checks of a completion: think tags, answer tags, \\boxed{} answers, truncation."""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# The rewarded answer formats. think_boxed (the default, R1's): thinking closed once by </think>, then one \boxed{}.
# boxed (the DeepSeek-R1 / Qwen2.5-Math evaluation prompt, "put your final answer within \boxed{}"): one \boxed{}
# answer, thinking tags optional (but closed when opened), for bases that never write tags.
ANSWER_FORMATS = ("think_boxed", "boxed")

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
    well_formatted: bool  # think_closed and n_boxed_after_think == 1, that box not empty, and not truncated
    #                       (think_boxed); boxed: the same but thinking may be absent


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


def check_answer_format(answer_format: str, where: str = "answer_format") -> str:
    """The answer format's name, or a TinaError naming `where` and the known formats."""
    if answer_format not in ANSWER_FORMATS:
        from tina_probe.errors import TinaError

        raise TinaError(f"{where}: unknown answer format {answer_format!r} (known: {', '.join(ANSWER_FORMATS)})")
    return answer_format


def answer_region(completion: str, answer_format: str = "think_boxed") -> str:
    """Text after the single "</think>", or "" when the completion does not close its thinking exactly once; in the
    boxed format a completion without any thinking tag is all answer region."""
    parts = completion.split(THINK_CLOSE)
    if len(parts) == 2:
        return parts[1]
    if answer_format == "boxed" and len(parts) == 1 and THINK_OPEN not in completion:
        return completion
    return ""


def thinking_required(completion: str, think_in_prompt: bool, answer_format: str) -> bool:
    """Whether thinking must be closed: always in think_boxed; in boxed wherever the completion or its prompt
    opened (or closed) it."""
    return answer_format == "think_boxed" or think_in_prompt or THINK_OPEN in completion or THINK_CLOSE in completion


def final_region(completion: str, *, think_in_prompt: bool = False, answer_format: str = "think_boxed") -> str:
    """Where the final answer must be for the format: after the single </think>, or the whole completion in the
    boxed format when no thinking was opened; "" when there is no such place."""
    return answer_region(completion, "think_boxed" if thinking_required(completion, think_in_prompt, answer_format)
                         else answer_format)


def _think_closed(completion: str) -> bool:
    """True when "</think>" occurs exactly once and no "<think>" opens after it (or twice)."""
    if completion.count(THINK_CLOSE) != 1:
        return False
    n_open = completion.count(THINK_OPEN)
    if n_open == 0:
        return True
    return n_open == 1 and completion.index(THINK_OPEN) < completion.index(THINK_CLOSE)


def format_report(completion: str, *, truncated: bool = False, think_in_prompt: bool = False,
                  answer_format: str = "think_boxed") -> FormatReport:
    """Classify a completion's format; think_in_prompt for chat templates whose prompt ends with "<think>\\n";
    answer_format one of ANSWER_FORMATS (what well_formatted asks)."""
    think_closed = _think_closed(completion)
    tagged = thinking_required(completion, think_in_prompt, answer_format)
    after = boxed_contents(final_region(completion, think_in_prompt=think_in_prompt, answer_format=answer_format))
    n_after = len(after)
    # An empty \boxed{} states no answer: a real run learned "7 + 5 = \boxed{}." when the format reward paid it.
    answered = n_after == 1 and after[0].strip() != ""
    return FormatReport(
        think_opened=think_in_prompt or THINK_OPEN in completion,
        think_closed=think_closed,
        answer_tag=_ANSWER_TAG.search(completion) is not None,
        n_boxed=len(boxed_contents(completion)),
        n_boxed_after_think=n_after,
        truncated=bool(truncated),
        well_formatted=(think_closed or not tagged) and answered and not truncated,
    )
