"""Exploratory data analysis of a COCO segmentation file: a Markdown report and PNG charts.

    python -m trashseg.tools.eda --root DIR --ann FILE --out DIR [--classes ...] [--overlap area_desc]

Per class: images containing it, instances, share of all pixels (under the overlap policy),
mean object area. Objects per image, image sizes, and overlaps: pixels claimed by two or more
objects and the class pairs that overlap.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from trashseg.cli import run_or_report  # noqa: E402
from trashseg.data.classes import CLASSES, palette_for  # noqa: E402
from trashseg.data.coco import segmentation_to_rle  # noqa: E402
from trashseg.data.dataset import CocoSegmentationDataset  # noqa: E402


def collect(ds: CocoSegmentationDataset) -> dict:
    """Per-image and per-object statistics, from masks alone (no image is decoded)."""
    n = len(ds.classes)
    pixels = np.zeros(n, np.int64)
    objects, per_image, pair_pixels = [], [], Counter()
    overlap_pixels = 0
    for i in range(len(ds)):
        height, width = map(int, ds.sizes[i])
        pixels += np.bincount(ds.mask(i).ravel(), minlength=256)[:n]
        rles = []
        for obj in ds.objects(i):
            rle = segmentation_to_rle(obj.segmentation, height, width)
            if rle is not None:
                rles.append((obj.label, rle))
                objects.append({"image": i, "class": ds.classes[obj.label], "area": int(mask_utils.area(rle))})
        claimed = 0
        if len(rles) > 1:
            coverage = sum(mask_utils.decode(r).astype(np.int32) for _, r in rles)
            claimed = int((coverage >= 2).sum())
            for (la, a), (lb, b) in itertools.combinations(rles, 2):
                shared = int(mask_utils.area(mask_utils.merge([a, b], intersect=True)))
                if shared:
                    pair_pixels[tuple(sorted((ds.classes[la], ds.classes[lb])))] += shared
        overlap_pixels += claimed
        per_image.append({"objects": len(rles), "height": height, "width": width, "overlap pixels": claimed})
    return {"pixels": pixels, "objects": pd.DataFrame(objects, columns=["image", "class", "area"]),
            "images": pd.DataFrame(per_image), "pairs": pair_pixels, "overlap_pixels": overlap_pixels}


def class_table(stats: dict, classes: list[str]) -> pd.DataFrame:
    objects = stats["objects"]
    grouped = objects.groupby("class")
    table = pd.DataFrame({
        "images": grouped["image"].nunique(),
        "instances": grouped.size(),
        "mean object area (px)": grouped["area"].mean().round(1),
    }).reindex(classes).fillna(0)
    table["pixel share (%)"] = (100 * stats["pixels"] / max(stats["pixels"].sum(), 1)).round(3)
    table[["images", "instances"]] = table[["images", "instances"]].astype(int)
    return table.rename_axis("class")


def overlap_tables(stats: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    images = stats["images"]
    total = int((images["height"] * images["width"]).sum())
    summary = pd.DataFrame({"value": {
        "images with overlapping objects": int((images["overlap pixels"] > 0).sum()),
        "pixels claimed by 2+ objects": stats["overlap_pixels"],
        "share of all pixels (%)": round(100 * stats["overlap_pixels"] / max(total, 1), 4),
    }})
    pairs = pd.DataFrame([{"class A": a, "class B": b, "shared pixels": n} for (a, b), n in stats["pairs"].most_common(15)],
                         columns=["class A", "class B", "shared pixels"])
    return summary, pairs


def _bar(values: pd.Series, colours, title: str, ylabel: str, out: Path, log: bool = False) -> None:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.bar(values.index, values.values, color=[np.array(c) / 255 for c in colours], edgecolor="black", linewidth=0.5)
    ax.set(title=title, ylabel=ylabel)
    if log:
        ax.set_yscale("log")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_all(table: pd.DataFrame, stats: dict, classes: list[str], out: Path) -> list[str]:
    colours = palette_for(len(classes))
    _bar(table["pixel share (%)"], colours, "share of all pixels per class (log scale)", "% of pixels",
         out / "class_pixel_share.png", log=True)
    _bar(table["instances"].iloc[1:], colours[1:], "instances per class", "objects", out / "class_instances.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    counts = stats["images"]["objects"]
    ax.hist(counts, bins=np.arange(counts.max() + 2) - 0.5, color="#4c72b0", edgecolor="black")
    ax.set(title="objects per image", xlabel="objects", ylabel="images")
    fig.tight_layout()
    fig.savefig(out / "objects_per_image.png", dpi=100)
    plt.close(fig)
    names = classes[1:]
    grid = pd.DataFrame(0, index=names, columns=names)
    for (a, b), n in stats["pairs"].items():
        grid.loc[a, b] += n
        if a != b:
            grid.loc[b, a] += n
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(np.log10(grid.values + 1), cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_title("pixels two objects both claim, by class pair (log10)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "overlap_pairs.png", dpi=100)
    plt.close(fig)
    return ["class_pixel_share.png", "class_instances.png", "objects_per_image.png", "overlap_pairs.png"]


def run_eda(root: Path, ann: Path, out: Path, classes=CLASSES, overlap: str = "area_desc") -> Path:
    ds = CocoSegmentationDataset(root, ann, classes=classes, overlap=overlap, cache_dir=False)
    stats = collect(ds)
    out.mkdir(parents=True, exist_ok=True)
    table = class_table(stats, list(classes))
    summary, pairs = overlap_tables(stats)
    sizes = stats["images"].groupby(["width", "height"]).size().rename("images").reset_index()
    per_image = stats["images"]["objects"].describe()[["mean", "50%", "min", "max"]].rename({"50%": "median"})
    charts = plot_all(table, stats, list(classes), out)
    report = [
        f"# EDA of {root / ann}", "", f"{len(ds)} images, {len(stats['objects'])} objects, overlap policy `{overlap}`.", "",
        "## Classes", "", table.to_markdown(), "", "Background is no object class: only its pixel share applies.", "",
        "## Objects per image", "", per_image.to_frame("objects").to_markdown(floatfmt=".2f"), "",
        "## Image sizes", "", sizes.to_markdown(index=False), "",
        "## Overlaps", "", summary.to_markdown(), "", "Class pairs that overlap (top 15):", "",
        pairs.to_markdown(index=False) if len(pairs) else "none", "",
        *[f"![{c}]({c})" for c in charts],
    ]
    path = out / "report.md"
    path.write_text("\n".join(report) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="EDA of a COCO segmentation dataset.")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--ann", type=Path, required=True, help="annotation file, relative to --root unless absolute")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--classes", nargs="+", default=list(CLASSES))
    parser.add_argument("--overlap", default="area_desc")
    args = parser.parse_args(argv)
    return run_or_report(lambda: f"wrote {run_eda(args.root, args.ann, args.out, args.classes, args.overlap)} and its charts")


if __name__ == "__main__":
    sys.exit(main())
