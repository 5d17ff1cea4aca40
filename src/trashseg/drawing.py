"""Pictures of labels in the class colours of docs/competition.md (Classes and colours): image | truth | prediction | errors grids
and the row-normalised confusion matrix. Neutral ground: the OOF scorer (inference) and the
prediction pictures (tools) both draw with it, so the library never imports the tools."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from trashseg.data.classes import IGNORE_INDEX  # noqa: E402


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
