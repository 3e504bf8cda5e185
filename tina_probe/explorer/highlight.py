"""Completion text as safe HTML with its format parts colored: <think>, </think>, <answer> tags and \\boxed{...}."""

from __future__ import annotations

import re

_PARTS = re.compile(r"<think>|</think>|<answer>|</answer>|\\(?:boxed|fbox)\s*\{")
COLORS = {  # part -> (text color, background)
    "think_open": ("#1f4e9e", "#dbe7fb"),
    "think_close": ("#1f4e9e", "#dbe7fb"),
    "answer_tag": ("#6b3fa0", "#ece2f7"),
    "boxed": ("#0b6b2f", "#d6f2df"),
}
_KIND = {"<think>": "think_open", "</think>": "think_close", "<answer>": "answer_tag", "</answer>": "answer_tag"}


def _brace_end(text: str, start: int) -> int:
    """Index just past the brace that closes the group opened before `start`, or -1 when it never closes."""
    depth, i = 1, start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        depth += (ch == "{") - (ch == "}")
        if depth == 0:
            return i + 1
        i += 1
    return -1


def segments(text: str) -> list[tuple[str, str]]:
    """Split a completion into (part, text) pieces; part is "text" or one of COLORS' keys.

    An unclosed \\boxed{ (e.g. cut by truncation) stays plain text, as the graders read it."""
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _PARTS.finditer(text):
        if m.start() < pos:  # inside a box already emitted
            continue
        token = m.group(0)
        if token in _KIND:
            end, part = m.end(), _KIND[token]
        else:
            end, part = _brace_end(text, m.end()), "boxed"
            if end < 0:
                continue
        if m.start() > pos:
            out.append(("text", text[pos:m.start()]))
        out.append((part, text[m.start():end]))
        pos = end
    if pos < len(text):
        out.append(("text", text[pos:]))
    return out


def escape(text: str) -> str:
    """Escape text for HTML inside Streamlit markdown: every ASCII punctuation mark becomes a numeric entity.

    html.escape alone is not enough: markdown would still read *, _, `, $ (LaTeX), [ ] and backslashes."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append("<br>")
        elif ch.isascii() and not ch.isalnum() and ch != " ":
            out.append(f"&#{ord(ch)};")
        else:
            out.append(ch)
    return "".join(out)


def completion_html(text: str) -> str:
    """One completion as an HTML block with its format parts colored and everything else escaped."""
    pieces = []
    for part, chunk in segments(str(text)):
        if part == "text":
            pieces.append(escape(chunk))
        else:
            fg, bg = COLORS[part]
            pieces.append(f'<span class="tp-{part}" style="color:{fg};background:{bg};border-radius:3px;'
                          f'padding:0 2px;font-weight:600">{escape(chunk)}</span>')
    body = "".join(pieces) or "<i>(empty completion)</i>"
    return ('<div class="tp-completion" style="font-family:monospace;white-space:pre-wrap;'
            f'border-left:3px solid #ccc;padding:4px 8px;margin:2px 0 12px 0">{body}</div>')


def mark(ok: bool) -> str:
    """A check or a cross for a grade."""
    return "✓" if bool(ok) else "✗"


def header_html(row: dict) -> str:
    """The line above a completion: problem, sample, strict/lenient marks, extracted answer, tokens."""
    strict, lenient = bool(row.get("correct_strict")), bool(row.get("correct_lenient"))
    color = "#0b6b2f" if strict else ("#a06800" if lenient else "#a01818")
    answer = row.get("extracted_answer")
    answer_txt = "none" if answer is None or answer != answer else str(answer)
    tokens = row.get("n_tokens")
    extra = f" · {int(tokens)} tokens" if tokens is not None and tokens == tokens else ""
    trunc = " · truncated" if bool(row.get("truncated", False)) else ""
    return (f'<div class="tp-header" style="color:{color}"><b>{escape(str(row.get("problem_id", "?")))}</b>'
            f' · sample {escape(str(row.get("sample_idx", "?")))} · strict {mark(strict)} · lenient {mark(lenient)}'
            f' · answer <code>{escape(answer_txt)}</code>{escape(extra)}{escape(trunc)}</div>')
