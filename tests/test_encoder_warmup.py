"""freeze_encoder_steps: the decoder trains alone on a frozen encoder, then everything; exact on resume."""

from types import SimpleNamespace

import pytest
import torch

from trashseg.training import run as run_module
from trashseg.training.optimization.encoder_warmup import FrozenEncoderWarmup, encoder_of
from trashseg.training.module import SegmentationModule
from test_train import config, straight_and_resumed

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = ["model.encoder_depth=3", "model.decoder.decoder_channels=[16,8,8]", "trainer.deterministic=true"]


def encoder_tensors(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("model.encoder.")}


@pytest.fixture
def watched(monkeypatch):
    """The encoder as it was when training started, and, per optimizer step, whether any encoder
    parameter got a gradient and whether its BatchNorm layers were normalising with batch statistics."""
    seen = {"start": None, "grad": [], "bn_train": []}
    setup = FrozenEncoderWarmup.setup

    def snapshot(self, trainer, pl_module, stage):
        seen["start"] = {f"model.encoder.{k}": v.clone() for k, v in encoder_of(pl_module).state_dict().items()}
        setup(self, trainer, pl_module, stage)

    def after_backward(self):
        encoder = self.model.encoder
        seen["grad"].append(any(p.grad is not None for p in encoder.parameters()))
        seen["bn_train"].append(all(m.training for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)))

    monkeypatch.setattr(FrozenEncoderWarmup, "setup", snapshot)
    monkeypatch.setattr(SegmentationModule, "on_after_backward", after_backward, raising=False)
    return seen


def test_a_frozen_encoder_keeps_its_weights_and_statistics(synthetic_root, tmp_path, watched):
    """Frozen for longer than the run: every encoder tensor, BatchNorm running statistics included, is
    what training started from, while the decoder learned; the optimizer still holds the encoder."""
    run_dir = tmp_path / "runs" / "frozen"
    cfg = config(synthetic_root, tmp_path, *SMALL, "trainer.limit_train_batches=3", "freeze_encoder_steps=100")
    run_module.train(cfg, run_dir)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    encoder = encoder_tensors(ckpt["state_dict"])
    assert encoder.keys() == watched["start"].keys() and any("running_mean" in k for k in encoder)
    assert all(torch.equal(encoder[k], watched["start"][k]) for k in encoder)
    assert watched["grad"] == [False] * 3 and watched["bn_train"] == [False] * 3
    optimizer_params = sum(len(g["params"]) for g in ckpt["optimizer_states"][0]["param_groups"])
    assert optimizer_params == sum(1 for k in ckpt["state_dict"] if k.startswith("model.") and "running" not in k
                                   and "num_batches" not in k)


def test_the_encoder_trains_after_its_steps(synthetic_root, tmp_path, watched):
    run_dir = tmp_path / "runs" / "warmup"
    cfg = config(synthetic_root, tmp_path, *SMALL, "trainer.limit_train_batches=4", "freeze_encoder_steps=2")
    run_module.train(cfg, run_dir)
    assert watched["grad"] == [False, False, True, True] and watched["bn_train"] == [False, False, True, True]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    encoder = encoder_tensors(ckpt["state_dict"])
    changed = [k for k in encoder if not torch.equal(encoder[k], watched["start"][k])]
    assert any(k.endswith("conv1.weight") for k in changed) and any(k.endswith("running_var") for k in changed)


@pytest.mark.slow
def test_resume_inside_the_frozen_steps_equals_an_uninterrupted_run(synthetic_root, tmp_path, monkeypatch):
    """6 steps, encoder frozen for the first 4, validated and checkpointed every 3: killed at step 5 and
    resumed from step 3's checkpoint (frozen), the run ends with the weights of one never stopped."""
    overrides = [*SMALL, "trainer.limit_train_batches=6", "trainer.val_check_interval=0.5", "freeze_encoder_steps=4"]
    a, b = (c["state_dict"] for c in straight_and_resumed(synthetic_root, tmp_path, monkeypatch, overrides,
                                                           kill_step=5, checkpoint_step=3))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_model_without_an_encoder_is_one_line():
    """Every registry model has one (torchvision's backbone is its `encoder`); a custom model may not."""
    with pytest.raises(ValueError, match=r"\(Linear\) has no `encoder` submodule .* set freeze_encoder_steps=0"):
        encoder_of(SimpleNamespace(model=torch.nn.Linear(2, 2)))


@pytest.mark.parametrize("steps", [-1, 2.5, "10", True])
def test_steps_must_be_a_whole_number(steps):
    with pytest.raises(ValueError, match="freeze_encoder_steps must be a whole number"):
        FrozenEncoderWarmup(steps)


def test_ddp_without_unused_parameters_is_refused():
    module = SimpleNamespace(model=SimpleNamespace(encoder=torch.nn.Conv2d(3, 3, 1)))
    ddp = SimpleNamespace(world_size=2, strategy=SimpleNamespace(_ddp_kwargs={}))
    with pytest.raises(ValueError, match="ddp_find_unused_parameters_true"):
        FrozenEncoderWarmup(2).setup(ddp, module, "fit")
    ddp.strategy._ddp_kwargs["find_unused_parameters"] = True
    FrozenEncoderWarmup(2).setup(ddp, module, "fit")
