"""CPU images per second of the predictor without TTA and with hflip, side by side.

    python benchmarks/bench_inference.py [--model unet_tiny] [--size 512] [--images 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from trashseg.inference import LoadedCheckpoint, Predictor
from trashseg.models import build_model
from markdown_row import record

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet_tiny")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cfg = {**yaml.safe_load((CONFIGS / f"{args.model}.yaml").read_text()), "pretrained": None}
    ckpt = LoadedCheckpoint(Path(args.model), build_model(cfg, 11).eval(),
                            {"data": {"classes": [str(i) for i in range(11)], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}})
    images = torch.randint(0, 255, (args.images, 3, args.size, args.size), dtype=torch.uint8)
    predictors = {tta: Predictor([ckpt], tta=tta) for tta in ("none", "hflip")}
    predictors["none"].predict(images[:1])  # warm-up
    times = {tta: [] for tta in predictors}
    for _ in range(args.rounds):
        for tta, predictor in predictors.items():
            start = time.perf_counter()
            for image in images:
                predictor.predict(image[None])
            times[tta].append(time.perf_counter() - start)
    none, hflip = (args.images / statistics.median(times[t]) for t in ("none", "hflip"))
    print(f"{args.model}, {args.size}x{args.size}, batch 1, {torch.get_num_threads()} CPU threads")
    print(f"no TTA {none:.2f} images/s, hflip {hflip:.2f} images/s: hflip costs {none / hflip:.2f}x")
    # docs/results/inference.md (TTA cost): date | machine | command | model | no TTA | hflip | hflip costs
    record([[f"{args.model} at {args.size} px, batch 1", f"{none:.2f} images/s", f"{hflip:.2f} images/s",
             f"**{none / hflip:.2f}x**"]], threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
