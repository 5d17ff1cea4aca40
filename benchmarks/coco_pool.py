"""One COCO pool from several annotation files (e.g. train + val for k-fold): image ids shifted
past the previous file's so they stay unique, annotation ids renumbered, each file's `file_name`s
given a prefix (its folder relative to the pool's root, or "" when they already are)."""

from __future__ import annotations

import json
from pathlib import Path


def write_pool(parts: list[tuple[Path, str]], out: Path) -> Path:
    """`parts`: (annotation file, file_name prefix) in order; writes the pool to `out`."""
    pool = {"images": [], "annotations": []}
    offset = 0
    for path, prefix in parts:
        coco = json.loads(Path(path).read_text())
        pool.setdefault("categories", coco["categories"])
        ids = {im["id"]: im["id"] + offset for im in coco["images"]}
        pool["images"] += [{**im, "id": ids[im["id"]], "file_name": prefix + im["file_name"]} for im in coco["images"]]
        pool["annotations"] += [{**a, "id": len(pool["annotations"]) + k + 1, "image_id": ids[a["image_id"]]}
                                for k, a in enumerate(coco["annotations"])]
        offset = max(ids.values()) + 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(pool))
    return out
