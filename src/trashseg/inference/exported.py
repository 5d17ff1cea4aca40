"""Exported models (`python -m trashseg.tools.export`) as a predictor backend: ONNX files run
through onnxruntime, TorchScript files through torch.jit.

Both take uint8 RGB pixels N x 3 x H x W and return float32 logits N x C x H x W, the
normalisation and the pad-to-stride inside the graph, and carry the class list and the run's
training config as metadata (ONNX `metadata_props`, TorchScript `_extra_files`), so a file is
served with the same data config, class check, TTA, ensembling and CSV code as a checkpoint.
"""

from __future__ import annotations

import json
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

CLASSES, CONFIG, SIZE = "trashseg.classes", "trashseg.config", "trashseg.size"
TORCHSCRIPT_METADATA = "trashseg.json"  # the `_extra_files` entry holding the same keys
INPUT = "uint8 N x 3 x H x W RGB 0..255 (normalised inside)"
REEXPORT = "export it again with python -m trashseg.tools.export"


class ModelFileError(ValueError):
    """A --model file that is not an exported trashseg model."""


def metadata(cfg: dict, checkpoint: str | Path, size: tuple[int, int] | None, quantization: str) -> dict[str, str]:
    """The metadata an exported file carries (all values strings, as ONNX metadata_props wants)."""
    return {CLASSES: json.dumps(list(cfg["data"]["classes"])), CONFIG: json.dumps(cfg),
            SIZE: "dynamic" if size is None else f"{size[0]}x{size[1]}", "trashseg.checkpoint": str(checkpoint),
            "trashseg.input": INPUT, "trashseg.output": "float32 logits N x C x H x W",
            "trashseg.quantization": quantization}


def as_pixels(x: torch.Tensor) -> torch.Tensor:
    """The graph's uint8 input; float pixels (after a rescale) are rounded."""
    return x if x.dtype == torch.uint8 else x.round().clamp(0, 255).to(torch.uint8)


class ExportedNet:
    """An exported graph on pixels: a fixed-size graph sees each image resized to its size and
    gives its logits resized back (re-export with --dynamic-size to avoid the resize)."""

    def __init__(self, run, size: tuple[int, int] | None, device: torch.device, name: str):
        self.run, self.size, self.device, self.name = run, size, device, name
        self.warned = False

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        size = tuple(pixels.shape[-2:])
        x = as_pixels(pixels)
        resize = self.size is not None and size != self.size
        if resize:
            if not self.warned:
                print(f"note: {self.name} was exported for {self.size[0]}x{self.size[1]} images; images of other sizes "
                      "are resized to it and back (export with --dynamic-size to avoid this)", file=sys.stderr)
                self.warned = True
            x = as_pixels(F.interpolate(x.float(), size=self.size, mode="bilinear", align_corners=False))
        logits = self.run(x).to(self.device)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False) if resize else logits


def _onnx_runner(session):
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.cpu().numpy()})[0])

    return run


def _torchscript_runner(module: torch.jit.ScriptModule, device: torch.device):
    module = module.to(device)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x.to(device)).float()

    return run


@dataclass
class LoadedExport:
    path: Path
    format: str  # "onnx" or "torchscript"
    meta: dict[str, str]
    cfg: dict
    runtime: object  # an onnxruntime.InferenceSession or a torch.jit.ScriptModule

    @property
    def classes(self) -> list[str]:
        return json.loads(self.meta[CLASSES])

    @property
    def size(self) -> tuple[int, int] | None:
        """The H x W the graph is fixed to; None when it takes any size."""
        return None if self.meta[SIZE] == "dynamic" else tuple(int(v) for v in self.meta[SIZE].split("x"))

    @property
    def quantization(self) -> str:
        return self.meta.get("trashseg.quantization", "none")

    @property
    def run_name(self) -> str:
        return self.path.stem

    def net(self, device: str | torch.device = "cpu") -> ExportedNet:
        device = torch.device(device)
        run = _onnx_runner(self.runtime) if self.format == "onnx" else _torchscript_runner(self.runtime, device)
        return ExportedNet(run, self.size, device, str(self.path))


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session with torch's thread count (the machine's share), all graph
    optimisations on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    # no busy-waiting between runs: a spinning pool holds the cores that torch, the DataLoader
    # workers and post-processing need next (it made torch 15x slower beside it on 2 cores)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _read_onnx(path: Path) -> tuple[object, dict[str, str]]:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ModelFileError("serving an ONNX model needs onnxruntime: pip install -r requirements.txt") from None
    try:
        session = onnx_session(path)
    except Exception as err:  # onnxruntime raises its own pybind exception type for each fault
        raise ModelFileError(f"{path} is not an ONNX model onnxruntime can load ({_first_line(err)}); {REEXPORT}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(uint8)" or len(inputs[0].shape) != 4:
        raise ModelFileError(f"{path} is an ONNX model but not a trashseg export (one uint8 N x 3 x H x W input); {REEXPORT}")
    return session, dict(session.get_modelmeta().custom_metadata_map)


def _read_torchscript(path: Path) -> tuple[object, dict[str, str]]:
    extra = {TORCHSCRIPT_METADATA: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks torch.jit deprecated; it still loads
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as err:
        raise ModelFileError(f"{path} is not a TorchScript model torch can load ({_first_line(err)}); {REEXPORT}") from None
    try:
        meta = json.loads(extra[TORCHSCRIPT_METADATA] or "{}")
    except ValueError:
        meta = {}
    return module.eval(), meta


def _format(path: Path) -> str:
    """By content: TorchScript and training checkpoints are zip archives (TorchScript's holds
    code/), ONNX is a protobuf."""
    if not zipfile.is_zipfile(path):
        return "onnx"
    with zipfile.ZipFile(path) as archive:
        if any("/code/" in name for name in archive.namelist()):
            return "torchscript"
    raise ModelFileError(f"{path} is a training checkpoint, not an exported model; pass it with --checkpoint "
                         f"(or export it: python -m trashseg.tools.export --checkpoint {path} --out model.onnx)")


def load_exported(path: str | Path) -> LoadedExport:
    """An exported model file; one line (FileNotFoundError or ModelFileError) for a missing,
    damaged or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    fmt = _format(path)
    runtime, meta = _read_onnx(path) if fmt == "onnx" else _read_torchscript(path)
    if CLASSES not in meta or CONFIG not in meta or SIZE not in meta:
        raise ModelFileError(f"{path} has no trashseg metadata (class list and training config); {REEXPORT}")
    cfg = json.loads(meta[CONFIG])
    loaded = LoadedExport(path, fmt, meta, cfg, runtime)
    if loaded.classes != list(cfg["data"]["classes"]):
        raise ModelFileError(f"{path}: its class list {loaded.classes} differs from its training config's "
                             f"{cfg['data']['classes']}; the metadata was altered, {REEXPORT}")
    return loaded
