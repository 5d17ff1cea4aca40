"""Shared fixtures: the real sample data (skipped when absent) and a tiny synthetic dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TRASHSEG_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True, scope="session")
def _isolated_caches(tmp_path_factory):
    """Tests never touch the user's mask cache or W&B folders, and W&B never goes online."""
    os.environ["TRASHSEG_CACHE"] = str(tmp_path_factory.mktemp("mask_cache"))
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_DIR"] = str(tmp_path_factory.mktemp("wandb"))
    os.environ.setdefault("WANDB_SILENT", "true")
    # pytest -n 2 on 2 cores: a second intra-op thread per worker only spins (tiny steps ~30x slower)
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """With two pytest workers on two cores, two torch threads each make tiny training steps many
    times slower; modules that train in-process ask for one (pytest.mark.usefixtures)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set TRASHSEG_SHARED_DATA); skipping")
    return SHARED_DATA


@pytest.fixture(scope="session")
def recycle_sample(shared_data) -> Path:
    return shared_data / "recycle-sample"


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: runs jobs on a one-node SLURM cluster this pytest worker starts "
                                       "(tests/slurm_cluster.py); skipped where SLURM is not installed, except under CI=true")


@pytest.fixture(scope="session")
def slurm_cluster():
    """A one-node SLURM cluster of this pytest worker's own (config, ports, munge, accounting), stopped at the end."""
    from slurm_cluster import SlurmCluster, unavailable

    if reason := unavailable():
        if os.environ.get("CI") == "true":  # CI installs SLURM (.ci/run): its absence there is a failure
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    try:
        cluster = SlurmCluster().start()
    except RuntimeError:  # a daemon that did not come up (a free port taken before it bound it): once more, fresh
        cluster = SlurmCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic dataset in the competition layout: 64 px, 24 train / 10 val / 6 test."""
    from trashseg.data.synthetic import generate_dataset

    return generate_dataset(tmp_path_factory.mktemp("synthetic") / "data", n_train=24, n_val=10, n_test=6, size=64, seed=0)
