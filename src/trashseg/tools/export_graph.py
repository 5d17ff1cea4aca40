"""A checkpoint's network as one exportable graph (uint8 pixels in, logits out), and the
writers of its ONNX and TorchScript files with their metadata.

Exporter choice (torch 2.14): the TorchScript-based ONNX exporter (`dynamo=False`) first: about
1-9 s per model, and it exported with dynamic batch and H x W every model tried (unet_tiny,
unet_resnet34, segformer_mitb0, lraspp_mobilenet, deeplabv3_mobilenet, fcn8s_vgg16,
deeplabv1_vgg16, alexnet_fcn) except DeconvNet (MaxUnpool's `output_size` cannot be traced as a
graph value). The dynamo exporter
(`torch.export`, needs onnxscript) takes 20-60 s per model and fails on SegFormer (smp's MiT
encoder: "Cannot create Dim with inconsistent min=0, max=-oo"), but exports DeconvNet; so it
is the fallback. Both gave logits within 1e-4 of PyTorch at 45x70 and 64x33 on the families
tried (tests/test_export.py covers the first).
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from trashseg.atomic import atomic_write
from trashseg.data.normalize import Normalize
from trashseg.inference.exported import TORCHSCRIPT_METADATA

EXPORTERS = ("auto", "torchscript", "dynamo")
INPUT_NAME, OUTPUT_NAME = "images", "logits"


class ExportError(ValueError):
    """A model that an exporter cannot turn into a file."""


class ExportGraph(nn.Module):
    """uint8 RGB N x 3 x H x W -> float32 logits N x C x H x W: normalisation, pad-to-stride and
    crop inside the graph.

    The padding is computed here as `(-size) % stride` on the input's shape, which the exporters
    record as graph ops; the models' own `pad_to_multiple` (models/base.py) computes it with
    Python arithmetic and skips it with an `if`, which a tracer freezes at the example's size
    (without this padding, an export at 64x96 gave logits off by 2.0 at 45x70). After it the model's
    own pad is a no-op for every input size, so the frozen branch is the right one.
    """

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model
        self.stride = int(getattr(model, "pad_multiple", 1))
        # eval as a whole: the TorchScript-based exporter runs the graph in the wrapper's mode,
        # and a wrapper left in training mode updates the batch-norm statistics of `model`
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        x = F.pad(self.normalize(images), (0, (-w) % self.stride, 0, (-h) % self.stride))
        return self.model(x)[..., :h, :w]


def _trace_onnx(graph: ExportGraph, example: torch.Tensor, path: Path, dynamic_size: bool) -> None:
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=17, input_names=[INPUT_NAME],
                      output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes})


def _dynamo_onnx(graph: ExportGraph, example: torch.Tensor, path: Path, dynamic_size: bool) -> None:
    dim = torch.export.Dim
    dims = {0: dim("batch"), 2: dim("height"), 3: dim("width")} if dynamic_size else {0: dim("batch")}
    # batch 2: torch.export specialises dimensions of size 0 and 1
    torch.onnx.export(graph, (example.expand(2, -1, -1, -1).contiguous(),), str(path), dynamo=True,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes={"images": dims},
                      optimize=True, verbose=False)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def export_onnx_file(graph: ExportGraph, example: torch.Tensor, path: Path, dynamic_size: bool,
                     exporter: str = "auto") -> str:
    """Writes the ONNX graph to `path` (a scratch file); returns the exporter that succeeded."""
    tries = {"auto": ["torchscript", "dynamo"], "torchscript": ["torchscript"], "dynamo": ["dynamo"]}[exporter]
    failures = []
    for name in tries:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # tracer and deprecation warnings about the models' shape arithmetic
                (_trace_onnx if name == "torchscript" else _dynamo_onnx)(graph, example, path, dynamic_size)
            return name
        except Exception as err:  # each exporter fails with its own error types on an unsupported op
            failures.append(f"{name} exporter: {_first_line(err)}")
    raise ExportError(f"the model cannot be exported to ONNX ({'; '.join(failures)}); try --exporter "
                      f"{'dynamo' if exporter != 'dynamo' else 'torchscript'} or --format torchscript")


def write_onnx(src: Path, meta: dict[str, str], out: Path) -> None:
    """The ONNX file at `src` with `meta` as its metadata_props, written atomically to `out`."""
    import onnx

    model = onnx.load(str(src))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    with atomic_write(out) as f:
        f.write(model.SerializeToString())


def export_onnx(graph: ExportGraph, example: torch.Tensor, meta: dict[str, str], out: Path, dynamic_size: bool,
                exporter: str = "auto") -> str:
    """Exports, attaches the metadata and writes `out` whole; returns the exporter used."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        used = export_onnx_file(graph, example, raw, dynamic_size, exporter)
        write_onnx(raw, meta, out)
    return used


def export_torchscript(graph: ExportGraph, example: torch.Tensor, meta: dict[str, str], out: Path) -> None:
    """A traced graph (the tracer records the shape arithmetic: any batch and H x W) with the
    metadata as an `_extra_files` entry, written atomically to `out`."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(graph, (example,), check_trace=False)
    except Exception as err:  # the tracer's errors have no common type
        raise ExportError(f"the model cannot be traced to TorchScript ({_first_line(err)}); export it with "
                          "--format onnx (its dynamo exporter handles it)") from None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks torch.jit deprecated; it still saves
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_METADATA: json.dumps(meta)})
    with atomic_write(out) as f:
        f.write(buffer.getvalue())
