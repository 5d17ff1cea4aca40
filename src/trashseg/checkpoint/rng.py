"""The random generators' state that travels with a checkpoint, so a resumed run draws the same
augmentations, dropout masks and stochastic depth as one never stopped.

Tensors and ints only (loadable with weights_only=True). On a CUDA device its own generator too:
dropout and drop-path draw from it there. Only global rank 0 writes checkpoints; every rank was
seeded alike (seed_everything) and makes the same draws, so rank 0's state restores every rank.
A checkpoint written on a GPU and resumed on a CPU (or the reverse) restores the CPU generators only.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def capture(device: torch.device) -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
