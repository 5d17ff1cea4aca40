"""What dropping a model's unused encoder modules (trashseg.models.prune_unreached) costs and saves:
the probe, once per run when its config is resolved; a build from the recorded `model.dropped`
(every build of the run); the parameters and a training step, side by side with the model as smp
builds it (no record).

    python benchmarks/bench_unused_modules.py [--models unetpp_effb4 pspnet_resnet50 ...] [--size 128] [--rounds 3]

A model is a config of configs/model/ (pretrained: null), or one of PRESETS below. The two variants
take turns round by round, so load from other jobs on a shared machine falls on both alike. Prints
the median build seconds, the median probe seconds (it builds the model once more and runs one
forward at 64 px), the median seconds of one forward + backward of 2 images at --size, the
parameters, then Markdown rows for docs/results/unused_modules.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from markdown_row import record
from trashseg.models import build_model
from trashseg.models.prune_unreached import Dropped
from trashseg.models.registry import unreached_modules

REPO = Path(__file__).resolve().parents[1]
# Models whose encoders keep modules their forward does not use, beyond the zoo's configs.
PRESETS = {
    # timm's EfficientNet features run every block and keep only the first stages' outputs
    "unet_lite0_depth3": ("unet_lite0", {"encoder_depth": 3, "decoder": {"decoder_channels": [64, 32, 16]}}),
}
DEFAULT = ["unetpp_effb4", "pspnet_resnet50", "unet_lite0_depth3", "unet_tiny", "segformer_mitb2", "upernet_swin_b"]


def config(name: str) -> dict:
    base, extra = PRESETS.get(name, (name, {}))
    return {**yaml.safe_load((REPO / "configs" / "model" / f"{base}.yaml").read_text()), "pretrained": None, **extra}


def seconds(run):
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def build(cfg: dict) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(0)
    return seconds(lambda: build_model(cfg, 11))


def step_seconds(model: torch.nn.Module, size: int) -> float:
    model.train()
    x = torch.randn(2, 3, size, size)
    start = time.perf_counter()
    out = model(x)
    (out["out"] if isinstance(out, dict) else out).float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'model':<20} {'variant':<10} {'build s':>8} {'step s':>8} {'params M':>9} dropped")
    for name in args.models:
        cfg = config(name)
        times = {v: {"build": [], "step": []} for v in ("kept", "dropped")}
        probes, info = [], {}
        for _ in range(args.rounds):
            dropped, probe_seconds = seconds(lambda: unreached_modules(cfg, 11))  # once per run
            probes.append(probe_seconds)
            for variant in ("kept", "dropped"):
                model, build_seconds = build({**cfg, "dropped": dropped} if variant == "dropped" else cfg)
                step_seconds(model, args.size)  # warm-up
                times[variant]["build"].append(build_seconds)
                times[variant]["step"].append(step_seconds(model, args.size))
                info[variant] = (sum(p.numel() for p in model.parameters()) / 1e6,
                                 [n for n, m in model.named_modules() if isinstance(m, Dropped)])
        med = {v: {k: statistics.median(t) for k, t in d.items()} for v, d in times.items()}
        probe = statistics.median(probes)
        for variant in ("kept", "dropped"):
            params, dropped = info[variant]
            print(f"{name:<20} {variant:<10} {med[variant]['build']:8.2f} {med[variant]['step']:8.3f} {params:9.2f} "
                  f"{', '.join(dropped) or '-'}")
        build_ratio = med["dropped"]["build"] / med["kept"]["build"]
        step_ratio = med["dropped"]["step"] / med["kept"]["step"]
        print(f"{'':<20} dropped / kept: build {build_ratio:.2f}x, step {step_ratio:.2f}x; probe {probe:.2f} s once per run")
        rows.append([name, f"{info['kept'][0]:.2f} -> {info['dropped'][0]:.2f} M params",
                     f"build {med['kept']['build']:.2f} -> {med['dropped']['build']:.2f} s (**{build_ratio:.2f}x**), "
                     f"probe {probe:.2f} s once per run",
                     f"step {med['kept']['step']:.3f} -> {med['dropped']['step']:.3f} s (**{step_ratio:.2f}x**)",
                     ", ".join(info["dropped"][1]) or "none"])
    record(rows, threads=args.threads)


if __name__ == "__main__":
    main()
