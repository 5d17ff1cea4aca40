"""How the command-line tools end: an error a user can cause is one line on stderr and a
non-zero exit code, never a traceback. `one_line` is the single place an error becomes that line."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

from trashseg.atomic import DiskFullError

USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError, DiskFullError)

# A DataLoader worker re-raises the worker's error with its whole traceback as the message:
# "Caught ValueError in DataLoader worker process 0.\nOriginal Traceback ...\nValueError: <message>".
_WORKER_HEADER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")


def one_line(err: BaseException) -> str:
    """The error's own message on one line (the original one for an error raised in a DataLoader worker)."""
    text = str(err)
    if _WORKER_HEADER.match(text):
        name = type(err).__name__
        last = [line for line in text.splitlines() if line.startswith(f"{name}: ") or line == name]
        text = last[-1].removeprefix(f"{name}: ") if last else text.splitlines()[0]
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines) if lines else type(err).__name__


def report(err: BaseException) -> None:
    print(f"error: {one_line(err)}", file=sys.stderr)


def run_or_report(action: Callable[[], str | None], error_code: int = 1) -> int:
    """Run `action`; print the message it returns (exit 0) or the error as one line (exit `error_code`)."""
    try:
        message = action()
    except USER_ERRORS as err:
        report(err)
        return error_code
    if message:
        print(message)
    return 0
