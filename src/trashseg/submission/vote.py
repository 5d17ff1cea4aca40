"""Pixel-wise weighted hard voting of submission CSVs. Ties go to the earlier CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .csv_format import SubmissionWriter, read_submission


def vote(paths: list[Path], weights: list[float] | None, out: Path, num_classes: int = 11) -> None:
    weights = weights or [1.0] * len(paths)
    if len(weights) != len(paths):
        raise ValueError(f"{len(weights)} weights for {len(paths)} CSVs; give one weight per CSV")
    # A tiny bonus decreasing with the position breaks ties toward the earlier CSV.
    effective = [w + 1e-6 * (len(paths) - i) for i, w in enumerate(weights)]
    readers = [read_submission(p) for p in paths]
    with SubmissionWriter(out) as writer:
        for rows in zip(*readers, strict=True):
            ids = {image_id for image_id, _ in rows}
            if len(ids) != 1:
                raise ValueError(f"the CSVs disagree on the image order: {sorted(ids)}")
            first = rows[0][1]
            scores = np.zeros((num_classes, first.size))
            for w, (_, labels) in zip(effective, rows):
                np.add.at(scores, (labels.ravel(), np.arange(first.size)), w)
            writer.write(rows[0][0], scores.argmax(0).reshape(first.shape))
