"""Run a script with a fault injected at a chosen point, deterministically (no sleeping).

    FAULT=<point>:<n>[:<signal>] python tests/faults/inject.py train.py key=value ...

Points, counted from the start of this process (signal KILL unless given, e.g. INT for Ctrl-C):
  step:N     before the N-th training step
  fsync:N:PATTERN   at the N-th fsync of a file whose name contains PATTERN; the file is first cut to
             half its size, as if the kill had come in the middle of writing it
  replaced:N:PATTERN just after the N-th rename onto a file whose name is PATTERN (the file is complete,
             nothing after it has run)
  npsave:N   at the N-th numpy.save (probability files)
  row:N      at the N-th submission row
The test-only code lives here; the package has no hook for it.
"""

import os
import runpy
import signal
import sys


def _parse():
    point, n, *rest = os.environ["FAULT"].split(":")
    sig = signal.SIGKILL
    if rest and rest[-1] in ("INT", "KILL", "TERM"):
        sig = getattr(signal, "SIG" + rest.pop())
    return point, int(n), (rest[0] if rest else ""), sig


def _at_nth_call(owner, name, n, sig, before=None, match=lambda *a: True):
    original = getattr(owner, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        if match(*args):
            calls["n"] += 1
            if calls["n"] == n:
                if before is not None:
                    before(*args)
                os.kill(os.getpid(), sig)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def _after_nth_replace(n, name, sig):
    original, calls = os.replace, {"n": 0}

    def replace(src, dst, *args, **kwargs):
        result = original(src, dst, *args, **kwargs)
        if os.path.basename(os.fspath(dst)) == name:
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), sig)
        return result

    os.replace = replace


def _fd_path(fd) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _cut_to_half(fd) -> None:
    os.ftruncate(fd, os.fstat(fd).st_size // 2)


def as_from_a_terminal(sig) -> None:
    """Ctrl-C reaches a program started from a terminal as KeyboardInterrupt. A process started in
    the background of a shell without job control (`pytest ... &` in a script, CI) inherits SIGINT
    ignored, and Python then installs no handler: the injected Ctrl-C was lost and the run went on
    to its end with exit 0. Give this process the handler a terminal start gives it."""
    if sig == signal.SIGINT and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def install() -> None:
    point, n, pattern, sig = _parse()
    as_from_a_terminal(sig)
    if point == "step":
        from trashseg.training.module import SegmentationModule

        _at_nth_call(SegmentationModule, "training_step", n, sig)
    elif point == "fsync":
        _at_nth_call(os, "fsync", n, sig, before=_cut_to_half,
                     match=lambda fd: os.path.isfile(_fd_path(fd)) and pattern in os.path.basename(_fd_path(fd)))
    elif point == "replaced":
        _after_nth_replace(n, pattern, sig)
    elif point == "npsave":
        import numpy

        _at_nth_call(numpy, "save", n, sig)
    elif point == "row":
        from trashseg.submission.csv_format import SubmissionWriter

        _at_nth_call(SubmissionWriter, "write", n, sig)
    else:
        raise SystemExit(f"unknown fault point {point!r}")


if __name__ == "__main__":
    install()
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
    runpy.run_path(sys.argv[0], run_name="__main__")
