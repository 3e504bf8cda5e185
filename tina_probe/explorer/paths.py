"""Path safety for the explorer: every file it opens must resolve inside the results folder."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from tina_probe.errors import TinaError


@dataclass(frozen=True)
class AppArgs:
    """The explorer's command-line arguments (after streamlit's `--`)."""

    out: Path  # the results folder: the only tree the app may read
    store: str  # an optional sub-store inside `out` ("" for `out` itself)


def parse_app_args(argv: list[str]) -> AppArgs:
    """Read `--out DIR` and `--store SUB` from argv, ignoring anything else (pytest's or streamlit's own)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--out", default="results")
    parser.add_argument("--store", default="")
    known, _ = parser.parse_known_args(argv)
    return AppArgs(out=Path(known.out).expanduser().resolve(), store=str(known.store or ""))


def resolve_inside(root: Path | str, rel: str | Path) -> Path:
    """Resolve `rel` below `root` (following symlinks) and refuse absolute paths or any that land outside."""
    root_r = Path(root).resolve()
    text = str(rel)
    if "\x00" in text:
        raise TinaError(f"{text!r}: refused: not a valid path")
    if Path(text).is_absolute() or text.startswith("~"):
        raise TinaError(f"{text}: refused: absolute paths are not allowed; name a path inside {root_r}")
    target = (root_r / text).resolve()
    if target != root_r and root_r not in target.parents:
        raise TinaError(f"{text}: refused: it resolves outside the results folder {root_r}")
    return target


def store_dir(root: Path | str, sub: str | None) -> Path:
    """The store folder the app reads: `root` itself, or a sub-folder of it named by `--store` / `?store=`."""
    if not sub:
        return Path(root).resolve()
    return resolve_inside(root, sub)


def safe_name(text: str) -> str:
    """A file-name-safe slug for download names built from run names and metrics."""
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(text)).strip("._")
    return slug[:120] or "table"
