"""Torch fp32 vs ONNX fp32 vs ONNX int8, side by side: CPU latency at 512 px (batch 1, torch's
thread count, rounds interleaved so machine noise hits every variant alike), file size, label
agreement with torch on real images; with --checkpoint also val mIoU of fp32 vs int8.

    python benchmarks/bench_export.py [--models unet_tiny lraspp_mobilenet deeplabv3_mobilenet] [--rounds 5] [--images 8] [--threads 2]
    python benchmarks/bench_export.py --checkpoint runs/trashcan_curve/<run>/checkpoints/best.ckpt [--val-images 200]

Zoo models are random-initialised (their agreement only says how int8 rounding treats untrained
logits); images come from ../shared/data/recycle-sample (512 px), calibration from its train
file and agreement from its val file. A checkpoint brings its own data config and weights.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from trashseg.inference import LoadedCheckpoint, Predictor, load_checkpoint
from trashseg.inference.exported import load_exported, metadata
from trashseg.inference.loop import build_loader
from trashseg.data.kfold import run_annotation
from trashseg.tools.export import compare, resized, sample_images, val_miou
from trashseg.tools.export_graph import ExportGraph, export_onnx
from trashseg.tools.model_card import zoo_model
from trashseg.tools.quantize import quantize_int8

from markdown_row import record

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "recycle-sample"


def zoo_checkpoint(name: str) -> LoadedCheckpoint:
    """A random-initialised zoo model with recycle-sample as its data config."""
    data = {**yaml.safe_load((REPO / "configs" / "data" / "recycle.yaml").read_text()), "root": str(SAMPLE)}
    cfg, model = zoo_model(name, len(data["classes"]))
    return LoadedCheckpoint(Path(name), model, {"data": data, "model": cfg})


def torch_mb(model: torch.nn.Module) -> float:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6


def measure(ckpt: LoadedCheckpoint, size: int, images: int, rounds: int, val_images: int | None,
            ann: str | None = None, calibration_ann: str | None = None) -> dict:
    check = [resized(i, (size, size)) for i in sample_images(ckpt, None, ann, images, spread=False)]
    calibration = [resized(i, (size, size)) for i in sample_images(ckpt, None, calibration_ann or run_annotation(ckpt.cfg["data"], "train"),
                                                                    images, spread=True)]
    dynamic = val_images is not None  # val images of any size go through the file as they are
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        fixed = None if dynamic else (size, size)
        start = time.perf_counter()
        export_onnx(ExportGraph(ckpt.model, ckpt.cfg["data"]["mean"], ckpt.cfg["data"]["std"]), check[0],
                    metadata(ckpt.cfg, ckpt.path, fixed, "none"), fp32, dynamic_size=dynamic)
        export_s = time.perf_counter() - start
        start = time.perf_counter()
        quantize_int8(fp32, calibration, metadata(ckpt.cfg, ckpt.path, fixed, "int8"), int8)
        quantize_s = time.perf_counter() - start
        nets = {"torch fp32": ckpt.net(), "onnx fp32": load_exported(fp32).net(), "onnx int8": load_exported(int8).net()}
        x = check[0]
        times = {name: [] for name in nets}
        with torch.inference_mode():
            for net in nets.values():
                net(x)  # warm-up
            for _ in range(rounds):
                for name, net in nets.items():
                    start = time.perf_counter()
                    net(x)
                    times[name].append(time.perf_counter() - start)
        row = {"model": ckpt.path.name if ckpt.path.suffix != ".ckpt" else str(ckpt.path),
               **{f"{name} ms": round(1000 * statistics.median(t)) for name, t in times.items()},
               "torch fp32 MB": round(torch_mb(ckpt.model), 1), "onnx fp32 MB": round(fp32.stat().st_size / 1e6, 1),
               "onnx int8 MB": round(int8.stat().st_size / 1e6, 1),
               "fp32 agreement": round(compare(nets["torch fp32"], nets["onnx fp32"], check)[1], 5),
               "int8 agreement": round(compare(nets["torch fp32"], nets["onnx int8"], check)[1], 5),
               "export s": round(export_s, 1), "quantise s": round(quantize_s, 1)}
        row["int8 speed-up vs torch"] = round(row["torch fp32 ms"] / row["onnx int8 ms"], 2)
        if val_images is not None:
            loader = build_loader(ckpt.cfg, "val", ckpt.classes, ann=ann, batch_size=1, num_workers=0,
                                  limit=val_images or None)
            row["val images"] = len(loader.dataset)
            row["val mIoU torch fp32"] = round(val_miou(Predictor([ckpt]), loader, ckpt.classes, "torch fp32"), 4)
            row["val mIoU onnx int8"] = round(val_miou(Predictor([load_exported(int8)]), loader, ckpt.classes, "int8"), 4)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["unet_tiny", "lraspp_mobilenet", "deeplabv3_mobilenet"])
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint instead of the zoo models: adds val mIoU")
    parser.add_argument("--val-images", type=int, default=0, help="with --checkpoint: val images (0 = all)")
    parser.add_argument("--ann", help="with --checkpoint: val file (default its data.val_ann; a fold run: folds/foldK_val.json)")
    parser.add_argument("--calibration-ann", help="with --checkpoint: calibration file (default the run's training file: data.train_ann, or its fold's)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=8, help="calibration images and agreement images")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch's threads, which the onnxruntime sessions follow")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.checkpoint is None and not SAMPLE.is_dir():
        print(f"error: {SAMPLE} not found (the zoo rows take their images from it); give --checkpoint", file=sys.stderr)
        return 2
    sources = [load_checkpoint(args.checkpoint)] if args.checkpoint else [zoo_checkpoint(m) for m in args.models]
    rows = []
    for ckpt in sources:
        rows.append(measure(ckpt, args.size, args.images, args.rounds, args.val_images if args.checkpoint else None,
                            args.ann, args.calibration_ann))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.size}x{args.size}, batch 1, {torch.get_num_threads()} CPU threads, median of {args.rounds} interleaved rounds")
    import pandas as pd

    print(pd.DataFrame(rows).to_markdown(index=False))
    record([list(r.values()) for r in rows], threads=torch.get_num_threads())
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
