"""The store's markdown report split into text and image pieces, so each image path can be checked first."""

from __future__ import annotations

import re

_IMAGE = re.compile(r"!\[([^\]]*)\]\(\s*<?([^)>\s]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def split_images(markdown: str) -> list[tuple[str, str, str]]:
    """Pieces of a markdown text: ("text", chunk, "") and ("image", alt, target) in order.

    The app draws images itself: markdown images would make the browser fetch arbitrary URLs."""
    out: list[tuple[str, str, str]] = []
    pos = 0
    for m in _IMAGE.finditer(markdown):
        if m.start() > pos:
            out.append(("text", markdown[pos:m.start()], ""))
        out.append(("image", m.group(1), m.group(2)))
        pos = m.end()
    if pos < len(markdown):
        out.append(("text", markdown[pos:], ""))
    return out


def is_remote(target: str) -> bool:
    """Whether an image target is a URL (http:, data:, file:, ...) rather than a path in the store."""
    return bool(_REMOTE.match(target))
