"""Every model config trains under DDP: after one forward and backward, every trainable parameter has
a gradient (DDP with find_unused_parameters=False stops at the second step otherwise), and a
model that had unused encoder modules takes two 2-process gloo DDP steps through train.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from trashseg.models import build_model
from trashseg.models.unused import Dropped, drop_unused

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs" / "model").glob("*.yaml"))
NUM_CLASSES = 11
# The smallest input each model takes: AlexNet's last 3x3 max-pool needs more than 1/32 of 32 px.
SIZE = {"alexnet_fcn": 64}


def model_config(name: str, **overrides) -> dict:
    return {**yaml.safe_load((REPO / "configs" / "model" / f"{name}.yaml").read_text()), "pretrained": None, **overrides}


def parameters_without_gradient(model: torch.nn.Module, size: int) -> list[str]:
    model.train()
    out = model(torch.randn(2, 3, size, size))  # 2 images: BatchNorm refuses one value per channel
    parts = list(out.values()) if isinstance(out, dict) else [out]
    sum(p.float().pow(2).mean() for p in parts).backward()
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize("name", [p.stem for p in CONFIGS])
def test_every_trainable_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = build_model(model_config(name), NUM_CLASSES)
    assert parameters_without_gradient(model, SIZE.get(name, 32)) == []


@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_mobilenet"])
def test_auxiliary_heads_get_a_gradient_when_configured(name):
    model = build_model(model_config(name, aux_loss=True), NUM_CLASSES)
    assert parameters_without_gradient(model, 32) == []


@pytest.mark.parametrize("cfg, dropped", [
    # smp's EfficientNet keeps the classifier's last convolution and norm
    (dict(arch="Unet", encoder_name="efficientnet-b0"), ["_conv_head", "_bn1"]),
    (dict(arch="Unet", encoder_name="timm-efficientnet-b0"), ["conv_head", "bn2"]),
    # a shallow encoder keeps the stages past its depth: ResNet's layer3 and layer4, timm EfficientNet's blocks 3-6
    (dict(arch="PSPNet", encoder_name="resnet18", encoder_depth=3), ["layer3", "layer4"]),
    (dict(arch="Unet", encoder_name="tu-tf_efficientnet_lite0", encoder_depth=3,
          decoder={"decoder_channels": [16, 8, 8]}), ["model.blocks.3", "model.blocks.4", "model.blocks.5", "model.blocks.6"]),
])
def test_unused_encoder_modules_are_dropped_and_old_weights_still_load(cfg, dropped):
    """The modules named are the ones dropped; a state dict saved before (with their tensors) loads
    strictly into the pruned model, and gives the same logits."""
    torch.manual_seed(0)
    full = build_model({"name": "smp", **cfg}, NUM_CLASSES)
    assert sorted(n for n, m in full.encoder.named_modules() if isinstance(m, Dropped)) == sorted(dropped)
    assert parameters_without_gradient(full, 64) == []

    # An old checkpoint: the same weights plus the dropped modules' tensors (shapes do not matter to the skip).
    old_state = dict(full.state_dict())
    for name in dropped:
        old_state[f"encoder.{name}.weight"] = torch.zeros(3)
    torch.manual_seed(1)
    twin = build_model({"name": "smp", **cfg}, NUM_CLASSES).eval()
    twin.load_state_dict(old_state)  # strict
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(twin(x), full.eval()(x))


def test_drop_unused_replaces_only_what_the_output_does_not_depend_on():
    """A module never called and one whose output is thrown away go; a module with one used parameter
    stays, and so does one used without a gradient (through an argmax): the output would change.
    Running statistics and the training mode are untouched."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.norm = torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)
            self.weight_only = torch.nn.Conv2d(4, 4, 1)  # only its weight is used, functionally
            self.discarded = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), torch.nn.ReLU())
            self.gate = torch.nn.Conv2d(4, 4, 1)  # picks a channel: no gradient, but the output depends on it
            self.never = torch.nn.Linear(4, 2)

        def forward(self, x):
            x = self.norm(self.used(x))
            self.discarded(x)
            channel = self.gate(x).mean((0, 2, 3)).argmax()
            return torch.nn.functional.conv2d(x, self.weight_only.weight)[:, channel]

    torch.manual_seed(0)
    net = Net().train()
    x = torch.randn(2, 3, 8, 8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        expected = net.eval()(x)
    net.train()
    assert sorted(drop_unused(net, x)) == ["discarded", "never"]
    assert isinstance(net.discarded, Dropped) and isinstance(net.never, Dropped)
    assert isinstance(net.gate, torch.nn.Conv2d) and isinstance(net.weight_only, torch.nn.Conv2d)
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items() if k in before)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), expected)


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


class Killed(Exception):
    """Stands for a kill: the process ends where it is."""


@pytest.mark.slow
def test_a_run_saved_before_the_drop_resumes_exactly(synthetic_root, tmp_path, monkeypatch):
    """unet_tiny at encoder_depth 3 (its layer3 and layer4 unused) with AdamW in encoder, decoder and head
    groups and their no-decay twins: saved at step 6 with those layers still in (their tensors and their
    optimizer positions), killed at step 9, then resumed with them dropped, it ends on the weights and the
    optimizer state of a run never stopped."""
    from hydra import compose, initialize_config_dir

    from trashseg.training import run as run_module
    from trashseg.training.module import SegmentationModule

    def config(*more):
        overrides = ["experiment=quickstart", f"data.root={synthetic_root}", "data.num_workers=0", "data.batch_size=4",
                     "data.val_batch_size=5", "trainer.enable_progress_bar=false", "trainer.max_epochs=2", "logger=csv",
                     "trainer.deterministic=true", "trainer.num_sanity_val_steps=0", f"runs_dir={tmp_path / 'runs'}",
                     "model.encoder_depth=3", "model.decoder.decoder_channels=[16,8,8]", "optimizer=adamw_encoder_0.1",
                     *more]
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            return compose(config_name="train", overrides=overrides)

    straight, stopped = tmp_path / "runs" / "quickstart" / "straight", tmp_path / "runs" / "quickstart" / "stopped"
    run_module.train(config(), straight)

    def kill(self, outputs, batch, batch_idx):
        if self.global_step == 9:
            raise Killed

    with monkeypatch.context() as patch, pytest.raises(Killed):
        patch.setattr("trashseg.models.smp_models.drop_unused", lambda module, example: [])  # the code before
        patch.setattr(SegmentationModule, "on_train_batch_end", kill, raising=False)
        run_module.train(config(), stopped)
    last = stopped / "checkpoints" / "last.ckpt"
    old = torch.load(last, map_location="cpu", weights_only=True)
    assert old["global_step"] == 6 and "model.encoder.layer4.0.conv1.weight" in old["state_dict"]
    run_module.train(config(f"resume={last}"), tmp_path / "runs" / "unused")

    a, b = (torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True) for d in (straight, stopped))
    assert a["global_step"] == b["global_step"] == 12
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert not any(".layer3." in k or ".layer4." in k for k in a["state_dict"])
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    opt_a, opt_b = a["optimizer_states"][0], b["optimizer_states"][0]
    assert [g["name"] for g in opt_a["param_groups"]] == [g["name"] for g in opt_b["param_groups"]]
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for i in opt_a["state"]:
        assert all(torch.equal(opt_a["state"][i][k], opt_b["state"][i][k]) for k in opt_a["state"][i])
