"""Disk at the competition's size: the mask cache and the copy-paste crops over every annotation file
the README's loop reads, and best.ckpt / last.ckpt of a 5-fold run; each beside what the previous
scheme wrote.

    python -m trashseg.data.synthetic --out /tmp/disk_data/1x --train 2617 --val 655 --test 0 --size 512
    python -m trashseg.data.kfold --root /tmp/disk_data/1x --folds 5
    python benchmarks/bench_disk.py cache --root /tmp/disk_data/1x
    python benchmarks/bench_disk.py checkpoints --root /tmp/disk_data/1x [--model unet_lite0] [--steps 3]

`cache`: train, val, train_all and the fold files, in that order, into one fresh cache folder: every
mask of each file, then the copy-paste pool of each training file (`--copy-paste` classes). The
previous scheme (cache v1) kept one folder per annotation file with a .npy per image, and one crops
file per training file and class selection: its bytes are computed from the same masks and crops
(an .npy of a 512x512 mask is written once and multiplied; v1's crops are the pool's own bytes).
On-disk figures are allocated blocks (what `du` counts), apparent sizes beside them.

`checkpoints`: `train.py -m` over the 5 folds, a few steps each, then the checkpoint files' sizes;
before this change best.ckpt was a full state like last.ckpt. Swin-B's sizes are arithmetic from its
parameter count (the model built on the meta device).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from trashseg.data import CocoSegmentationDataset
from trashseg.data.copy_paste import CopyPaste
from markdown_row import record

REPO = Path(__file__).resolve().parents[1]
COPY_PASTE = {"rarity": {"class_weights": "rarity"},
              "rare": {"class_weights": {"Battery": 1, "Clothing": 1, "Metal": 1, "Glass": 1, "Paper pack": 1}}}
MB = 1e6


def usage(folder: Path) -> tuple[int, int, int]:
    """(files, allocated bytes, apparent bytes) under `folder`."""
    files = [p.stat() for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return len(files), sum(s.st_blocks * 512 for s in files), sum(s.st_size for s in files)


def npy_entry(mask: np.ndarray, folder: Path) -> tuple[int, int]:
    """(allocated, apparent) bytes of one cache-v1 entry: the mask as an .npy file."""
    path = folder / "v1_entry.npy"
    np.save(path, mask, allow_pickle=False)
    stat = path.stat()
    path.unlink()
    return stat.st_blocks * 512, stat.st_size


def annotation_files(root: Path) -> list[str]:
    folds = sorted(str(p.relative_to(root)) for p in (root / "folds").glob("fold*_*.json"))
    return ["train.json", "val.json", "train_all.json", *folds]


def cache_stage(args) -> None:
    files = annotation_files(args.root)
    training = [f for f in files if f in ("train.json", "train_all.json") or f.endswith("_train.json")]
    work = Path(tempfile.mkdtemp(prefix="bench_disk_", dir=args.work))
    cache = work / "cache"
    rows, v1_masks, v1_crops, v1_entry = [], [0, 0], {name: 0 for name in args.copy_paste}, None
    try:
        for name in files:
            start = time.perf_counter()
            ds = CocoSegmentationDataset(args.root, name, cache_dir=cache)
            opened = time.perf_counter() - start
            before = usage(cache / "v2" / "masks")[0]
            start = time.perf_counter()
            for i in range(len(ds)):
                mask = ds.mask(i)
            masks_s = time.perf_counter() - start
            v1_entry = v1_entry or npy_entry(mask, work)
            v1_masks = [v1_masks[0] + len(ds) * v1_entry[0], v1_masks[1] + len(ds) * v1_entry[1]]
            count, allocated, _ = usage(cache / "v2" / "masks")
            row = [name, len(ds), f"{opened:.1f}", f"{masks_s:.1f}", count - before, f"{allocated / MB:.1f}",
                   f"{v1_masks[0] / MB:.1f}"]
            if name in training:
                for config in args.copy_paste:
                    start = time.perf_counter()
                    pool = CopyPaste.from_source(COPY_PASTE[config], ds).pool
                    row.append(f"{time.perf_counter() - start:.1f}")
                    v1_crops[config] += int((pool.meta[:, 4] * pool.meta[:, 5] * 4).sum())
            else:
                row += ["-"] * len(args.copy_paste)
            _, crops, _ = usage(cache / "v2" / "objects")
            rows.append(row + [f"{crops / MB:.1f}", *(f"{v1_crops[c] / MB:.1f}" for c in args.copy_paste)])
            print(f"{name}: {len(ds)} images, {count - before} new mask entries", flush=True)
        masks = usage(cache / "v2" / "masks")
        crops = usage(cache / "v2" / "objects")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    headers = ["annotation file", "images", "open s", "masks s", "new entries", "v2 masks MB", "v1 masks MB",
               *(f"pool {c} s" for c in args.copy_paste), "v2 crops MB", *(f"v1 crops {c} MB" for c in args.copy_paste)]
    print(f"\n{args.root}: cumulative disk (allocated) after each annotation file, in this order")
    print(tabulate(rows, headers=headers, tablefmt="github"))
    total_images = sum(int(r[1]) for r in rows)
    v1_pools = sum(v1_crops.values())
    summary = [
        ["mask cache", f"{total_images:,} masks in {len(files)} files", f"{v1_masks[0] / MB:,.0f} MB",
         f"{masks[0]:,} entries, {masks[1] / MB:,.1f} MB ({masks[2] / MB:,.1f} MB apparent)", f"{v1_masks[0] / masks[1]:,.0f}x"],
        *[[f"copy-paste crops, `{c}`", f"pools of {len(training)} training files", f"{v1_crops[c] / MB:,.0f} MB",
           "(the entries below)", "-"] for c in args.copy_paste],
        ["copy-paste crops, all selections", f"{crops[0] // 2:,} images (every class of each)", f"{v1_pools / MB:,.0f} MB",
         f"{crops[1] / MB:,.0f} MB", f"{v1_pools / crops[1]:.1f}x"],
        ["total", "", f"{(v1_masks[0] + v1_pools) / MB:,.0f} MB", f"{(masks[1] + crops[1]) / MB:,.0f} MB",
         f"{(v1_masks[0] + v1_pools) / (masks[1] + crops[1]):.1f}x"],
    ]
    print()
    print(tabulate(summary, headers=["what", "of", "v1 (per annotation file)", "v2 (per image)", "v1 / v2"],
                   tablefmt="github"))
    # docs/results/disk.md: date | machine | command | what | of | v1 | v2 | v1 / v2
    record(summary)


def fold_sweep(args, out: Path) -> None:
    folds = ",".join(str(k) for k in range(args.folds))
    command = [sys.executable, "train.py", "-m", "experiment=quickstart", f"model={args.model}", "model.pretrained=null",
               f"data.root={args.root}", f"data.fold={folds}", f"data.cache_dir={out / 'cache'}", "data.num_workers=0",
               "data.batch_size=2", "data.val_batch_size=2", "trainer.max_epochs=1",
               f"trainer.limit_train_batches={args.steps}", "trainer.limit_val_batches=2",
               "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false", "logger=csv",
               f"runs_dir={out / 'runs'}", f"hydra.sweep.dir={out / 'sweep'}"]
    subprocess.run(command, cwd=REPO, check=True, env=dict(os.environ, OMP_NUM_THREADS="2"))


def params_of(model_name: str) -> tuple[int, int]:
    """(every tensor's element count, trainable parameters') of a model config, built on the meta device."""
    import yaml

    from trashseg.models import build_model

    cfg = yaml.safe_load((REPO / "configs" / "model" / f"{model_name}.yaml").read_text())
    with torch.device("meta"):
        model = build_model({**cfg, "pretrained": None}, 11)
    tensors = sum(t.numel() for t in model.state_dict().values())
    return tensors, sum(p.numel() for p in model.parameters() if p.requires_grad)


def checkpoint_stage(args) -> None:
    out = Path(tempfile.mkdtemp(prefix="bench_disk_ckpt_", dir=args.work))
    try:
        start = time.perf_counter()
        fold_sweep(args, out)
        seconds = time.perf_counter() - start
        sizes = []
        for k in range(args.folds):
            folder = out / "sweep" / str(k) / "checkpoints"
            sizes.append(((folder / "best.ckpt").stat().st_size, (folder / "last.ckpt").stat().st_size))
            keys = sorted(torch.load(folder / "best.ckpt", map_location="cpu", weights_only=True))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    best, last = sum(b for b, _ in sizes), sum(l for _, l in sizes)
    print(f"\n{args.model} at 512 px, {args.folds} folds of {args.steps} steps ({seconds:.0f} s); best.ckpt keys: {keys}")
    print(tabulate([[k, f"{b / MB:.1f}", f"{l / MB:.1f}"] for k, (b, l) in enumerate(sizes)],
                   headers=["fold", "best.ckpt MB", "last.ckpt MB"], tablefmt="github"))
    tensors, trainable = params_of(args.model)
    swin, swin_trainable = params_of("upernet_swin_b")
    # AdamW: two fp32 tensors per trainable parameter beside the fp32 weights
    swin_last, swin_best = 4 * (swin + 2 * swin_trainable), 4 * swin
    rows = [
        [f"{args.model}, 5 folds (measured)", f"{tensors / 1e6:.1f} M", f"{2 * last / MB:,.0f} MB",
         f"{(best + last) / MB:,.0f} MB (best {best / args.folds / MB:.1f} + last {last / args.folds / MB:.1f} per fold)",
         f"{2 * last / (best + last):.2f}x"],
        ["upernet_swin_b, 5 folds (arithmetic: 4 B x weights, + 8 B x trainable for AdamW)", f"{swin / 1e6:.1f} M",
         f"{5 * 2 * swin_last / 1e9:.2f} GB", f"{5 * (swin_best + swin_last) / 1e9:.2f} GB (best {swin_best / 1e9:.2f} + "
         f"last {swin_last / 1e9:.2f} GB per fold)", f"{2 * swin_last / (swin_best + swin_last):.2f}x"],
    ]
    print()
    print(tabulate(rows, headers=["run", "parameters", "before (best = last: full state)", "after (best: weights only)",
                                  "before / after"], tablefmt="github"))
    # docs/results/disk.md: date | machine | command | run | parameters | before | after | before / after
    record(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("cache", "checkpoints"))
    parser.add_argument("--root", type=Path, required=True, help="a dataset in the competition's layout, with folds/")
    parser.add_argument("--work", type=Path, default=None, help="where the fresh cache / runs go (default: $TMPDIR); removed after")
    parser.add_argument("--copy-paste", nargs="+", choices=sorted(COPY_PASTE), default=["rare", "rarity"],
                        help="copy-paste class selections whose pools are built (cache stage)")
    parser.add_argument("--model", default="unet_lite0", help="model config of the fold runs (checkpoints stage)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="training steps per fold (checkpoints stage)")
    args = parser.parse_args()
    if not (args.root / "train_all.json").is_file():
        sys.exit(f"error: {args.root} has no train_all.json; generate the data as the docstring shows")
    if not list((args.root / "folds").glob("fold*_train.json")):
        sys.exit(f"error: {args.root}/folds has no fold files; run python -m trashseg.data.kfold --root {args.root}")
    torch.set_num_threads(1)
    cache_stage(args) if args.stage == "cache" else checkpoint_stage(args)


if __name__ == "__main__":
    main()
