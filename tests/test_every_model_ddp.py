"""Every model config trains under DDP: built as a new run builds it (from its config with the
`model.dropped` record the probe makes), after one forward and backward every trainable parameter
has a gradient (DDP with find_unused_parameters=False stops at the second step otherwise); the same
record builds it under torch.inference_mode(); and a model that had unused encoder modules takes
two 2-process gloo DDP steps through train.py."""

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from trashseg.models import build_model
from trashseg.models.registry import with_dropped_record

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs" / "model").glob("*.yaml"))
NUM_CLASSES = 11
# The smallest input each model takes: AlexNet's last 3x3 max-pool needs more than 1/32 of 32 px.
SIZE = {"alexnet_fcn": 64}


def model_config(name: str, **overrides) -> dict:
    return {**yaml.safe_load((REPO / "configs" / "model" / f"{name}.yaml").read_text()), "pretrained": None, **overrides}


@functools.cache
def _recorded(name: str, aux_loss: bool | None) -> str:
    extra = {} if aux_loss is None else {"aux_loss": aux_loss}
    return yaml.safe_dump(with_dropped_record(model_config(name, **extra), NUM_CLASSES))  # probed once per config


def recorded_config(name: str, aux_loss: bool | None = None) -> dict:
    """The model config as a new run's config records it (the probe's `dropped` list in)."""
    return yaml.safe_load(_recorded(name, aux_loss))


def parameters_without_gradient(model: torch.nn.Module, size: int) -> list[str]:
    model.train()
    out = model(torch.randn(2, 3, size, size))  # 2 images: BatchNorm refuses one value per channel
    parts = list(out.values()) if isinstance(out, dict) else [out]
    sum(p.float().pow(2).mean() for p in parts).backward()
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize("name", [p.stem for p in CONFIGS])
def test_every_trainable_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = build_model(recorded_config(name), NUM_CLASSES)
    assert parameters_without_gradient(model, SIZE.get(name, 32)) == []


@pytest.mark.parametrize("name", [p.stem for p in CONFIGS])
def test_every_model_builds_from_its_record_under_inference_mode(name):
    """What inference does (a checkpoint's model rebuilt inside torch.inference_mode()): the build reads
    the record and walks no autograd graph (the probe's walk raised "Inference tensors cannot be saved
    for backward")."""
    size = SIZE.get(name, 32)
    with torch.inference_mode():
        model = build_model(recorded_config(name), NUM_CLASSES).eval()
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, NUM_CLASSES, size, size) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_mobilenet"])
def test_auxiliary_heads_get_a_gradient_when_configured(name):
    model = build_model(recorded_config(name, aux_loss=True), NUM_CLASSES)
    assert parameters_without_gradient(model, 32) == []


@pytest.mark.slow
def test_two_process_ddp_trains_an_efficientnet_unetpp(synthetic_root, tmp_path):
    """unetpp_effb4's encoder family (efficientnet-b0 here: the same smp class, smaller) under trainer=ddp_cpu,
    whose strategy has find_unused_parameters=False: before the unused modules were dropped, the second
    step stopped with "Parameter indices which did not receive grad for rank 0"."""
    run_dir = tmp_path / "runs" / "ddp"
    args = ["experiment=quickstart", "model=unetpp_effb4", "model.encoder_name=efficientnet-b0",
            "model.decoder.decoder_channels=[16,16,8,8,8]", f"data.root={synthetic_root}", "data.num_workers=0",
            "data.batch_size=2", "logger=csv", "trainer=ddp_cpu", "trainer.max_steps=2", "trainer.max_epochs=1",
            "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
            "+trainer.enable_model_summary=false", f"runs_dir={tmp_path / 'runs'}", f"hydra.run.dir={run_dir}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=400)
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    assert "MEMBER: 2/2" in output  # two processes
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    assert not any(k.startswith(("model.encoder._conv_head.", "model.encoder._bn1.")) for k in ckpt["state_dict"])
    assert ckpt["hyper_parameters"]["cfg"]["model"]["dropped"] == ["encoder._conv_head", "encoder._bn1"]
