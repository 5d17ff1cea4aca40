"""Writing the CSV for 819 random 256x256 masks: ours (streamed, vectorised rows) against the
baseline method (' '.join(str(e) for e in row) per image, rows gathered into a DataFrame),
side by side in one run.

    python benchmarks/bench_submission.py [--images 819] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from trashseg.submission import SubmissionWriter
from markdown_row import record


def baseline(masks, names, path: Path) -> None:
    rows = []
    for name, mask in zip(names, masks):
        rows.append({"image_id": name, "PredictionString": " ".join(str(e) for e in mask.flatten().tolist())})
    pd.DataFrame(rows).to_csv(path, index=False)


def ours(masks, names, path: Path) -> None:
    with SubmissionWriter(path) as writer:
        for name, mask in zip(names, masks):
            writer.write(name, mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=819)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 11, (256, 256), dtype=np.uint8) for _ in range(args.images)]
    names = [f"batch_01_vt/{i:04d}.jpg" for i in range(args.images)]
    times = {"baseline": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, fn in (("baseline", baseline), ("ours", ours)):
                start = time.perf_counter()
                fn(masks, names, Path(tmp) / f"{name}.csv")
                times[name].append(time.perf_counter() - start)
        same = pd.read_csv(Path(tmp) / "baseline.csv").equals(pd.read_csv(Path(tmp) / "ours.csv"))
        size = (Path(tmp) / "ours.csv").stat().st_size / 1e6
    base, mine = statistics.median(times["baseline"]), statistics.median(times["ours"])
    print(f"{args.images} masks of 256x256, {size:.0f} MB CSV, identical content: {same}")
    print(f"baseline {base:.2f} s, ours {mine:.2f} s: {base / mine:.1f}x faster")
    # docs/results/submission_csv.md: date | machine | command | masks | baseline | ours | speed-up | content
    record([[f"{args.images} of 256x256", f"{base:.2f} s", f"{mine:.2f} s", f"**{base / mine:.1f}x**",
             "identical" if same else "DIFFERENT"]])


if __name__ == "__main__":
    main()
