"""Learning curve on ../shared/data/trashcan (train -> val): `experiment=bench/trashcan_curve`
(unet_tiny, CPU) for a fixed wall-time budget, then the val mIoU at each validation and the
per-class IoU of the best one, read back from the run's metrics.csv.

    python benchmarks/learning_curve_trashcan.py [--minutes 10] [--run-dir runs/trashcan_curve/bench_<time>] [OVERRIDE ...]

Extra arguments are Hydra overrides for train.py, e.g. `loss=ce_dice optimizer.lr=1e-3`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def train(run_dir: Path, minutes: float, overrides: list[str]) -> float:
    seconds = int(minutes * 60)  # Lightning's max_time is DD:HH:MM:SS
    budget = f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    start = time.perf_counter()
    subprocess.run([sys.executable, "train.py", "experiment=bench/trashcan_curve",
                    "trainer.enable_progress_bar=false", f"trainer.max_time={budget}",
                    f"hydra.run.dir={run_dir}", *overrides], cwd=REPO, check=True)
    return time.perf_counter() - start


def report(metrics_csv: Path) -> None:
    metrics = pd.read_csv(metrics_csv)
    val = metrics.dropna(subset=["val/mIoU"])
    print(val[["epoch", "step", "val/mIoU", "val/pixel_acc", "val/mIoU_per_image"]]
          .to_string(index=False, float_format="%.3f"))
    best = val.loc[val["val/mIoU"].idxmax()]
    print(f"best val mIoU {best['val/mIoU']:.3f} at epoch {int(best['epoch'])}, step {int(best['step'])}")
    per_class = best[[c for c in val.columns if c.startswith("val/IoU/")]]
    print(per_class.rename(lambda c: c.removeprefix("val/IoU/")).to_string(float_format="%.3f"))
    print("(NaN: class absent from both the val truth and the predictions)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--run-dir", type=Path,  # a fresh folder: an old metrics.csv would mix in
                        default=REPO / "runs" / "trashcan_curve" / time.strftime("bench_%Y-%m-%d_%H-%M-%S"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for train.py, e.g. loss=ce_dice")
    args = parser.parse_args()
    if not (REPO.parent / "shared" / "data" / "trashcan").is_dir():
        sys.exit("error: ../shared/data/trashcan not found; the curve needs the TrashCan data")
    seconds = train(args.run_dir.resolve(), args.minutes, args.overrides)
    print(f"trained for {seconds / 60:.1f} min wall time (budget {args.minutes:g} min)")
    report(args.run_dir / "metrics.csv")


if __name__ == "__main__":
    main()
