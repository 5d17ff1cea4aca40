"""Fixtures of the fault-injection suite; helpers are in faultlib.py."""

import pytest
import torch

from faultlib import Runs, small_config


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One torch thread, as in the suite's child processes: with two pytest workers on two cores,
    two threads each make a tiny model's step up to 30x slower (and differ in the last bits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def runs(tmp_path, synthetic_root):
    """runs(name, *overrides): a Runs with its own runs_dir under tmp_path/name."""
    return lambda name, *extra: Runs(tmp_path / name, synthetic_root, list(extra))


@pytest.fixture(scope="session")
def one_epoch(synthetic_root, tmp_path_factory):
    """A finished one-epoch run folder, trained in this process (copy it before changing it)."""
    from trashseg.training.run import train

    runs = tmp_path_factory.mktemp("one_epoch_runs")
    train(small_config(synthetic_root, runs, "trainer.max_epochs=1"), runs / "quickstart" / "one")
    return runs / "quickstart" / "one"
