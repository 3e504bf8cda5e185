"""Tables for people: a rich table on a terminal, a plain markdown table when output goes to a file or CI.

Rich squeezes tables to 80 columns when stdout is not a terminal, cutting run names and verdicts; a log reader
needs every cell whole, so off a terminal the same rows print as markdown.
"""
from __future__ import annotations

from typing import Sequence

from rich.console import Console


def plain_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table, every cell whole."""
    lines = [title, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]],
                console: Console | None = None) -> None:
    """Print rows as a rich table on a terminal, else as a plain markdown table (see the module docstring)."""
    from rich.table import Table

    console = console or Console()
    if console.is_terminal:
        table = Table(*columns, title=title)
        for row in rows:
            table.add_row(*(str(c) for c in row))
        console.print(table)
    else:
        print(plain_table(title, columns, rows) + "\n", flush=True)
