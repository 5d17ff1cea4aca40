"""Encoder weights: `pretrained: null | imagenet | PATH`.

`imagenet` downloads through torchvision or smp on a connected machine; offline it stops with
one line saying what to set instead. A PATH loads a local state dict, tolerant of `module.`
and `encoder.` prefixes, and reports missing and unexpected keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("trashseg.models")

# What a failed download raises, depending on the library that tried.
DOWNLOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, RuntimeError, ConnectionError)


class OfflineError(RuntimeError):
    """ImageNet weights were asked for and could not be downloaded."""


def download(what: str, fetch: Callable[[], object]) -> object:
    """Run `fetch` (a download); on a network failure stop with one actionable line."""
    try:
        return fetch()
    except DOWNLOAD_ERRORS as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise OfflineError(
            f"pretrained: imagenet needs to download {what} and that failed ({reason}); this machine may be "
            "offline: set model.pretrained=null or model.pretrained=/path/to/weights.pth"
        ) from None


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "encoder."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def load_local(encoder: nn.Module, path: str | Path, remap: Callable[[dict], dict] | None = None) -> None:
    """Load a state dict file into `encoder` (non-strict) and report what did not match."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path} (model.pretrained takes null, imagenet or a file)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = strip_prefixes(state)
    usable = remap(state) if remap is not None else state
    result = encoder.load_state_dict(usable, strict=False)
    unexpected = sorted(set(state) - set(usable)) + list(result.unexpected_keys)
    loaded = len(usable) - len(result.unexpected_keys)
    log.warning("loaded %d tensors from %s into the encoder; missing %d: %s; unexpected %d: %s", loaded, path,
                len(result.missing_keys), result.missing_keys[:8], len(unexpected), unexpected[:8])
    if loaded == 0:
        raise ValueError(f"{path}: no tensor matches the encoder's parameters (is it weights for another backbone?)")


def check_pretrained(pretrained) -> None:
    if pretrained not in (None, "imagenet") and not isinstance(pretrained, (str, Path)):
        raise ValueError(f"pretrained must be null, 'imagenet' or a file path, not {pretrained!r}")
