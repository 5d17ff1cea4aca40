"""Export a checkpoint for serving: ONNX (onnxruntime) or TorchScript, uint8 pixels in, logits
out, optionally quantised to int8, checked against PyTorch on real images.

    python -m trashseg.tools.export --checkpoint runs/a/checkpoints/best.ckpt --format onnx --out models/a.onnx --dynamic-size
    python -m trashseg.tools.export --checkpoint A.ckpt --out models/a_int8.onnx --dynamic-size --quantize int8 --calibration-images 64
    python inference.py --model models/a_int8.onnx --split test --out submissions/a_int8.csv

The check images are the first `--check-images` of the run's val file (or `--data-root`/`--ann`,
like inference.py), calibration images are spread over its train file; `--quantize int8` also
prints val mIoU of the PyTorch checkpoint and of the int8 model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from trashseg.data.kfold import run_annotation
from trashseg.errors import run_or_report
from trashseg.inference.checkpoint import LoadedCheckpoint, load_checkpoint
from trashseg.inference.exported import as_pixels, load_exported, metadata
from trashseg.inference.loop import build_dataset, build_loader, predict_labels
from trashseg.inference.options import check_fold_files
from trashseg.inference.predictor import Net, Predictor
from trashseg.metric import SegmentationMetric

from .export_graph import EXPORTERS, ExportGraph, export_onnx, export_torchscript

FORMATS = ("onnx", "torchscript")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Export a checkpoint to ONNX or TorchScript (uint8 in, logits out).")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--format", default="onnx", choices=FORMATS)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dynamic-size", action="store_true",
                   help="any H x W (ONNX; TorchScript always takes any size); default: fixed to --size")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="fixed H x W (default: the first check image's)")
    p.add_argument("--exporter", default="auto", choices=EXPORTERS,
                   help="ONNX exporter: auto = TorchScript-based, then dynamo if that fails")
    p.add_argument("--quantize", choices=["int8"], help="onnxruntime static int8 quantisation (QDQ), --format onnx only")
    p.add_argument("--calibration-images", type=int, default=32, help="training images that calibrate int8 ranges")
    p.add_argument("--calibration-ann", help="annotation file of calibration images (default: the run's data.train_ann)")
    p.add_argument("--per-tensor", action="store_true", help="one int8 scale per weight tensor instead of per channel")
    p.add_argument("--reduce-range", action="store_true",
                   help="7-bit weights: avoids int8 overflow on x86 CPUs without VNNI (AVX2 / AVX-512F only)")
    p.add_argument("--check-images", type=int, default=8, help="val images of the numerical check against PyTorch")
    p.add_argument("--val-images", type=int, help="with --quantize: val images of the mIoU comparison (default all, 0 skips)")
    p.add_argument("--data-root", type=Path, help="default: the checkpoint's data.root")
    p.add_argument("--ann", help="annotation file of check and val images (default: the checkpoint's data.val_ann)")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Stops before any work on flags that do not go together."""
    if args.quantize and args.format != "onnx":
        raise ValueError("--quantize int8 needs --format onnx (onnxruntime quantises ONNX graphs)")
    if args.dynamic_size and args.size:
        raise ValueError("--size fixes H x W and --dynamic-size frees it; give one of them")
    if args.check_images < 1 or args.calibration_images < 1:
        raise ValueError("--check-images and --calibration-images must be at least 1")
    if args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give a file name, e.g. {args.out / 'model.onnx'}")


def resized(image: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """uint8 1 x 3 x H x W at `size` (bilinear, rounded), unchanged when `size` is None or its own."""
    if size is None or tuple(image.shape[-2:]) == size:
        return image
    return as_pixels(F.interpolate(image.float(), size=size, mode="bilinear", align_corners=False))


def sample_images(ckpt: LoadedCheckpoint, root: Path | None, ann: str | None, count: int, spread: bool) -> list[torch.Tensor]:
    """uint8 1 x 3 x H x W images of an annotation file (default: the run's val file): its first
    `count`, or `count` spread over it."""
    dataset = build_dataset(ckpt.cfg, "test", ckpt.classes, root, ann or run_annotation(ckpt.cfg["data"], "val", root))
    count = min(count, len(dataset))
    picks = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int)) if spread else range(count)
    return [dataset[int(i)]["image"][None] for i in picks]


@torch.inference_mode()
def compare(reference: Net, exported: Net, images: Sequence[torch.Tensor]) -> tuple[float, float]:
    """(largest absolute logit difference, fraction of pixels with the same argmax) over `images`."""
    worst, same, pixels = 0.0, 0, 0
    for image in images:
        a, b = reference(image), exported(image)
        worst = max(worst, float((a - b).abs().max()))
        same += int((a.argmax(1) == b.argmax(1)).sum())
        pixels += a.shape[0] * a.shape[-2] * a.shape[-1]
    return worst, same / pixels


def val_miou(predictor: Predictor, loader, classes: list[str], desc: str) -> float:
    metric = SegmentationMetric(len(classes), classes)
    for item, _, labels in predict_labels(predictor, loader, desc=desc):
        h, w = labels.shape
        metric.update(labels[None].cpu(), item["mask"][:h, :w][None].long())
    return float(metric.compute()["mIoU"])


def file_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def run(args: argparse.Namespace) -> str:
    check_args(args)
    ckpt = load_checkpoint(args.checkpoint)
    data = ckpt.cfg["data"]
    # a fold run's own files: check and val images from its val file, calibration from its train file
    sides = (() if args.ann else ("val",)) + (("train",) if args.quantize and not args.calibration_ann else ())
    check_fold_files(ckpt, sides, args.data_root)
    check = sample_images(ckpt, args.data_root, args.ann, args.check_images, spread=False)
    size = None if args.dynamic_size or args.format == "torchscript" else tuple(args.size or check[0].shape[-2:])
    check = [resized(image, size) for image in check]
    graph = ExportGraph(ckpt.model, data["mean"], data["std"])
    quantization = "none"
    if args.quantize:
        quantization = (f"int8 static QDQ (onnxruntime), {'per-tensor' if args.per_tensor else 'per-channel'} weights"
                        f"{', reduced range' if args.reduce_range else ''}, {args.calibration_images} calibration images")
    meta = metadata(ckpt.cfg, ckpt.path, size, quantization)
    reference = ckpt.net("cpu")
    about = f"{len(check)} image(s) of {args.ann or run_annotation(data, 'val', args.data_root)}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "torchscript":
        export_torchscript(graph, check[0], meta, args.out)
        used = "torch.jit.trace"
    elif not args.quantize:
        used = export_onnx(graph, check[0], meta, args.out, args.dynamic_size, args.exporter)
    else:
        from .quantize import quantize_int8

        calibration = [resized(image, size) for image in sample_images(
            ckpt, args.data_root, args.calibration_ann or run_annotation(data, "train", args.data_root), args.calibration_images, spread=True)]
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            used = export_onnx(graph, check[0], metadata(ckpt.cfg, ckpt.path, size, "none"), fp32, args.dynamic_size,
                               args.exporter)
            diff, agree = compare(reference, load_exported(fp32).net(), check)
            print(f"fp32 ONNX vs PyTorch on {about}: max |logit difference| {diff:.2e}, label agreement {agree:.4%} "
                  f"({file_mb(fp32):.1f} MB)")
            quantize_int8(fp32, calibration, meta, args.out, per_channel=not args.per_tensor,
                          reduce_range=args.reduce_range)
    exported = load_exported(args.out)
    diff, agree = compare(reference, exported.net(), check)
    kind = f"{args.format}{' int8' if args.quantize else ''}"
    print(f"{kind} vs PyTorch on {about}: max |logit difference| {diff:.2e}, label agreement {agree:.4%}")
    if args.quantize and args.val_images != 0:
        loader = build_loader(ckpt.cfg, "val", ckpt.classes, args.data_root, args.ann, batch_size=1, num_workers=0,
                              limit=args.val_images)
        fp32_miou = val_miou(Predictor([ckpt]), loader, ckpt.classes, "PyTorch fp32")
        int8_miou = val_miou(Predictor([exported]), loader, ckpt.classes, "ONNX int8")
        print(f"val mIoU on {len(loader.dataset)} images: PyTorch fp32 {fp32_miou:.4f}, ONNX int8 {int8_miou:.4f} "
              f"(int8 - fp32: {int8_miou - fp32_miou:+.4f})")
    shape = "any H x W" if size is None else f"{size[0]}x{size[1]}"
    return (f"wrote {args.out} ({kind}, {shape}, any batch, {file_mb(args.out):.1f} MB, exporter {used}); serve it with: "
            f"python inference.py --model {args.out} --split test")


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_or_report(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
