"""The CPU training path, side by side in one process: unet_lite0 on 16 x 3 x 128 x 128, forward +
backward + SGD step, at a fixed thread count. Variants: fp32, bf16 autocast, channels_last (weights
and input), both, and torch.compile (inductor) of fp32 and of bf16 + channels_last.

    python benchmarks/bench_cpu_path.py [--threads 1] [--rounds 6] [--no-compile]
    python benchmarks/bench_cpu_path.py --runs 60 [OVERRIDE ...]   # train.py runs alone and two side by side

The variants take turns step by step (round robin), so load from other jobs on a shared machine
falls on all of them alike and the ratios hold where absolute seconds do not. Prints the median
seconds a step and the speed-up over fp32, then Markdown rows for docs/results/cpu_path.md.

`--runs STEPS` times whole training runs instead (`experiment=cpu_recipe_pretrained` on
../shared/data/trashcan, STEPS steps, no validation): one run alone, then two side by side as
before `threads` existed (each takes every core: 2 torch threads and 2 workers on 2 cores), with
`threads=1`, and each pinned to a core of its own (`taskset -c`, so `threads: auto` gives 1 thread
and 1 worker). Steps/s come from Lightning's simple profiler (training batches and the loader's
waits), so start-up does not count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from contextlib import nullcontext

import torch
from torch import nn

from markdown_row import record
from trashseg.models import build_model

REPO = Path(__file__).resolve().parents[1]
TRASHCAN = REPO.parent / "shared" / "data" / "trashcan"
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


def profiled_steps_per_second(log: str) -> float:
    """Steps/s from the simple profiler's table: training batches plus the waits for the loader."""
    totals, calls = {}, {}
    for line in log.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 5 and cells[1] in ("run_training_batch", "[_TrainingEpochLoop].train_dataloader_next"):
            totals[cells[1]], calls[cells[1]] = float(cells[4]), int(cells[3])
    if "run_training_batch" not in totals:
        raise RuntimeError("no profiler table in the run's output:\n" + log[-2000:])
    return calls["run_training_batch"] / sum(totals.values())


def train_run(steps: int, overrides: list[str], prefix: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([*prefix, sys.executable, "train.py", "experiment=cpu_recipe_pretrained",
                               "trainer.enable_progress_bar=false", "trainer.max_time=null", f"++trainer.max_steps={steps}",
                               "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "++trainer.profiler=simple",
                               f"hydra.run.dir={tmp}/run", *overrides], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: train.py {' '.join(overrides)} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return profiled_steps_per_second(done.stdout + done.stderr)


def side_by_side(steps: int, overrides: list[str]) -> None:
    if not TRASHCAN.is_dir():
        sys.exit(f"error: {TRASHCAN} not found; --runs trains on the TrashCan data")
    cores = sorted(os.sched_getaffinity(0))
    setups = [  # name, [(extra overrides, command prefix) per run]; the new way first, on a busy machine
        ("alone (auto: every core)", [([], [])]),
        ("two side by side, pinned (taskset -c, auto)", [([], ["taskset", "-c", str(cores[i % len(cores)])]) for i in range(2)]),
        ("two side by side, threads=1", [(["threads=1"], [])] * 2),
        ("two side by side, as before (each every core)", [([], [])] * 2),
    ]
    rates = {}
    for name, runs in setups:
        load = os.getloadavg()[0]
        with ThreadPoolExecutor(len(runs)) as pool:
            rates[name] = list(pool.map(lambda run: train_run(steps, overrides + run[0], run[1]), runs))
        print(f"{name}: {' / '.join(f'{r:.3f}' for r in rates[name])} steps/s each "
              f"(load average {load:.1f} at the start)", flush=True)
    alone = rates[setups[0][0]][0]
    print(f"\ncpu_recipe_pretrained, {steps} steps a run, {len(cores)} cores; each run's speed as a share of one run alone:")
    for name, each in rates.items():
        print(f"  {name:50s} {statistics.mean(each):.3f} steps/s each, {statistics.mean(each) / alone:.2f}x alone, "
              f"{sum(each) / alone:.2f}x alone in all")
    record([[name, " / ".join(f"{r:.3f}" for r in each), f"{statistics.mean(each) / alone:.2f}x", f"{sum(each) / alone:.2f}x"]
            for name, each in rates.items()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=6, help="timed steps of each variant (after 2 warm-up steps)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variants")
    parser.add_argument("--compile-only", action="store_true", help="fp32 and the torch.compile variants only")
    parser.add_argument("--runs", type=int, metavar="STEPS", help="time train.py runs alone and side by side instead")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every --runs run")
    args = parser.parse_args()
    if args.runs:
        side_by_side(args.runs, args.overrides)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    seed_model = build_model(MODEL, CLASSES)
    images = torch.randn(args.batch, 3, args.size, args.size)
    masks = torch.randint(0, CLASSES, (args.batch, args.size, args.size))
    plans = [("fp32", False, False, False), ("bf16 autocast", True, False, False), ("channels_last", False, True, False),
             ("bf16 + channels_last", True, True, False)]
    compiled = [("compile fp32", False, False, True), ("compile bf16 + channels_last", True, True, True)]
    if args.compile_only:  # the compile warm-up takes minutes: measure it apart, against fp32
        plans = plans[:1] + compiled
    elif not args.no_compile:
        plans += compiled
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
