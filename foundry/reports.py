"""Report files people read (compare, bench-variants, sweeps): Markdown tables and whole-file writes.

A report is written beside earlier ones and often re-generated into the same folder, so each
file goes through a temporary name and `os.replace`: a reader (or a CI job collecting
artifacts) sees the previous report or the new one, never half of one.
"""

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from foundry import temporaries


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporaries.beside(path)   # hidden, in the same folder: the rename never crosses filesystems
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_json(path: Path, document: Any) -> Path:
    return write_text(path, json.dumps(document, indent=2) + "\n")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[bool] | None = None) -> str:
    """A GitHub-flavoured table; `|` in cells is escaped so a label cannot break a row."""
    align = right or [False] * len(headers)
    lines = [
        "| " + " | ".join(_cell(header) for header in headers) + " |",
        "| " + " | ".join("---:" if flag else "---" for flag in align) + " |",
    ]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def number(value: float | None, *, signed: bool = False) -> str:
    """Four significant digits: small deltas and large throughputs both stay readable."""
    if value is None:
        return "—"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[bool]) -> None:
    """The same table on standard output: boxed on a terminal, unwrapped up to 240 columns in a pipe or a CI log."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for header, flag in zip(headers, right, strict=True):
        table.add_column(header, justify="right" if flag else "left")
    for row in rows:
        table.add_row(*row)
    Console(highlight=False, width=None if sys.stdout.isatty() else 240).print(table)
