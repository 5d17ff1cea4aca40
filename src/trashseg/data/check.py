"""Check a COCO annotation file against its images before anyone trains on it.

    python -m trashseg.data.check --root DIR --ann FILE [--classes NAME ...]

Errors (exit 1): missing, truncated or unreadable images; JSON width/height differing from
the file; unknown category names; annotations on unknown images or categories; duplicate
image ids, annotation ids or file names. Warnings: degenerate polygon parts (< 3 points,
which the loader skips), empty segmentations, images without annotations.
`--ann` is relative to `--root` unless absolute; so are the JSON's file names.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .classes import CLASSES
from .coco import UnknownCategoryError, is_degenerate_polygon, label_map, read_coco
from .image_io import read_rgb
from .synthetic import is_synthetic, synthetic_note

SHOWN_PER_KIND = 10


@dataclass
class Report:
    images: int = 0
    annotations: int = 0
    instances: Counter = field(default_factory=Counter)
    synthetic: bool = False  # written by trashseg.data.synthetic: not real data
    errors: dict[str, list[str]] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)

    def error(self, kind: str, message: str) -> None:
        self.errors.setdefault(kind, []).append(message)

    def warn(self, kind: str, message: str) -> None:
        self.warnings.setdefault(kind, []).append(message)

    @property
    def n_errors(self) -> int:
        return sum(map(len, self.errors.values()))

    @property
    def n_warnings(self) -> int:
        return sum(map(len, self.warnings.values()))

    @property
    def ok(self) -> bool:
        return not self.errors


def _duplicates(values) -> list:
    return [v for v, n in Counter(values).items() if n > 1]


def _image_problem(path: Path, height: int, width: int) -> str | None:
    try:
        image = read_rgb(path)
    except (FileNotFoundError, ValueError) as err:
        return str(err)
    if tuple(image.shape[1:]) != (height, width):
        return f"{path}: the JSON says {width}x{height}, the file is {image.shape[2]}x{image.shape[1]}"
    return None


def check_images(coco: dict, image_root: Path, report: Report) -> None:
    images = coco["images"]
    jobs = [(image_root / im["file_name"], im["height"], im["width"]) for im in images]
    with ThreadPoolExecutor() as pool:  # decoding releases the GIL
        for problem in pool.map(lambda job: _image_problem(*job), jobs):
            if problem:
                report.error("image", problem)


def check_annotations(coco: dict, classes: list[str], report: Report) -> None:
    images, annotations = coco["images"], coco.get("annotations") or []
    for kind, values in (("image id", [im["id"] for im in images]), ("file name", [im["file_name"] for im in images]),
                         ("annotation id", [a["id"] for a in annotations])):
        for dup in _duplicates(values):
            report.error("duplicate", f"duplicate {kind} {dup!r}")
    try:
        labels = label_map(coco.get("categories", []), classes)
    except UnknownCategoryError:
        labels = {}
        for cat in coco.get("categories", []):
            try:
                labels |= label_map([cat], classes)
            except UnknownCategoryError as err:
                report.error("category", str(err))
    names = {c["id"]: c["name"] for c in coco.get("categories", [])}
    image_ids = {im["id"] for im in images}
    for ann in annotations:
        where = f"annotation {ann['id']} (image {ann['image_id']})"
        if ann["image_id"] not in image_ids:
            report.error("reference", f"{where}: no image with this id")
        if ann["category_id"] not in names:
            report.error("reference", f"{where}: category id {ann['category_id']} is not in 'categories'")
        elif ann["category_id"] in labels:
            report.instances[classes[labels[ann["category_id"]]]] += 1
        seg = ann.get("segmentation")
        if not seg:
            report.warn("empty segmentation", f"{where}: empty segmentation")
        elif isinstance(seg, list):
            bad = sum(is_degenerate_polygon(p) for p in seg)
            if bad:
                report.warn("degenerate polygon", f"{where}: {bad} of {len(seg)} polygon parts have fewer than 3 points")
    if annotations:  # a test split has none at all: nothing to warn about
        annotated = {a["image_id"] for a in annotations}
        for im in images:
            if im["id"] not in annotated:
                report.warn("no annotations", f"image {im['id']} ({im['file_name']}) has no annotations")


def check_dataset(root: str | Path, ann_file: str | Path, classes=CLASSES) -> Report:
    root = Path(root)
    ann_path = root / ann_file
    coco = read_coco(ann_path)
    report = Report(images=len(coco["images"]), annotations=len(coco.get("annotations") or []),
                    synthetic=is_synthetic(coco))
    check_annotations(coco, list(classes), report)
    check_images(coco, root, report)
    return report


def format_report(report: Report, ann_path: Path, classes: list[str]) -> str:
    lines = [f"{ann_path}: {report.images} images, {report.annotations} annotations"]
    if report.synthetic:
        lines.append(synthetic_note(ann_path))
    if report.annotations:  # zeros shown too: a class missing from a split is worth seeing
        lines.append("instances: " + ", ".join(f"{name} {report.instances[name]}" for name in classes[1:]))
    for title, groups in (("ERROR", report.errors), ("warning", report.warnings)):
        for kind, messages in groups.items():
            lines.append(f"{title} ({kind}, {len(messages)}):")
            lines += [f"  {m}" for m in messages[:SHOWN_PER_KIND]]
            if len(messages) > SHOWN_PER_KIND:
                lines.append(f"  ... and {len(messages) - SHOWN_PER_KIND} more")
    lines.append(f"{'FAILED' if report.n_errors else 'OK'}: {report.n_errors} errors, {report.n_warnings} warnings")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a COCO segmentation dataset.")
    parser.add_argument("--root", type=Path, required=True, help="data root (file names are relative to it)")
    parser.add_argument("--ann", type=Path, required=True, help="annotation file, relative to --root unless absolute")
    parser.add_argument("--classes", nargs="+", default=list(CLASSES), help="class list, Background first")
    args = parser.parse_args(argv)
    if not (args.root / args.ann).is_file():  # the loader's message names data.root; here it is --root / --ann
        where = "the folder does not exist" if not args.root.is_dir() else f"no {args.ann} in it"
        print(f"error: annotation file not found: {args.root / args.ann} (--root {args.root}: {where}); give the folder "
              "holding the dataset's JSON files as --root and the file as --ann", file=sys.stderr)
        return 1
    try:
        report = check_dataset(args.root, args.ann, args.classes)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_report(report, args.root / args.ann, args.classes))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
