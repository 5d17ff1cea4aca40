"""The checkpoint format: reading a file (file), the network it holds behind its normalisation
(network), what Lightning writes and what best.ckpt and last.ckpt hold (lightning_io), and the
random state that travels in it (rng). Where a run keeps its checkpoints: trashseg.run_layout.

This package's top imports no Lightning: inference reads checkpoints without it."""

from .file import CheckpointFileError, read_checkpoint, run_config
from .network import NormalisedNet, load_network

__all__ = ["CheckpointFileError", "NormalisedNet", "load_network", "read_checkpoint", "run_config"]
