"""Fixtures of the fault-injection suite; helpers are in faultlib.py."""

import pytest

from faultlib import Runs


@pytest.fixture
def runs(tmp_path, synthetic_root):
    """runs(name, *overrides): a Runs with its own runs_dir under tmp_path/name."""
    return lambda name, *extra: Runs(tmp_path / name, synthetic_root, list(extra))
