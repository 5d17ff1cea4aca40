"""How the command-line tools end: an error a user can cause is one line on stderr and a
non-zero exit code, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError)


def run_or_report(action: Callable[[], str | None], error_code: int = 1) -> int:
    """Run `action`; print the message it returns (exit 0) or the error (exit `error_code`)."""
    try:
        message = action()
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return error_code
    if message:
        print(message)
    return 0
