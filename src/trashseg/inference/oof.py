"""Out-of-fold score of a k-fold sweep: each fold's best checkpoint on its own val images,
ONE confusion matrix over all of them (the CV mIoU of the whole pool, e.g. train_all).

    python -m trashseg.inference.oof runs/multirun/<experiment>/<time> [--tta hflip] [--scales 0.75 1 1.25] [--post mode3] [--worst 16]

Writes into SWEEP_DIR/oof (or --out): `oof.json` (CV metrics, per-class IoU, per-fold mIoU and
spread, the confusion matrix), `oof.md`, `per_image.csv` (image, fold, mIoU, worst class; worst
first: the list of likely mislabels to review), `worst.png` (image / truth / prediction / errors
of the worst images) and `confusion.png`.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from trashseg.data.classes import palette_for
from trashseg.data.fold_record import verify_fold_file
from trashseg.data.kfold import fold_annotations
from trashseg.errors import run_or_report
from trashseg.metric import confusion_matrix, iou_per_class, summarize
from trashseg.run_layout import best_checkpoint, best_validation, read_config

from .checkpoint import load_checkpoint
from .loop import build_loader, predict_labels
from .options import add_predictor_args, run_fold, sweep_runs
from .postprocess import check_post
from .predictor import Predictor

SPLIT_HINT = "python train.py -m experiment=X data=recycle_kfold data.fold=0,1,2,3,4"


def fold_runs(sweep_dir: Path, data_root: Path | None = None) -> list[tuple[int, Path]]:
    """(fold, run folder) for every fold of the sweep's fold files; refuses a sweep that misses
    a fold, trains one twice or holds a run that is not a fold run."""
    by_fold: dict[int, Path] = {}
    for run in sweep_runs(sweep_dir):
        fold = run_fold(run)
        if fold is None:
            raise ValueError(f"{run} was not trained on a fold (data.fold is null); an OOF score needs a k-fold sweep: {SPLIT_HINT}")
        if fold in by_fold:
            raise ValueError(f"{by_fold[fold]} and {run} were both trained on fold {fold}; move one out of {sweep_dir}")
        by_fold[fold] = run
    cfg = read_config(next(iter(by_fold.values())))
    folder = Path(data_root or cfg["data"]["root"]) / cfg["data"]["folds_dir"]
    n_folds = len(list(folder.glob("fold*_val.json")))
    missing = sorted(set(range(n_folds)) - set(by_fold))
    if missing:
        raise ValueError(f"{sweep_dir} has no run of fold {', '.join(map(str, missing))} of the {n_folds} in {folder}; "
                         f"the OOF score covers the whole pool only with every fold: {SPLIT_HINT}")
    return sorted(by_fold.items())


def check_fold_records(runs: list[tuple[int, Path]], sweep_dir: Path, data_root: Path | None) -> None:
    """Before any prediction: every run's val file must be the one it was trained beside (its
    record in config.yaml, the same as in its checkpoint); one warning line for runs without a record."""
    unverified = [run.name for _, run in runs if verify_fold_file(read_config(run), "val", data_root, run)]
    if unverified:
        print(f"warning: fold runs {', '.join(unverified)} of {sweep_dir} record no fold files (trained before trashseg "
              "recorded them), so their val files could not be verified as the ones they were trained beside; retrain "
              "them to make the OOF score trustworthy", file=sys.stderr)


@dataclass
class OOFResult:
    classes: list[str]
    confusion: torch.Tensor
    folds: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    worst: list = field(default_factory=list)  # heap of (-mIoU, n, (name, image, truth, pred))


def score_fold(result: OOFResult, fold: int, run: Path, args: argparse.Namespace) -> None:
    """Predict the fold's val images with its best checkpoint; add to the OOF confusion."""
    ckpt = load_checkpoint(best_checkpoint(run))
    if ckpt.classes != result.classes:
        raise ValueError(f"{run} was trained on classes {ckpt.classes} but the sweep's first run on {result.classes}")
    root = args.data_root or Path(ckpt.cfg["data"]["root"])
    _, val_ann = fold_annotations(root, ckpt.cfg["data"]["folds_dir"], fold)
    loader = build_loader(ckpt.cfg, "val", result.classes, root, val_ann, args.batch_size, args.num_workers, args.device)
    predictor = Predictor([ckpt], tta=args.tta, scales=args.scales, device=args.device, resize=args.resize)
    n = len(result.classes)
    fold_confusion = torch.zeros(n, n, dtype=torch.long)
    for item, _, labels in predict_labels(predictor, loader, args.post, desc=f"fold {fold}"):
        pred = labels.cpu()
        truth = item["mask"][: pred.shape[0], : pred.shape[1]]
        confusion = confusion_matrix(pred, truth, n)
        fold_confusion += confusion
        iou = iou_per_class(confusion)
        present = ~torch.isnan(iou)
        miou = float(torch.nanmean(iou)) if present.any() else float("nan")
        worst = int(torch.where(present, iou, torch.inf).argmin()) if present.any() else None
        result.images.append({"file_name": item["file_name"], "id": int(item["id"]), "fold": fold, "mIoU": miou,
                              "pixel_acc": float(confusion.diag().sum() / confusion.sum().clamp(min=1)),
                              "worst_class": result.classes[worst] if worst is not None else "",
                              "worst_class_IoU": float(iou[worst]) if worst is not None else float("nan")})
        if args.worst and not np.isnan(miou):
            entry = (-miou, len(result.images), (f"{item['file_name']} (fold {fold}, mIoU {miou:.3f})",
                     item["image"][:, : pred.shape[0], : pred.shape[1]].permute(1, 2, 0).numpy(), truth.numpy(), pred.numpy()))
            (heapq.heappush if len(result.worst) < args.worst else heapq.heappushpop)(result.worst, entry)
    result.confusion += fold_confusion
    logged = best_validation(run)
    result.folds.append({"fold": fold, "run": str(run), "images": len(loader.dataset),
                         "mIoU": float(summarize(fold_confusion, result.classes)["mIoU"]), "logged_val_mIoU": logged[0] if logged else None})




def summary(result: OOFResult, args: argparse.Namespace) -> dict:
    cv = {k: float(v) for k, v in summarize(result.confusion, result.classes).items()}
    cv["mIoU_per_image"] = float(np.nanmean([im["mIoU"] for im in result.images]))
    fold_miou = np.array([f["mIoU"] for f in result.folds])
    return {"cv": cv, "folds": result.folds, "images": len(result.images),
            "fold_spread": {"mean": float(fold_miou.mean()), "std": float(fold_miou.std()),
                            "min": float(fold_miou.min()), "max": float(fold_miou.max())},
            "tta": args.tta, "scales": args.scales, "resize": args.resize, "post": args.post, "classes": result.classes, "confusion": result.confusion.tolist()}


def markdown(report: dict, per_image: pd.DataFrame, n_worst: int) -> str:
    cv, spread = report["cv"], report["fold_spread"]
    lines = [f"# Out-of-fold score: {report['images']} images, {len(report['folds'])} folds",
             "", f"**CV mIoU {cv['mIoU']:.4f}** (one confusion matrix over every image, each predicted by the model "
             f"that did not train on it); pixel acc {cv['pixel_acc']:.4f}; mean per-image mIoU {cv['mIoU_per_image']:.4f}; "
             f"TTA {report['tta']}, scales {report['scales']}, post-processing {report['post']}.", "",
             f"Per-fold mIoU {spread['mean']:.4f} +- {spread['std']:.4f} (min {spread['min']:.4f}, max {spread['max']:.4f}).", "",
             pd.DataFrame(report["folds"]).drop(columns="run").to_markdown(index=False, floatfmt=(".0f", ".0f", ".4f", ".4f")), "",
             "## Per-class IoU", "",
             pd.DataFrame({"class": report["classes"],
                           "IoU": [cv[f"IoU/{c}"] for c in report["classes"]]}).to_markdown(index=False, floatfmt=".4f"),
             "", f"## Worst {n_worst} images (review their labels)", "",
             per_image.head(n_worst).to_markdown(index=False, floatfmt=".3f"), ""]
    return "\n".join(lines)


def write_outputs(result: OOFResult, args: argparse.Namespace, out: Path) -> dict:
    from trashseg.drawing import plot_confusion, plot_grid  # matplotlib only when pictures are drawn

    report = summary(result, args)
    per_image = pd.DataFrame(result.images).sort_values("mIoU", kind="stable", na_position="last")
    out.mkdir(parents=True, exist_ok=True)
    (out / "oof.json").write_text(json.dumps(report, indent=1))
    per_image.to_csv(out / "per_image.csv", index=False)
    (out / "oof.md").write_text(markdown(report, per_image, args.worst))
    palette = np.array(palette_for(len(result.classes)), np.uint8)
    if result.worst:
        plot_grid([entry for _, _, entry in sorted(result.worst, reverse=True)], result.classes, palette, out / "worst.png")
    plot_confusion(result.confusion.numpy(), result.classes, out / "confusion.png")
    return report


def oof(args: argparse.Namespace) -> str:
    check_post(args.post)
    runs = fold_runs(args.sweep_dir, args.data_root)
    check_fold_records(runs, args.sweep_dir, args.data_root)
    classes = list(read_config(runs[0][1])["data"]["classes"])
    n = len(classes)
    result = OOFResult(classes, torch.zeros(n, n, dtype=torch.long))
    for fold, run in runs:
        score_fold(result, fold, run, args)
    out = args.out or args.sweep_dir / "oof"
    report = write_outputs(result, args, out)
    folds = ", ".join(f"{f['fold']}: {f['mIoU']:.4f}" for f in report["folds"])
    return (f"CV mIoU {report['cv']['mIoU']:.4f} over {report['images']} images (per fold {folds})\n"
            f"wrote {out}/oof.json, oof.md, per_image.csv, worst.png, confusion.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Out-of-fold mIoU of a k-fold sweep, per-image table and worst images.")
    parser.add_argument("sweep_dir", type=Path, help="the sweep folder of python train.py -m ... data.fold=0,1,...")
    add_predictor_args(parser)
    parser.add_argument("--data-root", type=Path, help="default: the runs' data.root")
    parser.add_argument("--worst", type=int, default=16, help="images drawn in worst.png and listed in oof.md")
    parser.add_argument("--out", type=Path, help="default: SWEEP_DIR/oof")
    args = parser.parse_args(argv)
    return run_or_report(lambda: oof(args))


if __name__ == "__main__":
    sys.exit(main())
