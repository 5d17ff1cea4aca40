"""Pictures of a checkpoint's predictions, in the class colours of docs/competition.md.

    python -m trashseg.tools.visualize --checkpoint CKPT --split val [--n 8] --out DIR

`predictions.png`: one row per image: image | ground truth | prediction | errors (red where
the prediction is wrong, grey where not counted), with a colour legend of the classes.
`confusion.png`: the confusion matrix over the whole split, each row (truth) normalised.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from trashseg.data.classes import palette_for
from trashseg.drawing import plot_confusion, plot_grid
from trashseg.inference.checkpoint import load_checkpoint
from trashseg.inference.command import predictions
from trashseg.inference.loop import build_loader
from trashseg.inference.predictor import Predictor
from trashseg.metric import SegmentationMetric


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Prediction grids and confusion matrix of a checkpoint.")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--split", default="val", choices=["val"])
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("--ann")
    parser.add_argument("--n", type=int, default=8, help="images in the grid")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        ckpt = load_checkpoint(args.checkpoint)
        loader = build_loader(ckpt.cfg, args.split, ckpt.classes, args.data_root, args.ann, num_workers=0,
                              device=args.device)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    classes, palette = ckpt.classes, np.array(palette_for(len(ckpt.classes)), np.uint8)
    metric = SegmentationMetric(len(classes), classes)
    rows = []
    for item, pred in predictions(Predictor([ckpt], device=args.device), loader, None):
        h, w = pred.shape
        truth = item["mask"][:h, :w].numpy()
        metric.update(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None])
        if len(rows) < args.n:
            rows.append((item["file_name"], item["image"][:, :h, :w].permute(1, 2, 0).numpy(), truth, pred))
    args.out.mkdir(parents=True, exist_ok=True)
    plot_grid(rows, classes, palette, args.out / "predictions.png")
    plot_confusion(metric.confusion.numpy(), classes, args.out / "confusion.png")
    print(f"wrote {args.out / 'predictions.png'} and {args.out / 'confusion.png'}; val mIoU {float(metric.compute()['mIoU']):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
