"""int8 export of an EfficientNet-Lite model (the quantisation-friendly pretrained encoders): its
TF-style "same" padding makes onnxruntime's symbolic shape inference give up (and leave its
half-inferred graph in the working directory); quantisation then falls back to ONNX's own shape
inference, leaves nothing behind, and the int8 file runs at any size."""

import os

import numpy as np
import pytest
import torch

from trashseg.models import build_model
from trashseg.tools.export_graph import ExportGraph, export_onnx
from trashseg.tools.quantize import quantize_int8

pytest.importorskip("onnxruntime")


def test_lite_unet_quantises_at_dynamic_size_and_leaves_no_litter(tmp_path, monkeypatch):
    import onnxruntime as ort

    work = tmp_path / "cwd"
    work.mkdir()
    (work / "mine.onnx").write_bytes(b"a user's file")  # must survive
    monkeypatch.chdir(work)
    torch.manual_seed(0)
    model = build_model({"name": "smp", "arch": "Unet", "encoder_name": "tu-tf_efficientnet_lite0",
                         "decoder": {"decoder_channels": [16, 8, 8, 8, 8]}, "pretrained": None}, 11).eval()
    graph = ExportGraph(model, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    example = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    export_onnx(graph, example, {}, fp32, dynamic_size=True)
    calibration = [torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8) for _ in range(2)]
    quantize_int8(fp32, calibration, {}, int8)
    assert sorted(p.name for p in work.iterdir()) == ["mine.onnx"]
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).integers(0, 256, (1, 3, 45, 70), dtype=np.uint8)
    (logits,) = session.run(None, {"images": images})
    assert logits.shape == (1, 11, 45, 70) and np.isfinite(logits).all()
    with torch.no_grad():
        reference = graph(torch.from_numpy(images)).numpy()
    assert (logits.argmax(1) == reference.argmax(1)).mean() > 0.5  # int8 of untrained logits: rough agreement
