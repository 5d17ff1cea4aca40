"""The fault injector delivers what it promises however the test run was started: an injected
Ctrl-C is a KeyboardInterrupt even when the launcher left SIGINT ignored (a background job of a
shell without job control, as `pytest ... &` in a script or CI starts it)."""

import signal
import subprocess
import sys

import pytest

from faultlib import INJECT

SCRIPT = "import io, numpy\nnumpy.save(io.BytesIO(), 0)\nprint('went on after the Ctrl-C')\n"


def ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` without job control does


@pytest.mark.parametrize("launcher", [None, ignore_sigint], ids=["terminal", "background"])
def test_an_injected_ctrl_c_interrupts_however_the_run_was_started(tmp_path, launcher):
    script = tmp_path / "saves.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(INJECT), str(script)], env={"FAULT": "npsave:1:INT", "PATH": ""},
                          capture_output=True, text=True, preexec_fn=launcher, timeout=60)
    assert "went on" not in done.stdout, done.stdout
    assert done.returncode == -signal.SIGINT and "KeyboardInterrupt" in done.stderr, done.stderr
