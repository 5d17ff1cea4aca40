"""Cost card of the model zoo: parameters, GFLOPs and CPU latency for one image.

    python -m trashseg.tools.model_card [--size 512] [--models fcn8s_vgg16 unet_tiny ...] [--exported] [--out card.csv]

FLOPs come from torch.utils.flop_counter (a multiply-add counts 2), for one image in eval
mode; latency is the median of `--repeats` eval forwards after one warm-up, on this CPU, with
torch's thread count. `--exported` adds the latency and file size of the model exported to
ONNX fp32 and int8 (`trashseg.tools.export`'s graph, fixed to the card's size, run by
onnxruntime with the same thread count); the int8 ranges are calibrated on random images,
which changes neither the latency nor the size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from trashseg.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from trashseg.inference.exported import onnx_session
from trashseg.models import build_model
from trashseg.models.registry import with_dropped_record

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "model"
CALIBRATION_IMAGES = 4


def median_ms(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls after one warm-up, in ms."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def zoo_model(name: str, num_classes: int = 11) -> tuple[dict, torch.nn.Module]:
    cfg = {**yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text()), "pretrained": None}
    cfg = with_dropped_record(cfg, num_classes)  # as a new run builds it: without the modules the probe drops
    return cfg, build_model(cfg, num_classes).eval()


def onnx_costs(model: torch.nn.Module, size: int, repeats: int) -> dict:
    """Latency (ms) and file size (MB) of the model exported to ONNX fp32 and int8."""
    from .export_graph import ExportGraph, export_onnx
    from .quantize import quantize_int8

    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, generator=generator)
              for _ in range(CALIBRATION_IMAGES)]
    row = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        export_onnx(ExportGraph(model, IMAGENET_MEAN, IMAGENET_STD), images[0], {}, fp32, dynamic_size=False)
        quantize_int8(fp32, images, {}, int8)
        for label, path in (("fp32", fp32), ("int8", int8)):
            session = onnx_session(path)
            feed = {session.get_inputs()[0].name: images[0].numpy()}
            row[f"ONNX {label} latency (ms)"] = round(median_ms(lambda: session.run(None, feed), repeats))
            row[f"ONNX {label} size (MB)"] = round(path.stat().st_size / 1e6, 1)
    return row


def forward_gflops(model: torch.nn.Module, size: int, device: str | torch.device = "cpu") -> float:
    """One image's eval forward at size x size (a multiply-add counts 2); the model is left in eval mode."""
    x = torch.randn(1, 3, size, size, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return counter.get_total_flops() / 1e9


def cost(name: str, size: int, repeats: int, num_classes: int = 11, exported: bool = False) -> dict:
    cfg, model = zoo_model(name, num_classes)
    gflops = forward_gflops(model, size)
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        latency = median_ms(lambda: model(x), repeats)
    row = {"model": name, "family": cfg["name"], "params (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
           "GFLOPs": round(gflops, 2), "CPU latency (ms)": round(latency)}
    return {**row, **onnx_costs(model, size, repeats)} if exported else row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Parameters, GFLOPs and CPU latency of each model config.")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--models", nargs="+", default=sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--exported", action="store_true",
                        help="add latency and file size of ONNX fp32 and int8 exports (slower: exports and quantises each model)")
    parser.add_argument("--out", type=Path, help="also write the table as CSV")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if not (CONFIG_DIR / f"{m}.yaml").is_file()]
    if unknown:
        print(f"error: no config for {', '.join(unknown)} in {CONFIG_DIR}", file=sys.stderr)
        return 2
    rows = []
    for name in args.models:
        rows.append(cost(name, args.size, args.repeats, exported=args.exported))
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
