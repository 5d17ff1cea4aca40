"""int8 static quantisation of an exported ONNX model with onnxruntime: QDQ format (quantise /
dequantise pairs around each op, which onnxruntime's CPU provider fuses into integer kernels),
activations uint8 with ranges calibrated (min/max) on real images, weights int8 per output
channel (one scale per convolution filter: filters of very different magnitudes keep their
precision, which per-tensor scales lose)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from .export_graph import INPUT_NAME, write_onnx


def _calibration_reader(images: Sequence[torch.Tensor]):
    from onnxruntime.quantization import CalibrationDataReader

    class ImageReader(CalibrationDataReader):
        """One uint8 1 x 3 x H x W image per calibration step."""

        def __init__(self):
            self.images = iter(images)

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {INPUT_NAME: image.numpy()}

    return ImageReader()


class _UndecidedShapeNoise(logging.Filter):
    """Drops symbolic shape inference's "Unable to determine if height <= Pad_52_o0__d2, treat as
    equal": one warning per padded dimension of a dynamic-size graph, about symbols it cannot
    compare; the fp32 output shapes are restored afterwards (_with_fp32_shapes) either way."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Unable to determine if")


@contextmanager
def _quiet_shape_inference() -> Iterator[None]:
    logger, noise = logging.getLogger("onnxruntime.tools.symbolic_shape_infer"), _UndecidedShapeNoise()
    logger.addFilter(noise)
    try:
        yield
    finally:
        logger.removeFilter(noise)


def _with_fp32_shapes(quantized: Path, fp32: Path) -> None:
    """Gives the int8 file (in place) the fp32 graph's output types and no inferred shapes.

    quant_pre_process's symbolic shape inference labels the crop after pad-to-stride with the
    padded input's dims (`logits` became `Pad_75_o0__d2` x `Pad_75_o0__d3`), so onnxruntime
    planned padded buffers and warned "Shape mismatch attempting to re-use buffer" on every image
    whose sides are not multiples of the stride. The fp32 graph declares no inner shapes either:
    onnxruntime infers its own when it loads the file."""
    import onnx

    model, declared = onnx.load(str(quantized)), {o.name: o.type for o in onnx.load(str(fp32)).graph.output}
    for output in model.graph.output:
        output.type.CopyFrom(declared[output.name])
    del model.graph.value_info[:]
    onnx.save(model, str(quantized))


def quantize_int8(fp32: Path, images: Sequence[torch.Tensor], meta: dict[str, str], out: Path,
                  per_channel: bool = True, reduce_range: bool = False) -> None:
    """Writes the int8 model of the fp32 ONNX file `fp32` to `out` (atomically, with `meta`),
    calibrated on `images` (uint8 1 x 3 x H x W each)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not images:
        raise ValueError("--quantize int8 needs calibration images; give --calibration-images N with N >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        # shape inference and graph optimisation (batch-norm folding) first, as onnxruntime advises
        before = set(Path.cwd().iterdir())
        try:
            with _quiet_shape_inference():
                quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
        except Exception as err:  # onnxruntime raises a bare Exception when symbolic inference gives up
            if "symbolic shape inference" not in str(err):
                raise
            # ... after saving its half-inferred graph (and the weights beside it) into the working directory
            for litter in set(Path.cwd().iterdir()) - before:
                if litter.suffix in (".onnx", ".data") and litter.is_file():
                    litter.unlink()
            # TF-style "same" padding (EfficientNet-Lite) computes its pads from the input size at run
            # time, which the symbolic pass cannot follow; ONNX's own shape inference still can.
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(quantized), _calibration_reader(images), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                        reduce_range=reduce_range, calibrate_method=CalibrationMethod.MinMax)
        _with_fp32_shapes(quantized, fp32)
        write_onnx(quantized, meta, out)
