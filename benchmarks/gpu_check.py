"""The GPU check: one call on one GPU machine, one table of what teams train with.

    python benchmarks/gpu_check.py                       # on the GPU machine, about 6-8 minutes
    python benchmarks/gpu_check.py --tiny --device cpu   # the dry run CI's test makes (64 px, a few steps)

Sections (each row: section | setting | figures):
1. the quickstart trained on the GPU in 16-mixed and in bf16-mixed: best val mIoU and s/epoch;
2. training images/s at 512 px, batch 16, for unet_lite0, segformer_mitb2 and upernet_convnext_t in bf16,
   with and without channels_last and torch.compile, the peak GPU memory, and the model FLOPs
   utilisation: images/s x 3 x forward GFLOPs at 512 (counted here as the cost card counts them) over the
   GPU's bf16 peak (--peak-tflops; about 790 on an H200);
3. inference images/s at 512 with hflip TTA through the predictor (a checkpoint of unet_lite0);
4. loader images/s with 4, 8 and 14 workers at 512 px with augment=competition: can it feed the GPU?

Sections past --budget-s are skipped and say so, so one call never outruns its slot. On the GPU
machine (Python 3.12, its own torch): carry the project's other dependencies as wheels
(docs/results/gpu.md lists the command) and run `bash benchmarks/gpu_check.sh`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TRAIN_MODELS = ["unet_lite0", "segformer_mitb2", "upernet_convnext_t"]


def composed(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return OmegaConf.to_container(compose("train", overrides=list(overrides)), resolve=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quickstart(precision: str, args, work: Path) -> list:
    """Best val mIoU and seconds an epoch (wall time of fit over its epochs, start-up included)."""
    from trashseg.training.run import train

    trainer = ["trainer=gpu"] if args.device.type == "cuda" else ["trainer=cpu"]
    tiny = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
            "data.num_workers=0", "data.batch_size=2", "scheduler.warmup_steps=0"] if args.tiny else []
    run_dir = work / f"quickstart_{precision}"
    cfg = OmegaConf.create(composed("experiment=quickstart", *trainer, f"trainer.precision={precision}", "logger=csv",
                                    "trainer.enable_progress_bar=false", f"runs_dir={work / 'runs'}",
                                    f"data.root={args.quickstart_data}", *tiny))
    start = time.perf_counter()
    metrics = train(cfg, run_dir)
    seconds = time.perf_counter() - start
    epochs = int(cfg.trainer.max_epochs)
    return ["quickstart", precision, f"best val mIoU {metrics.get('best/val/mIoU', float('nan')):.4f}",
            f"{seconds / epochs:.2f} s/epoch"]


def logits(out):
    return out["out"] if isinstance(out, dict) else out


def train_speed(name: str, channels_last: bool, compiled: bool, args) -> list:
    """images/s of forward + backward + AdamW in bf16 autocast, the peak memory and the MFU."""
    from trashseg.memory_format import to_channels_last
    from trashseg.tools.model_card import forward_gflops, zoo_model

    device, size, batch = args.device, args.size, args.batch
    torch.manual_seed(0)
    _, model = zoo_model(name)
    model = model.to(device).train()
    gflops = forward_gflops(model, size, device)
    model.train()
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 11, (batch, size, size), device=device)
    if channels_last:
        model, x = to_channels_last(model), x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model, backend=args.compile_backend) if compiled else model

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(logits(forward(x)).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):  # compilation and the allocator's first growth happen here
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    images_per_s = args.steps * batch / (time.perf_counter() - start)
    peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else "-"
    mfu = f"MFU {images_per_s * 3 * gflops / (args.peak_tflops * 1e3):.2%}" if args.peak_tflops else "MFU -"
    setting = f"{name} bf16" + " channels_last" * channels_last + f" compile({args.compile_backend})" * compiled
    return ["train", setting, f"{images_per_s:.4g} img/s", f"{peak}, {gflops:.4g} GFLOPs/img, {mfu}"]


def inference_speed(args, work: Path) -> list:
    """images/s of the predictor (normalise, bf16, hflip TTA, softmax) on a checkpoint of unet_lite0."""
    from trashseg.inference import Predictor, load_checkpoint
    from trashseg.training.module import SegmentationModule

    precision = "bf16-mixed"
    cfg = composed("experiment=quickstart", "model=unet_lite0", "model.pretrained=null", f"trainer.precision={precision}")
    path = work / "unet_lite0.ckpt"
    torch.save({"state_dict": SegmentationModule(cfg).state_dict(), "hyper_parameters": {"cfg": cfg}}, path)
    predictor = Predictor([load_checkpoint(path)], tta="hflip", device=str(args.device))
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, device=args.device)
    sizes = [[args.size, args.size]] * args.batch
    for _ in range(args.warmup):
        list(predictor.probs_per_image(images, sizes))
    sync(args.device)
    start = time.perf_counter()
    for _ in range(args.steps):
        list(predictor.probs_per_image(images, sizes))
    sync(args.device)
    return ["inference", f"unet_lite0 {precision} hflip TTA, batch {args.batch}",
            f"{args.steps * args.batch / (time.perf_counter() - start):.1f} img/s", "probabilities at full size"]


def loader_speed(workers: int, args, root: Path) -> list:
    """images/s the training loader hands over (uint8 images and masks), after its workers started."""
    from trashseg.training.resuming.mid_epoch import TrainingDataModule

    cfg = composed("experiment=quickstart", f"data.root={root}", "augment=competition", f"data.batch_size={args.batch}",
                   f"data.num_workers={workers}", "data.persistent_workers=false")
    if args.tiny:  # competition crops 512 px: at 64 px the crop is the image
        cfg["augment"] = composed("augment=flip")["augment"]
    module = TrainingDataModule(**cfg["data"], augment=cfg["augment"])
    module.setup("fit")
    batches = iter(module.train_dataloader())
    next(batches)
    start, count = time.perf_counter(), 0
    for batch in batches:
        count += len(batch["image"])
    return ["loader", f"{workers} workers, augment={'flip' if args.tiny else 'competition'}, {args.size} px",
            f"{count / (time.perf_counter() - start):.1f} img/s", f"{count} images after the first batch"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="One table of GPU training, inference and loader figures.")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="64 px, batch 2, 2 steps, one model: the CPU dry run")
    p.add_argument("--models", nargs="+", default=None, help=f"default {' '.join(TRAIN_MODELS)} (unet_lite0 with --tiny)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (the dry run uses eager)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the GPU's dense bf16 peak for the MFU (default 790 on an H200 / H100, else none)")
    p.add_argument("--workers", nargs="+", type=int, default=None, help="loader worker counts (default 4 8 14)")
    p.add_argument("--budget-s", type=float, default=420, help="skip the sections that would start past this")
    p.add_argument("--skip", nargs="*", default=[], choices=["quickstart", "train", "inference", "loader"])
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    args.size, args.batch, args.steps, args.warmup = (64, 2, 2, 1) if args.tiny else (512, 16, 10, 3)
    args.models = args.models or (["unet_lite0"] if args.tiny else TRAIN_MODELS)
    args.workers = args.workers or ([0, 1] if args.tiny else [4, 8, 14])
    name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else platform.processor() or "CPU"
    if args.peak_tflops is None and any(gpu in name for gpu in ("H200", "H100")):
        args.peak_tflops = 790.0
    args.machine = name
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    rows: list[list[str]] = []

    def timed(section: str, make) -> None:
        if section in args.skip:
            return
        if time.perf_counter() - start > args.budget_s:
            rows.append([section, "skipped", "-", f"past --budget-s {args.budget_s:g}"])
            return
        rows.append(make())
        print(" | ".join(rows[-1]), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from trashseg.data.synthetic import generate_dataset

        args.quickstart_data = work / "synthetic"  # the quickstart's own generator settings, in a scratch folder
        qs = composed("experiment=quickstart")["data"]["synthetic"]
        small = dict(n_train=8, n_val=4, n_test=2, size=64) if args.tiny else {
            k: qs[k] for k in ("n_train", "n_val", "n_test", "size")}
        generate_dataset(args.quickstart_data, **small, seed=0)
        for precision in (["32-true", "bf16-mixed"] if args.device.type == "cpu" else ["16-mixed", "bf16-mixed"]):
            timed("quickstart", lambda: quickstart(precision, args, work))
        for name in args.models:
            for compiled in (False, True):
                for channels_last in (False, True):
                    timed("train", lambda: train_speed(name, channels_last, compiled, args))
        timed("inference", lambda: inference_speed(args, work))
        if "loader" not in args.skip:
            n = 8 if args.tiny else 320
            big = generate_dataset(work / "loader", n_train=n, n_val=2, n_test=2, size=args.size, seed=0)
            for workers in args.workers:
                timed("loader", lambda: loader_speed(min(workers, os.cpu_count() or 1), args, big))

    print(f"\n{date.today()} | {args.machine}, torch {torch.__version__}, Python {platform.python_version()} | "
          f"python benchmarks/gpu_check.py {' '.join(argv if argv is not None else sys.argv[1:])} | "
          f"{time.perf_counter() - start:.0f} s in all\n")
    print("| section | setting | figure | notes |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
