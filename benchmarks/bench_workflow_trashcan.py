"""The winning workflow on ../shared/data/trashcan, measured with the real commands:

1. the pool = TrashCan train + val (2,500 frames), video-grouped 3 folds (`trashseg.data.kfold --group-by vid_NNNNNN`);
2. the 180x240 CPU recipe (`experiment=bench/cpu_recipe_180`: unet_tiny, 128x128 object crops of 180x240
   frames, full class weights; predictions at `--scales 0.5`) on
   every fold, the same number of epochs per fold, one sweep folder;
3. the OOF score (`trashseg.inference.oof`) beside each fold's own best val mIoU;
4. one pseudo-label round with TrashCan's val treated as unlabelled: a model trained on train
   alone labels val (`trashseg.inference.pseudo`), then a model trained on train + pseudo(val)
   is scored on val's TRUE labels, against training on train alone, same number of steps.

    python benchmarks/bench_workflow_trashcan.py [--epochs 2] [--work benchmarks/results/workflow] [OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from coco_pool import write_pool
from markdown_row import record

REPO = Path(__file__).resolve().parents[1]
TRASHCAN = REPO.parent / "shared" / "data" / "trashcan"
# The 180x240 CPU recipe the workflow figures (docs/results/workflow.md) were measured with (experiment=cpu_recipe until
# 2026-12-01), each model for --epochs epochs (its poly schedule sized to them).
RECIPE = ["experiment=bench/cpu_recipe_180", "trainer.enable_progress_bar=false", "trainer.max_time=null", "data.num_workers=2"]


def run(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=REPO, check=True)
    return time.perf_counter() - start


def pool_json(out: Path) -> Path:
    """train + val in one COCO file, file names relative to the TrashCan root, ids made unique."""
    return write_pool([(TRASHCAN / split / "annotations.json", f"{split}/") for split in ("train", "val")], out)


def best_val(run_dir: Path) -> tuple[float, int]:
    val = pd.read_csv(run_dir / "metrics.csv").dropna(subset=["val/mIoU"])
    best = val.loc[val["val/mIoU"].idxmax()]
    return float(best["val/mIoU"]), int(best["step"])


def folds_and_oof(work: Path, budget: list[str], overrides: list[str]) -> None:
    pool = pool_json(work / "pool" / "train_all.json")
    run(["-m", "trashseg.data.kfold", "--root", str(TRASHCAN), "--ann", str(pool), "--folds", "3", "--seed", "0",
         "--group-by", r"vid_\d+", "--out", str(work / "folds"), "--force"])
    sweep = work / "fold_sweep"
    seconds = run(["train.py", "-m", *RECIPE, "data.fold=0,1,2", f"data.folds_dir={work / 'folds'}",
                   "data.images_relative_to=root", *budget,
                   f"hydra.sweep.dir={sweep}", *overrides])
    print(f"3 folds trained in {seconds / 60:.1f} min")
    # the recipe trains at 180x240 (frames are 480 wide): predict at half size, like training saw them
    run(["-m", "trashseg.inference.oof", str(sweep), "--scales", "0.5", "--num-workers", "2", "--batch-size", "8"])
    report = json.loads((sweep / "oof" / "oof.json").read_text())
    rows = [{"fold": f["fold"], "val images": f["images"], "fold's own best val mIoU (training log, 180x240)": f["logged_val_mIoU"],
             "fold mIoU (OOF scorer, full resolution, --scales 0.5)": f["mIoU"]} for f in report["folds"]]
    print(tabulate(rows, headers="keys", tablefmt="pipe", floatfmt=".4f"))
    spread = report["fold_spread"]
    print(f"OOF (CV) mIoU over all {report['images']} images: {report['cv']['mIoU']:.4f}; per-fold mean "
          f"{spread['mean']:.4f} +- {spread['std']:.4f}")
    print("OOF per-class IoU: " + ", ".join(f"{c} {report['cv'][f'IoU/{c}']:.3f}" for c in report["classes"]))
    record([[f"CV mIoU {report['cv']['mIoU']:.4f}", " / ".join(f"{f['mIoU']:.4f}" for f in report["folds"]), f"{seconds / 60:.1f} min"]])


def pseudo_round(work: Path, budget: list[str], overrides: list[str]) -> None:
    """Same step budget for both arms; val's true labels score both."""
    alone = work / "train_only"
    run(["train.py", *RECIPE, *budget, f"hydra.run.dir={alone}", *overrides])
    pseudo = work / "pseudo" / "val_pseudo.json"
    run(["-m", "trashseg.inference.pseudo", "--checkpoint", str(alone / "checkpoints" / "best.ckpt"), "--split", "val",
         "--out", str(pseudo), "--min-confidence", "0.9", "--scales", "0.5", "--num-workers", "2", "--batch-size", "8"])
    with_pseudo = work / "train_plus_pseudo"
    extra = f"data.extra_train=[{{root:{TRASHCAN / 'val'},ann:{pseudo},images_relative_to:root,crowd:ignore}}]"
    run(["train.py", *RECIPE, *budget, extra, f"hydra.run.dir={with_pseudo}", *overrides])
    rows = []
    for name, run_dir in (("train only", alone), ("train + pseudo(val), 1 round", with_pseudo)):
        miou, step = best_val(run_dir)
        rows.append({"model": name, "steps": step + 1, "val mIoU (true labels)": miou})
    print(tabulate(rows, headers="keys", tablefmt="pipe", floatfmt=".4f"))
    record([[r["model"], r["steps"], f"{r['val mIoU (true labels)']:.4f}"] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per model (the poly schedule is sized to them)")
    parser.add_argument("--steps-per-epoch", type=int, default=100,
                        help="batches of 16 per epoch for every model: the same step budget whatever its pool's size")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "results" / "workflow")
    parser.add_argument("--skip-folds", action="store_true")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for train.py, e.g. loss=ce_dice")
    args = parser.parse_args()
    if not TRASHCAN.is_dir():
        sys.exit(f"error: {TRASHCAN} not found; this benchmark needs the TrashCan data")
    work = args.work.resolve() / time.strftime("%Y-%m-%d_%H-%M-%S")
    budget = [f"trainer.max_epochs={args.epochs}", f"trainer.limit_train_batches={args.steps_per_epoch}"]
    if not args.skip_folds:
        folds_and_oof(work, budget, args.overrides)
    pseudo_round(work, budget, args.overrides)


if __name__ == "__main__":
    main()
