"""Exploratory data analysis of a COCO segmentation file: a Markdown report and PNG charts.

    python -m trashseg.tools.eda --root DIR --ann FILE --out DIR [--classes ...] [--overlap area_desc]
        [--augment configs/augment/X.yaml] [--copy-paste configs/augment/copy_paste/rare.yaml]
        [--sampler class_balanced --repeat-threshold 0.1] [--samples 300] [--seed 0]

Per class: images containing it, instances, share of all pixels (under the overlap policy),
mean object area. Objects per image, image sizes, and overlaps: pixels claimed by two or more
objects and the class pairs that overlap. With any of the training options, also the class
pixel shares of `--samples` training samples drawn as training draws them (sampler, copy-paste,
augmentations), beside the file's own: what a recipe does to the class balance.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from trashseg.data.classes import CLASSES, palette_for  # noqa: E402
from trashseg.data.coco import segmentation_to_rle  # noqa: E402
from trashseg.data.dataset import CocoSegmentationDataset  # noqa: E402
from trashseg.data.samplers import SAMPLERS, ClassBalancedSampler, SeededSampler  # noqa: E402
from trashseg.errors import run_or_report  # noqa: E402


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


def sampled_pixels(ds: CocoSegmentationDataset, samples: int, sampler: str = "shuffle", repeat_threshold: float = 0.1,
                   seed: int = 0) -> tuple[np.ndarray, int]:
    """Pixels per class (and ignored pixels) of `samples` items drawn as training draws them:
    the sampler's (index, seed) keys, epoch after epoch, through the dataset's augmentations."""
    if sampler == "class_balanced":
        draw = ClassBalancedSampler(ds, repeat_threshold, seed=seed)
    else:
        draw = SeededSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=seed)
    n = len(ds.classes)
    pixels, ignored, drawn = np.zeros(n, np.int64), 0, 0
    for epoch in itertools.count():
        draw.set_epoch(epoch)
        for key in draw:
            # without augmentation the mask alone tells the counts: no image needs decoding
            mask = ds[key]["mask"].numpy() if ds.transforms or ds.copy_paste else ds.mask(key[0])
            counts = np.bincount(mask.ravel(), minlength=256)
            pixels += counts[:n]
            ignored += int(counts[n:].sum())
            drawn += 1
            if drawn == samples:
                return pixels, ignored
    raise AssertionError("unreachable")


def training_view(root: Path, ann: Path, classes, overlap: str, options: Mapping, out: Path) -> list[str]:
    """The report section comparing the file's class pixel shares with those of training samples."""
    ds = CocoSegmentationDataset(root, ann, classes=classes, overlap=overlap, cache_dir=False,
                                 transforms=options["augment"] or None, copy_paste=options["copy_paste"],
                                 images_relative_to=options["images_relative_to"])
    before = collect_pixels(ds)
    after, ignored = sampled_pixels(ds, options["samples"], options["sampler"], options["repeat_threshold"], options["seed"])
    table = pd.DataFrame({"pixel share in the file (%)": 100 * before / max(before.sum(), 1),
                          "pixel share in the samples (%)": 100 * after / max(after.sum(), 1)}, index=list(classes))
    table["ratio"] = table.iloc[:, 1] / table.iloc[:, 0].replace(0, np.nan)
    _grouped_bars(table.iloc[:, :2], out / "class_pixel_share_training.png")
    recipe = [f"sampler `{options['sampler']}`" + (f" (repeat_threshold {options['repeat_threshold']})"
                                                   if options["sampler"] == "class_balanced" else "")]
    recipe.append(f"augment `{options['augment_file']}`" if options["augment_file"] else "no augmentation steps")
    recipe.append(f"copy-paste `{options['copy_paste_file']}`" if options["copy_paste"] else "no copy-paste")
    return ["## Training samples", "",
            f"{options['samples']} samples drawn with {', '.join(recipe)}, seed {options['seed']}; shares of the "
            f"counted pixels (the samples' ignored pixels, 255: {100 * ignored / max(after.sum() + ignored, 1):.2f}%).", "",
            table.round(3).rename_axis("class").to_markdown(), "", "![training](class_pixel_share_training.png)", ""]


def collect_pixels(ds: CocoSegmentationDataset) -> np.ndarray:
    n = len(ds.classes)
    return sum(np.bincount(ds.mask(i).ravel(), minlength=256)[:n] for i in range(len(ds)))


def _grouped_bars(table: pd.DataFrame, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = np.arange(len(table))
    for k, column in enumerate(table.columns):
        ax.bar(x + (k - 0.5) * 0.4, table[column].clip(lower=1e-4), width=0.4, label=column, edgecolor="black", linewidth=0.5)
    ax.set_xticks(x, table.index, rotation=30, ha="right")
    ax.set(yscale="log", ylabel="% of pixels", title="class pixel shares: the file vs training samples (log scale)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def run_eda(root: Path, ann: Path, out: Path, classes=CLASSES, overlap: str = "area_desc",
            training: Mapping | None = None) -> Path:
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
        *[f"![{c}]({c})" for c in charts], "",
        *(training_view(root, ann, classes, overlap, training, out) if training else []),
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
    group = parser.add_argument_group("training samples", "class pixel shares of samples drawn as training draws them")
    group.add_argument("--augment", type=Path, help="an augment YAML (its train steps, and copy_paste if it has one)")
    group.add_argument("--copy-paste", type=Path, help="a copy_paste YAML, e.g. configs/augment/copy_paste/rare.yaml")
    group.add_argument("--sampler", choices=SAMPLERS, help="default shuffle")
    group.add_argument("--repeat-threshold", type=float, default=0.1, help="for --sampler class_balanced")
    group.add_argument("--samples", type=int, help="how many (default 300 when any option of this group is given)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--images-relative-to", choices=["root", "ann"], default="root",
                       help="file_name relative to --root, or to the annotation file's folder (TrashCan)")
    args = parser.parse_args(argv)
    return run_or_report(lambda: f"wrote {run_eda(args.root, args.ann, args.out, args.classes, args.overlap, training_options(args))}"
                                 " and its charts")


def _read_yaml(path: Path, what: str):
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    return yaml.safe_load(path.read_text())


def training_options(args: argparse.Namespace) -> dict | None:
    """The training-sample options, or None when none was given."""
    if not (args.augment or args.copy_paste or args.sampler or args.samples):
        return None
    steps, copy_paste = [], None
    if args.augment:
        loaded = _read_yaml(args.augment, "--augment")
        if isinstance(loaded, Mapping):
            steps, copy_paste = loaded.get("train") or [], loaded.get("copy_paste")
        elif isinstance(loaded, Sequence):
            steps = loaded
        else:
            raise ValueError(f"--augment {args.augment}: expected an augment YAML (train: [...]) or a list of steps")
    if args.copy_paste:
        copy_paste = _read_yaml(args.copy_paste, "--copy-paste")
        if not isinstance(copy_paste, Mapping):
            raise ValueError(f"--copy-paste {args.copy_paste}: expected a mapping (p, max_objects, scale, class_weights)")
    samples = args.samples or 300
    if samples < 1:
        raise ValueError(f"--samples {samples}: give at least 1")
    return {"augment": steps, "copy_paste": copy_paste, "sampler": args.sampler or "shuffle",
            "repeat_threshold": args.repeat_threshold, "samples": samples, "seed": args.seed,
            "images_relative_to": args.images_relative_to,
            "augment_file": args.augment, "copy_paste_file": args.copy_paste or args.augment}


if __name__ == "__main__":
    sys.exit(main())
