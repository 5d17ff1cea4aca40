"""Lightning's checkpoint writer, made atomic in the checkpoint's own folder.

Lightning's default saves through an fsspec transaction whose local writer stages the bytes in
$TMPDIR and moves them without fsync: across file systems that move is a copy, and a kill during
it leaves a truncated `last.ckpt` that resume=auto would pick. Here the bytes go to a temporary
file beside the checkpoint, are fsynced and renamed over it (trashseg.atomic); loading goes
through trashseg.checkpoint_file, so a bad file is one line naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from trashseg.atomic import atomic_write
from trashseg.checkpoint_file import read_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_write(Path(path)) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path)  # always weights-only: a checkpoint must never run code
