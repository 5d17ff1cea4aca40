"""Markdown rows for the measurement record (docs/results/): each benchmark prints, after its own
lines, rows with the date, a machine note and the command that made them, pasteable as they are
into its docs/results page (whose leading columns are date | machine | command)."""

from __future__ import annotations

import datetime
import os
import shlex
import sys


def command() -> str:
    """The command line this benchmark was started with, as the docs write it."""
    return "`" + " ".join(["python", *map(shlex.quote, sys.argv)]) + "`"


def machine(threads: int | None = None) -> str:
    note = f"{os.cpu_count()} CPU cores"
    return note + (f", {threads} threads" if threads is not None else "")


def row(*cells: object) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def record(rows: list[list[object]], threads: int | None = None) -> None:
    """Print `rows` behind today's date, the machine note and the command, under a blank line."""
    print("\nMarkdown rows for docs/results (date | machine | command | ...):")
    for cells in rows:
        print(row(datetime.date.today().isoformat(), machine(threads), command(), *cells))
