"""Cost card of the model zoo: parameters, GFLOPs and CPU latency for one image.

    python -m trashseg.tools.model_card [--size 512] [--models fcn8s_vgg16 unet_tiny ...] [--out card.csv]

FLOPs come from torch.utils.flop_counter (a multiply-add counts 2), for one image in eval
mode; latency is the median of `--repeats` eval forwards after one warm-up, on this CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from trashseg.models import build_model

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "model"


def cost(name: str, size: int, repeats: int, num_classes: int = 11) -> dict:
    cfg = {**yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text()), "pretrained": None}
    model = build_model(cfg, num_classes).eval()
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return {"model": name, "family": cfg["name"], "params (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "GFLOPs": round(counter.get_total_flops() / 1e9, 2), "CPU latency (ms)": round(1000 * statistics.median(times[1:]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Parameters, GFLOPs and CPU latency of each model config.")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--models", nargs="+", default=sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the table as CSV")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if not (CONFIG_DIR / f"{m}.yaml").is_file()]
    if unknown:
        print(f"error: no config for {', '.join(unknown)} in {CONFIG_DIR}", file=sys.stderr)
        return 2
    rows = []
    for name in args.models:
        rows.append(cost(name, args.size, args.repeats))
        print(f"  {name}: done", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    print(f"{args.size}x{args.size}, batch 1, 11 classes, {torch.get_num_threads()} CPU threads, {day}")
    print(table.to_markdown(index=False))
    if args.out:
        table.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
