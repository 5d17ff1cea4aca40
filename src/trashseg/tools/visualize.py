"""Pictures of a checkpoint's predictions, in the class colours of DESIGN.md.

    python -m trashseg.tools.visualize --checkpoint CKPT --split val [--n 8] --out DIR

`predictions.png`: one row per image: image | ground truth | prediction | errors (red where
the prediction is wrong, grey where not counted), with a colour legend of the classes.
`confusion.png`: the confusion matrix over the whole split, each row (truth) normalised.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from trashseg.data.classes import IGNORE_INDEX, palette_for  # noqa: E402
from trashseg.inference.checkpoint import load_checkpoint  # noqa: E402
from trashseg.inference.cli import predictions  # noqa: E402
from trashseg.inference.loop import build_loader  # noqa: E402
from trashseg.inference.predictor import Predictor  # noqa: E402
from trashseg.metric import SegmentationMetric  # noqa: E402


def colourise(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    out = palette[np.minimum(labels, len(palette) - 1)]
    out[labels == IGNORE_INDEX] = 128
    return out


def error_map(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    out = np.full((*truth.shape, 3), 255, np.uint8)
    out[truth != pred] = (220, 30, 30)
    out[truth == IGNORE_INDEX] = 128
    return out


def plot_grid(rows: list[tuple], classes: list[str], palette: np.ndarray, out: Path) -> None:
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3 * len(rows) + 1), squeeze=False)
    for r, (name, image, truth, pred) in enumerate(rows):
        panels = [image, colourise(truth, palette), colourise(pred, palette), error_map(truth, pred)]
        titles = [name, "ground truth", "prediction", f"errors ({np.mean((truth != pred)[truth != IGNORE_INDEX]):.1%})"]
        for ax, panel, title in zip(axes[r], panels, titles):
            ax.imshow(panel, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    handles = [Patch(facecolor=palette[i] / 255, edgecolor="black", label=c) for i, c in enumerate(classes)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(classes), 6), fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out, dpi=80)
    plt.close(fig)


def plot_confusion(confusion: np.ndarray, classes: list[str], out: Path) -> None:
    rows = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(9, 8))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="prediction", ylabel="ground truth", title="confusion matrix (each row sums to 1)")
    for i in range(len(classes)):
        for j in range(len(classes)):
            if rows[i, j] >= 0.01:
                ax.text(j, i, f"{rows[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if rows[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


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
