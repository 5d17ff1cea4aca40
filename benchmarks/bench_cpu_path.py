"""The CPU training path, side by side in one process: unet_lite0 on 16 x 3 x 128 x 128, forward +
backward + SGD step, at a fixed thread count. Variants: fp32, bf16 autocast, channels_last (weights
and input), both, and torch.compile (inductor) of fp32 and of bf16 + channels_last.

    python benchmarks/bench_cpu_path.py [--threads 1] [--rounds 6] [--no-compile]

The variants take turns step by step (round robin), so load from other jobs on a shared machine
falls on all of them alike and the ratios hold where absolute seconds do not. Prints the median
seconds a step and the speed-up over fp32, then Markdown rows for docs/results/cpu_path.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
from torch import nn

from markdown_row import record
from trashseg.models import build_model

MODEL = {"name": "smp", "arch": "Unet", "encoder_name": "tu-tf_efficientnet_lite0", "encoder_depth": 5, "pretrained": None}
CLASSES = 11


class Variant:
    """One way of running the same training step; its own copy of the model and optimizer."""

    def __init__(self, name: str, bf16: bool, channels_last: bool, compile: bool, seed_model: nn.Module):
        self.name, self.bf16, self.channels_last = name, bf16, channels_last
        self.model = build_model(MODEL, CLASSES)
        self.model.load_state_dict(seed_model.state_dict())  # every variant starts from the same weights
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.forward = torch.compile(self.model) if compile else self.model
        self.seconds: list[float] = []

    def step(self, images: torch.Tensor, masks: torch.Tensor) -> float:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else nullcontext():
            loss = nn.functional.cross_entropy(self.forward(images).float(), masks)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        seconds = time.perf_counter() - start
        self.seconds.append(seconds)
        return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=6, help="timed steps of each variant (after 2 warm-up steps)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variants")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    seed_model = build_model(MODEL, CLASSES)
    images = torch.randn(args.batch, 3, args.size, args.size)
    masks = torch.randint(0, CLASSES, (args.batch, args.size, args.size))
    plans = [("fp32", False, False, False), ("bf16 autocast", True, False, False), ("channels_last", False, True, False),
             ("bf16 + channels_last", True, True, False)]
    if not args.no_compile:
        plans += [("compile fp32", False, False, True), ("compile bf16 + channels_last", True, True, True)]
    variants = [Variant(*plan, seed_model=seed_model) for plan in plans]
    for v in variants:  # warm-up: allocator, oneDNN primitive caches, and the compile itself (timed apart)
        start = time.perf_counter()
        first_loss = v.step(images, masks)
        v.step(images, masks)
        print(f"{v.name}: warm-up {time.perf_counter() - start:.1f} s (2 steps), first loss {first_loss:.4f}", flush=True)
        v.seconds.clear()
    for _ in range(args.rounds):  # round robin: a busy spell on a shared machine hits every variant alike
        for v in variants:
            v.step(images, masks)
    base = statistics.median(variants[0].seconds)
    print(f"\nunet_lite0, {args.batch} x 3 x {args.size} x {args.size}, forward + backward + SGD, "
          f"{args.threads} thread(s), median of {args.rounds} steps:")
    for v in variants:
        median = statistics.median(v.seconds)
        print(f"  {v.name:30s} {median:6.2f} s/step  {base / median:4.2f}x fp32")
    record([[v.name, f"{statistics.median(v.seconds):.2f}", f"{base / statistics.median(v.seconds):.2f}x"] for v in variants],
           threads=args.threads)


if __name__ == "__main__":
    main()
