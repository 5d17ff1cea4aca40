"""Helpers of the fault-injection suite (imported by its tests as `faultlib`): real train.py / inference.py processes on the tiny
synthetic data, optionally with a fault injected by tests/faults/inject.py."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[2]
INJECT = Path(__file__).with_name("inject.py")

# The smallest useful run: 24 train images of 64 px in batches of 4 (6 steps an epoch), a shallow
# encoder, every step logged, deterministic kernels so runs can be compared bit for bit.
SMALL = ["experiment=quickstart", "data.num_workers=0", "data.batch_size=4", "data.val_batch_size=5", "logger=csv",
         "trainer.enable_progress_bar=false", "trainer.max_epochs=2", "trainer.deterministic=true",
         "trainer.log_every_n_steps=1", "trainer.num_sanity_val_steps=0", "+trainer.enable_model_summary=false",
         "model.encoder_depth=3", "model.decoder.decoder_channels=[16,8,8]"]


def run_script(script: str, *args: str, fault: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `script` (relative to the repository) in a fresh process; with `fault`, through inject.py."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")  # one thread: same numerics in every process
    env.pop("FAULT", None)
    if fault:
        env["FAULT"] = fault
    command = [sys.executable] + ([str(INJECT)] if fault else []) + [str(REPO / script), *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def killed(result: subprocess.CompletedProcess) -> bool:
    return result.returncode == -9


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"


class Runs:
    """train.py runs of one experiment under one runs_dir, each in a folder it names (hydra.run.dir);
    resume() continues the last one as a user continues a named run: its folder and resume=auto
    (a named folder is that run: a scratch folder would start a new run there)."""

    def __init__(self, root: Path, data: Path, extra: list[str]):
        self.root, self.data, self.extra = root, data, list(extra)
        self.count = 0
        self.last_run: str | None = None

    def train(self, run: str | None = None, *more: str, fault: str | None = None) -> subprocess.CompletedProcess:
        self.count += 1
        self.last_run = run or self.last_run
        run_dir = self.root / "runs" / "quickstart" / run if run else self.root / "scratch" / str(self.count)
        args = [*SMALL, *self.extra, f"data.root={self.data}", f"runs_dir={self.root / 'runs'}",
                f"hydra.run.dir={run_dir}", *more]
        return run_script("train.py", *args, fault=fault)

    def resume(self, fault: str | None = None) -> subprocess.CompletedProcess:
        return self.train(self.last_run, "resume=auto", fault=fault)


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp-" in p.name]


def assert_loadable_run(run_dir: Path) -> None:
    """What resume=auto would read is complete: a whole last.ckpt and a parseable metrics.csv."""
    last = run_dir / "checkpoints" / "last.ckpt"
    assert zipfile.is_zipfile(last), f"{last} is truncated"
    torch.load(last, map_location="cpu", weights_only=True)
    pd.read_csv(run_dir / "metrics.csv")


def val_epochs(run_dir: Path) -> list:
    table = pd.read_csv(run_dir / "metrics.csv")
    return table.dropna(subset=["val/mIoU"])[["epoch", "step"]].values.tolist()


def small_config(data_root: Path, runs_dir: Path, *overrides: str):
    """The SMALL run's config, composed in-process (for tests that call training.run.train)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="train",
                       overrides=[*SMALL, f"data.root={data_root}", f"runs_dir={runs_dir}", *overrides])
