"""The one precision mapping: what a run trains in, and what its checkpoint predicts in.

`trainer.precision: auto` (configs/trainer/gpu.yaml) is resolved for the machine the run starts on
(resolve_precision):

bf16-mixed where the GPU computes in bfloat16 natively (NVIDIA Ampere and later): float32's range,
so no loss scaling and no overflow; else 16-mixed (float16 with Lightning's GradScaler). On a CPU,
32-true. Resolved before the run's config is written, so `config.yaml` and every checkpoint record
the precision the run trained in, which is what inference reads (autocast_dtype).
"""

from __future__ import annotations

import torch

AUTO = "auto"


def _uses_cuda(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(trainer: dict) -> str:
    """The precision `trainer` (the run's trainer config) trains in: `trainer["precision"]` itself
    unless it is `auto`, or `16-mixed` off CUDA."""
    precision = str(trainer.get("precision", "32-true"))
    cuda = _uses_cuda(str(trainer.get("accelerator", "auto")))
    if precision == "16-mixed" and not cuda:
        return "bf16-mixed"  # what Lightning trains a CPU run of 16-mixed in (it has no float16 autocast there)
    if precision != AUTO:
        return precision
    if not cuda:
        return "32-true"
    # including_emulation=False: older GPUs emulate bf16 through float32, slower than 16-mixed
    native_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return "bf16-mixed" if native_bf16 else "16-mixed"


def autocast_dtype(precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype that predicts as a run of `precision` (its trainer.precision) trained, on
    `device`; None: float32. float16 only on CUDA: CPUs have no fast float16 kernels (Lightning
    itself trains a CPU run of 16-mixed in bf16-mixed), and float32 holds every float16 value."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision in ("16-mixed", "16-true", "16", "half") and device.type == "cuda":
        return torch.float16
    return None
