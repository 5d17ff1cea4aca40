"""Training benchmarks, each side by side in one run.

1. Quickstart wall time: `python train.py experiment=quickstart` from launch until
   metrics.csv first shows val/mIoU >= 0.5 (synthetic data generated beforehand).
2. Loop overhead: seconds per step inside Lightning (the module and trainer of train.py,
   a loader that hands over one fixed batch) against a bare forward/backward/optimizer step
   of the same model and batch in the same process; ratio Lightning / bare.

    python benchmarks/bench_training.py [--skip-quickstart] [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader, Dataset

from trashseg.data.synthetic import generate_dataset
from trashseg.training.module import SegmentationModule
from trashseg.training.optimization.optimizer import build_optimizer
from trashseg.training.run_config import plain_config
from markdown_row import record

REPO = Path(__file__).resolve().parents[1]


def quickstart_config() -> dict:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return plain_config(compose(config_name="train", overrides=["experiment=quickstart", "logger=csv"]))


def quickstart_seconds(timeout: float = 900) -> tuple[float | None, float, float]:
    """(seconds to val/mIoU >= 0.5 or None, best mIoU, total seconds)."""
    data = REPO / "data" / "synthetic"
    if not (data / "train.json").exists():  # generated beforehand, as the quickstart's config makes it (300 train images)
        generate_dataset(data, **{k: v for k, v in quickstart_config()["data"]["synthetic"].items() if k != "root"})
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "train.py", "experiment=quickstart", "logger=csv",
                                 "trainer.enable_progress_bar=false", f"hydra.run.dir={run}"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        reached, best = None, 0.0
        while proc.poll() is None and time.perf_counter() - start < timeout:
            time.sleep(0.5)
            metrics = run / "metrics.csv"
            if metrics.exists() and reached is None:
                try:
                    val = pd.read_csv(metrics).get("val/mIoU", pd.Series(dtype=float)).dropna()
                except (pd.errors.EmptyDataError, pd.errors.ParserError):
                    continue
                if len(val) and val.max() >= 0.5:
                    reached = time.perf_counter() - start
        proc.wait()
        total = time.perf_counter() - start
        best = pd.read_csv(run / "metrics.csv")["val/mIoU"].max()
    return reached, float(best), total


class OneBatch(Dataset):
    def __init__(self, batch: dict, steps: int):
        self.batch, self.steps = batch, steps

    def __len__(self):
        return self.steps

    def __getitem__(self, i):
        return self.batch


def loop_overhead(steps: int) -> tuple[float, float]:
    cfg = quickstart_config()
    batch = {"image": torch.randint(0, 255, (16, 3, 128, 128), dtype=torch.uint8),
             "mask": torch.randint(0, 11, (16, 128, 128), dtype=torch.uint8)}

    def bare() -> float:
        torch.manual_seed(0)
        module = SegmentationModule(cfg).train()
        optimizer = build_optimizer(module.model, cfg["optimizer"])
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            loss = module._loss(module(batch["image"]), batch["mask"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        return statistics.median(times[3:])

    def lightning() -> float:
        torch.manual_seed(0)
        module = SegmentationModule(cfg)
        times: list[float] = []

        class Timer(L.Callback):
            def on_train_batch_start(self, *args):
                self.start = time.perf_counter()

            def on_train_batch_end(self, *args):
                times.append(time.perf_counter() - self.start)

        with tempfile.TemporaryDirectory() as tmp:
            loader = DataLoader(OneBatch(batch, steps), batch_size=None)
            trainer = L.Trainer(**{**cfg["trainer"], "max_epochs": 1, "enable_progress_bar": False, "limit_val_batches": 0},
                                default_root_dir=tmp, logger=L.pytorch.loggers.CSVLogger(tmp),
                                callbacks=[Timer()], enable_checkpointing=False)
            trainer.fit(module, train_dataloaders=loader)
        return statistics.median(times[3:])

    bare_s, lightning_s = [], []
    for _ in range(2):  # alternate, so machine noise hits both
        bare_s.append(bare())
        lightning_s.append(lightning())
    return min(bare_s), min(lightning_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-quickstart", action="store_true")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} CPU threads")
    bare, inside = loop_overhead(args.steps)
    print(f"loop overhead (unet_tiny, batch 16 x 128 px): bare {1000 * bare:.0f} ms/step, "
          f"inside Lightning {1000 * inside:.0f} ms/step, ratio {inside / bare:.3f}x")
    if not args.skip_quickstart:
        reached, best, total = quickstart_seconds()
        when = f"{reached:.0f} s" if reached is not None else "not reached"
        print(f"quickstart: val mIoU >= 0.5 after {when}; best val mIoU {best:.3f}; whole run {total:.0f} s")
    # docs/results/training_loop.md: date | machine | command | what | figure
    rows = [["loop overhead (unet_tiny, batch 16 x 128 px)", f"{1000 * inside:.0f} ms/step inside Lightning vs "
             f"{1000 * bare:.0f} ms bare: **{inside / bare:.3f}x**"]]
    if not args.skip_quickstart:
        rows.insert(0, ["quickstart (`train.py experiment=quickstart`)",
                        f"val mIoU >= 0.5 after **{when}**; best val mIoU {best:.3f}, {total:.0f} s in all"])
    record(rows, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
