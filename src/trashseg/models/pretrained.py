"""Encoder weights: `pretrained: null | imagenet | PATH`.

`imagenet` downloads through torchvision or smp on a connected machine; offline it stops with
one line saying what to set instead. A PATH loads a local state dict into the encoder: wrapper
prefixes (`module.`, `model.`, `encoder.`, `backbone.`, `features.`) are stripped until a key
names an encoder tensor, and missing, unexpected and wrongly shaped keys are reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

log = logging.getLogger("trashseg.models")

T = TypeVar("T")

# What a failed download raises: urllib's URLError, requests' and huggingface_hub's errors
# (offline mode, HTTP, entry not in the local cache) all derive from OSError.
DOWNLOAD_ERRORS: tuple[type[BaseException], ...] = (OSError,)

# Prefixes that wrappers put in front of an encoder's keys: DataParallel/DDP, a Lightning module
# (`model.`), our own models (`encoder.`), torchvision segmentation models and classifiers.
WRAPPER_PREFIXES = ("module.", "model.", "encoder.", "backbone.", "features.")


class OfflineError(RuntimeError):
    """ImageNet weights were asked for and could not be downloaded."""


def check_pretrained(pretrained: object) -> None:
    if pretrained is not None and not isinstance(pretrained, (str, Path)):
        raise ValueError(f"model.pretrained must be null, imagenet or a file path, not {pretrained!r}")


def download(what: str, fetch: Callable[[], T]) -> T:
    """Run `fetch` (a download); on a network failure stop with one actionable line."""
    try:
        return fetch()
    except DOWNLOAD_ERRORS as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise OfflineError(
            f"pretrained: imagenet needs to download {what} and that failed ({reason}); this machine may be "
            "offline: set model.pretrained=null or model.pretrained=/path/to/weights.pth"
        ) from None


def match_keys(state: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, str]:
    """source key -> target key, stripping wrapper prefixes from a key until it names a target."""
    matched = {}
    for source in state:
        key = source
        while key not in targets:
            prefix = next((p for p in WRAPPER_PREFIXES if key.startswith(p)), None)
            if prefix is None:
                break
            key = key.removeprefix(prefix)
        if key in targets:
            matched[source] = key
    return matched


def load_local(encoder: nn.Module, path: str | Path) -> None:
    """Load a state dict file (or a checkpoint holding `state_dict`) into `encoder`, report the rest."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path} (model.pretrained takes null, imagenet or a file)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    targets = encoder.state_dict()
    matched = match_keys(state, targets)
    usable = {dst: state[src] for src, dst in matched.items() if state[src].shape == targets[dst].shape}
    wrong_shape = sorted(src for src, dst in matched.items() if dst not in usable)
    unexpected = sorted(set(state) - set(matched))
    missing = sorted(set(targets) - set(usable))
    if not usable:
        raise ValueError(f"{path}: no tensor matches the encoder's keys and shapes (weights for another backbone?)")
    encoder.load_state_dict(usable, strict=False)
    log.warning(
        "loaded %d tensors from %s into the encoder; missing %d: %s; unexpected %d: %s; wrong shape %d: %s",
        len(usable), path, len(missing), missing[:8], len(unexpected), unexpected[:8], len(wrong_shape), wrong_shape[:8],
    )
