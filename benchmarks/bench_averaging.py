"""Weight averaging side by side in one run: the same quickstart training without averaging, with
averaging=ema and with averaging=swa (same seed, data and schedule), and the val mIoU each one's
validation (of the averaged weights, for ema / swa) reports after every epoch.

    python benchmarks/bench_averaging.py [--epochs 12] [--train 300] [--size 128] [--decay 0.99] [--swa-start 0.5]

The defaults are the quickstart's own data and length (several CPU minutes per run); a quick check:
--epochs 3 --train 48 --size 64.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def train(work: Path, name: str, args: argparse.Namespace, *overrides: str) -> tuple[pd.Series, float]:
    """Val mIoU by epoch (the last validation of each) and the run's wall seconds."""
    run = work / name
    # data=synthetic: generated into its own data.root (only the default data/synthetic is generated otherwise)
    command = [sys.executable, "train.py", "experiment=quickstart", "data=synthetic", "logger=csv", "trainer.enable_progress_bar=false",
               f"trainer.max_epochs={args.epochs}", f"data.root={work / 'data'}", f"data.synthetic.n_train={args.train}",
               f"data.synthetic.n_val={args.val}", f"data.synthetic.size={args.size}", f"seed={args.seed}",
               f"hydra.run.dir={run}", *overrides]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    val = pd.read_csv(run / "metrics.csv").dropna(subset=["val/mIoU"]).groupby("epoch")["val/mIoU"].last()
    return val, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train", type=int, default=300, help="synthetic training images")
    parser.add_argument("--val", type=int, default=60, help="synthetic validation images")
    parser.add_argument("--size", type=int, default=128, help="synthetic image size")
    parser.add_argument("--decay", type=float, default=0.99, help="EMA decay (per optimizer step)")
    parser.add_argument("--swa-start", type=float, default=0.5, help="SWA: fraction of the epochs before averaging")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    variants = {"none": [], f"ema {args.decay}": ["averaging=ema", f"averaging.decay={args.decay}"],
                f"swa from {args.swa_start}": ["averaging=swa", f"averaging.swa_epoch_start={args.swa_start}"]}
    curves, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, overrides) in enumerate(variants.items()):
            curves[name], seconds = train(Path(tmp), f"run{i}", args, *overrides)
            rows.append({"averaging": name, "best val mIoU": curves[name].max(), "final val mIoU": curves[name].iloc[-1],
                         "seconds": round(seconds)})
    print(f"quickstart, {args.epochs} epochs, synthetic {args.train} train / {args.val} val images at {args.size} px, "
          f"seed {args.seed}")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))
    print("\nval mIoU by epoch:")
    print(pd.DataFrame(curves).rename_axis("epoch").to_markdown(floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
