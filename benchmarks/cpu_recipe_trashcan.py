"""The CPU-recipe ablation on ../shared/data/trashcan (train -> val): each row is an experiment
with a few levers changed, trained for its own number of epochs (sized so the rows of a group
cost about the same wall time; wall time is printed, not enforced, since shared machines vary),
then the best val mIoU, the IoU of each trash class and how many trash classes pass 0.05 IoU.

    python benchmarks/cpu_recipe_trashcan.py [--rows 0,4,5] [--epochs N] [OVERRIDE ...]
    python benchmarks/cpu_recipe_trashcan.py --rows 9,15 --step-time 250   # training speed, side by side

Rows append to benchmarks/results/cpu_recipe/results.jsonl, so the table can be built in
several sittings (`--table` prints it without training).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from markdown_row import record

REPO = Path(__file__).resolve().parents[1]
TRASHCAN = REPO.parent / "shared" / "data" / "trashcan"
RESULTS = REPO / "benchmarks" / "results" / "cpu_recipe"
COMMON = ["trainer.enable_progress_bar=false", "trainer.max_time=null", "++trainer.val_check_interval=1.0",
          "data.num_workers=2"]
TINY = "experiment=cpu_recipe_unet_tiny"  # the recipe until 2026-12-01; cpu_recipe builds on it
WHOLE_FRAMES = ["augment=trashcan"]  # 180x240 frames instead of object crops
R180 = "experiment=bench/cpu_recipe_180"  # 128x128 object crops of 180x240 frames, full class weights
R10T = ["model=unet_resnet10t"]
RECIPE = "experiment=cpu_recipe"
PRE = "experiment=cpu_recipe_pretrained"  # Unet on ImageNet EfficientNet-Lite0 (installed package), 180x240
FAST = ["trainer.precision=bf16-mixed", "channels_last=true"]  # channels_last is cpu_recipe_pretrained's since 2026-12-04
FP32 = ["trainer.precision=32-true", "channels_last=false"]  # how rows 25-36 were measured


def scale(height: int, width: int, crop: int) -> list[str]:
    """Overrides of the object-crop augment: frames resized to height x width, train crops of crop x crop."""
    return [f"augment.{split}.0.params.{side}={size}" for split in ("train", "val") for side, size in
            (("height", height), ("width", width))] + [f"augment.train.1.params.{side}={crop}" for side in ("height", "width")]


# Each row: (experiment, epochs, overrides). Rows 0-7 are 500 steps of 180x240 crops; the quarter-scale
# rows 2,000 steps of unet_tiny or 2,500-3,250 of the other models (docs/results/cpu_recipe.md: their step costs).
ROWS = {
    "ce, whole frames, constant lr": (TINY, 4, ["loss=ce", "scheduler=constant", *WHOLE_FRAMES]),  # trashcan_curve's levers
    "ce_dice, whole frames": (TINY, 4, ["loss=ce_dice", *WHOLE_FRAMES]),
    "weighted ce_dice, whole frames": (TINY, 4, ["loss=ce_dice_balanced", *WHOLE_FRAMES]),
    "ce_dice, object crops": (TINY, 4, ["loss=ce_dice", "augment=trashcan_object_crops"]),
    "180x240 recipe (weighted ce_dice, object crops)": (R180, 4, []),
    "180x240 recipe + copy-paste (rare)": (R180, 4, ["+augment/copy_paste=rare"]),
    "180x240 recipe + class-balanced sampling": (R180, 4, ["data.sampler=class_balanced", "data.repeat_threshold=0.3"]),
    "180x240 recipe + EMA (decay 0.99)": (R180, 4, ["averaging=ema", "averaging.decay=0.99"]),  # a ~100-step horizon
    "quarter-scale crops, weighted ce_dice": (TINY, 16, ["loss=ce_dice_balanced"]),
    "unet_tiny: quarter-scale crops, mild weights": (TINY, 16, []),
    "unet_tiny + EMA (decay 0.995)": (TINY, 16, ["averaging=ema", "averaging.decay=0.995"]),
    "unet_tiny + class-balanced sampling": (TINY, 16, ["data.sampler=class_balanced", "data.repeat_threshold=0.3"]),
    "ResNet-10-T encoder": (TINY, 26, R10T),
    "ResNet-18 to stride 16, narrow decoder": (TINY, 24, ["model.encoder_depth=4", "model.decoder.decoder_channels=[64,32,16,16]"]),
    "ResNet-10-T + scale/colour jitter": (TINY, 26, [*R10T, "augment=trashcan_object_crops_small_strong"]),
    "cpu_recipe: ResNet-10-T + jitter + EMA (decay 0.995)": (RECIPE, 20, []),
    "cpu_recipe, 26 epochs": (RECIPE, 26, []),
    "cpu_recipe at 180x240 (64x64 crops)": (RECIPE, 20, [f"augment.{split}.0.params.{side}={size}" for split in ("train", "val")
                                                          for side, size in (("height", 180), ("width", 240))]),
    "cpu_recipe + 30% crops anywhere": (RECIPE, 20, ["augment=ablation/trashcan_object_crops_small_mixed"]),
    "cpu_recipe + copy-paste (Metal)": (RECIPE, 20, ["+augment/copy_paste=ablation/trashcan_metal"]),
    "cpu_recipe + Lovasz": (RECIPE, 20, ["loss=ablation/ce_dice_lovasz_balanced_mild"]),
    "cpu_recipe + Lovasz, seed 1": (RECIPE, 20, ["loss=ablation/ce_dice_lovasz_balanced_mild", "seed=1"]),
    "cpu_recipe + weight decay 0.05": (RECIPE, 20, ["optimizer.weight_decay=0.05"]),
    "cpu_recipe, lr 4e-3": (RECIPE, 20, ["optimizer.lr=4.0e-3"]),
    "cpu_recipe, lr 1e-3": (RECIPE, 20, ["optimizer.lr=1.0e-3"]),
    # From here: ImageNet weights (rows 25-): 500 steps of 128x128 crops cost about what 2,500 of 64x64 do.
    "pretrained: Lite0 Unet, 180x240, encoder lr x0.1": (PRE, 4, []),
    "Lite0 Unet from random init (same recipe)": (PRE, 4, ["model.pretrained=null"]),
    "pretrained, one lr for all (encoder x1)": (PRE, 4, ["optimizer.groups=[]"]),
    "pretrained, layer decay 0.7 (no encoder group)": (PRE, 4, ["optimizer.groups=[]", "optimizer.layer_decay=0.7"]),
    "pretrained + EMA (decay 0.99)": (PRE, 4, ["averaging=ema", "averaging.decay=0.99"]),
    "pretrained, mild class weights": (PRE, 4, ["loss=ce_dice_balanced_mild"]),
    "pretrained at 90x120 (64x64 crops, mild weights)": (PRE, 16, ["augment=trashcan_object_crops_small",
                                                                   "loss=ce_dice_balanced_mild"]),
    "pretrained, Lite2 encoder": (PRE, 3, ["model=unet_lite2"]),
    "pretrained, lr 2e-3": (PRE, 4, ["optimizer.lr=2.0e-3"]),
    "pretrained, lr 2e-3 + EMA (decay 0.99)": (PRE, 4, ["optimizer.lr=2.0e-3", "averaging=ema", "averaging.decay=0.99"]),
    "pretrained, batch 8 (1,000 steps, the same crops seen)": (PRE, 4, ["data.batch_size=8"]),
    "pretrained, encoder frozen for the first 125 steps": (PRE, 4, ["freeze_encoder_steps=125"]),
    # From here (rows 37-): the CPU path (docs/results/cpu_path.md); FAST is the fastest step measured on 2026-12-04.
    "pretrained, bf16 autocast + channels_last (same 500 steps)": (PRE, 4, FAST),
    "pretrained, bf16 + channels_last at 240x320 (160x160 crops)": (PRE, 4, [*FAST, *scale(240, 320, 160)]),
    "pretrained, bf16 + channels_last, 6 epochs (750 steps)": (PRE, 6, FAST),
    "pretrained, fp32 at 240x320 (160x160 crops)": (PRE, 4, [*FP32, *scale(240, 320, 160)]),
}
# Rows 25-36 were measured in fp32 with contiguous weights, before cpu_recipe_pretrained took channels_last.
for _name in list(ROWS)[25:37]:
    ROWS[_name] = (ROWS[_name][0], ROWS[_name][1], [*FP32, *ROWS[_name][2]])
TRASH = ["General trash", "Paper", "Metal", "Glass", "Plastic", "Clothing"]  # the classes TrashCan has


def train(run_dir: Path, experiment: str, epochs: int, overrides: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "train.py", experiment, *COMMON, f"trainer.max_epochs={epochs}",
                    f"hydra.run.dir={run_dir}", *overrides],
                   cwd=REPO, check=True)
    return time.perf_counter() - start


def step_seconds(experiment: str, overrides: list[str], steps: int) -> float:
    """Wall seconds of `steps` training steps of a row, start-up included, no validation."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "train.py", experiment, *COMMON, f"++trainer.max_steps={steps}",
                               "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", f"hydra.run.dir={tmp}",
                               *overrides], cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        sys.exit(f"error: train.py {experiment} {' '.join(overrides)} failed: {last}")
    return seconds


def best_row(metrics_csv: Path) -> dict:
    val = pd.read_csv(metrics_csv).dropna(subset=["val/mIoU"])
    best = val.loc[val["val/mIoU"].idxmax()]
    iou = {c: float(best.get(f"val/IoU/{c}", float("nan"))) for c in ["Background", *TRASH]}
    # The best mIoU need not be where most classes pass: the trash classes trade pixels between validations.
    passing = (val[[f"val/IoU/{c}" for c in TRASH if f"val/IoU/{c}" in val]] > 0.05).sum(axis=1)
    return {"val mIoU": float(best["val/mIoU"]), "epoch": int(best["epoch"]) + 1, "steps": int(best["step"]) + 1,
            "trash > 0.05": sum(iou[c] > 0.05 for c in TRASH), "most > 0.05 at one val": int(passing.max()), **iou}


def table() -> str:
    rows = [json.loads(line) for line in (RESULTS / "results.jsonl").read_text().splitlines() if line.strip()]
    frame = pd.DataFrame(rows).drop(columns=["run_dir", "overrides"])
    return frame.to_markdown(index=False, floatfmt=".3f")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="epochs for every row picked (the poly schedule is sized to "
                        "them); default: each row's own")
    parser.add_argument("--rows", default=",".join(map(str, range(len(ROWS)))),
                        help="comma-separated row numbers: " + "; ".join(f"{i} {name}" for i, name in enumerate(ROWS)).replace("%", "%%"))
    parser.add_argument("--table", action="store_true", help="print the table of the rows run so far and stop")
    parser.add_argument("--step-time", type=int, metavar="STEPS", help="instead of training the rows, time STEPS "
                        "training steps of each, one after another, and print the seconds and the ratio to the first row")
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
    if args.step_time:
        seconds = {}
        for name in (names[int(r)] for r in picked):
            experiment, _, overrides = ROWS[name]
            seconds[name] = step_seconds(experiment, overrides + args.overrides, args.step_time)
            first = next(iter(seconds.values()))
            print(f"{name}: {args.step_time} steps in {seconds[name]:.1f} s (start-up included), "
                  f"{seconds[name] / first:.2f}x the first row", flush=True)
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    new_rows = []
    for name in (names[int(r)] for r in picked):
        # the row in the name: rows started side by side in the same second get folders of their own
        run_dir = RESULTS / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_row{names.index(name)}"
        experiment, epochs, overrides = ROWS[name]
        epochs, overrides = args.epochs or epochs, overrides + args.overrides
        seconds = train(run_dir, experiment, epochs, overrides)
        row = {"row": name, "base": experiment, "epochs": epochs, **best_row(run_dir / "metrics.csv"), "wall min": seconds / 60,
               "run_dir": str(run_dir.relative_to(REPO)), "overrides": overrides}
        new_rows.append(row)
        with open(RESULTS / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{name}: val mIoU {row['val mIoU']:.3f}, {row['trash > 0.05']} trash classes > 0.05, "
              f"{seconds / 60:.1f} min", flush=True)
    print(table())
    record([[names.index(r["row"]), r["row"], f"{r['val mIoU']:.3f}", r["steps"], r["trash > 0.05"], f"{r['wall min']:.1f}"]
            for r in new_rows])


if __name__ == "__main__":
    main()
