"""The CPU-recipe ablation on ../shared/data/trashcan (train -> val): each row is the same
experiment with a few levers changed, trained for the same number of epochs (the same step
budget; wall time is printed but not the budget, since shared machines vary), then the best
val mIoU, the IoU of each trash class and how many trash classes pass 0.05 IoU.

    python benchmarks/cpu_recipe_trashcan.py [--epochs N] [--rows 0,4,5] [--base experiment=cpu_recipe] [OVERRIDE ...]

Rows append to benchmarks/results/cpu_recipe/results.jsonl, so the table can be built in
several sittings (`--table` prints it without training).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
TRASHCAN = REPO.parent / "shared" / "data" / "trashcan"
RESULTS = REPO / "benchmarks" / "results" / "cpu_recipe"
COMMON = ["trainer.enable_progress_bar=false", "trainer.max_time=null", "++trainer.val_check_interval=1.0",
          "data.num_workers=2"]
WHOLE_FRAMES = ["augment=trashcan"]  # 180x240 frames instead of object crops
# The 180x240 recipe (experiment=cpu_recipe until 2026-12-01): 128x128 object crops, full class weights.
RECIPE_180 = ["augment=trashcan_object_crops", "loss=ce_dice_balanced"]
# Each row: overrides on top of --base (default: the recommended recipe, experiment=cpu_recipe). Rows 0-7
# were measured at --epochs 4 (500 steps of 180x240 crops), rows 8-9 at --epochs 16 (2,000 steps of
# quarter-scale crops: about the same arithmetic).
ROWS = {
    "ce, whole frames, constant lr": ["loss=ce", "scheduler=constant", *WHOLE_FRAMES],  # trashcan_curve's levers
    "ce_dice, whole frames": ["loss=ce_dice", *WHOLE_FRAMES],
    "weighted ce_dice, whole frames": ["loss=ce_dice_balanced", *WHOLE_FRAMES],
    "ce_dice, object crops": ["loss=ce_dice", "augment=trashcan_object_crops"],
    "180x240 recipe (weighted ce_dice, object crops)": RECIPE_180,
    "180x240 recipe + copy-paste (rare)": [*RECIPE_180, "+augment/copy_paste=rare"],
    "180x240 recipe + class-balanced sampling": [*RECIPE_180, "data.sampler=class_balanced", "data.repeat_threshold=0.3"],
    "180x240 recipe + EMA (decay 0.99)": [*RECIPE_180, "averaging=ema", "averaging.decay=0.99"],  # a ~100-step horizon
    "quarter-scale crops, weighted ce_dice": ["loss=ce_dice_balanced"],
    "cpu_recipe: quarter-scale crops, mild weights": [],
}
TRASH = ["General trash", "Paper", "Metal", "Glass", "Plastic", "Clothing"]  # the classes TrashCan has


def train(run_dir: Path, base: str, epochs: int | None, overrides: list[str]) -> float:
    start = time.perf_counter()
    length = [] if epochs is None else [f"trainer.max_epochs={epochs}"]
    subprocess.run([sys.executable, "train.py", base, *COMMON, *length, f"hydra.run.dir={run_dir}", *overrides],
                   cwd=REPO, check=True)
    return time.perf_counter() - start


def best_row(metrics_csv: Path) -> dict:
    val = pd.read_csv(metrics_csv).dropna(subset=["val/mIoU"])
    best = val.loc[val["val/mIoU"].idxmax()]
    iou = {c: float(best.get(f"val/IoU/{c}", float("nan"))) for c in ["Background", *TRASH]}
    return {"val mIoU": float(best["val/mIoU"]), "epoch": int(best["epoch"]) + 1, "steps": int(best["step"]) + 1,
            "trash > 0.05": sum(iou[c] > 0.05 for c in TRASH), **iou}


def table() -> str:
    rows = [json.loads(line) for line in (RESULTS / "results.jsonl").read_text().splitlines() if line.strip()]
    frame = pd.DataFrame(rows).drop(columns=["run_dir", "overrides"])
    return frame.to_markdown(index=False, floatfmt=".3f")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="epochs per row (the poly schedule is sized to them); default: "
                        "the base experiment's own (cpu_recipe: 16)")
    parser.add_argument("--rows", default=",".join(map(str, range(len(ROWS)))),
                        help="comma-separated row numbers: " + "; ".join(f"{i} {name}" for i, name in enumerate(ROWS)))
    parser.add_argument("--base", default="experiment=cpu_recipe", help="the experiment every row starts from")
    parser.add_argument("--table", action="store_true", help="print the table of the rows run so far and stop")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added to every row")
    args = parser.parse_args()
    if args.table:
        print(table())
        return
    if not TRASHCAN.is_dir():
        sys.exit(f"error: {TRASHCAN} not found; the ablation needs the TrashCan data")
    names = list(ROWS)
    picked = [r.strip() for r in args.rows.split(",")]
    if not all(r.isdigit() and int(r) < len(names) for r in picked):
        sys.exit(f"error: --rows takes row numbers 0..{len(names) - 1}; got {args.rows!r}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in (names[int(r)] for r in picked):
        run_dir = RESULTS / time.strftime("%Y-%m-%d_%H-%M-%S")
        overrides = ROWS[name] + args.overrides
        seconds = train(run_dir, args.base, args.epochs, overrides)
        row = {"row": name, "base": args.base, "epochs": args.epochs or "the base's", **best_row(run_dir / "metrics.csv"), "wall min": seconds / 60,
               "run_dir": str(run_dir.relative_to(REPO)), "overrides": overrides}
        with open(RESULTS / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{name}: val mIoU {row['val mIoU']:.3f}, {row['trash > 0.05']} trash classes > 0.05, "
              f"{seconds / 60:.1f} min", flush=True)
    print(table())


if __name__ == "__main__":
    main()
