"""Encoder modules that never reach the output: found by one probe when a new run's config is
resolved, recorded there as `model.dropped`, and left out of every later build without probing.
A config without the record (a run from before it was kept) builds every module, as it was saved."""

from pathlib import Path

import pytest
import torch
import yaml

from trashseg.checkpoint import load_network
from trashseg.models import build_model
from trashseg.models.prune_unreached import Dropped, drop_unreached
from trashseg.models.registry import record_dropped_modules, unreached_modules
from trashseg.models.smp_models import encoder_probe

REPO = Path(__file__).resolve().parents[1]
CLASSES = [f"class{i}" for i in range(11)]

CASES = [
    # smp's EfficientNet keeps the classifier's last convolution and norm
    (dict(arch="Unet", encoder_name="efficientnet-b0"), ["encoder._conv_head", "encoder._bn1"]),
    (dict(arch="Unet", encoder_name="timm-efficientnet-b0"), ["encoder.conv_head", "encoder.bn2"]),
    # a shallow encoder keeps the stages past its depth: ResNet's layer3 and layer4, timm EfficientNet's blocks 3-6
    (dict(arch="PSPNet", encoder_name="resnet18", encoder_depth=3), ["encoder.layer3", "encoder.layer4"]),
    (dict(arch="Unet", encoder_name="tu-tf_efficientnet_lite0", encoder_depth=3, decoder={"decoder_channels": [16, 8, 8]}),
     ["encoder.model.blocks.3", "encoder.model.blocks.4", "encoder.model.blocks.5", "encoder.model.blocks.6"]),
]


def smp(cfg: dict) -> dict:
    return {"name": "smp", "pretrained": None, **cfg}


@pytest.mark.parametrize("cfg, dropped", CASES)
def test_the_record_is_what_the_probe_finds_and_builds_the_probed_model(cfg, dropped):
    """A new run's config records the modules named; the model built from that record has the
    probed model's parameters and gives bit for bit the probed model's output (and the full one's)."""
    run_config = {"model": smp(cfg), "data": {"classes": CLASSES}}
    record_dropped_modules(run_config, None)
    assert run_config["model"]["dropped"] == dropped

    torch.manual_seed(0)
    probed = build_model(smp(cfg), len(CLASSES))
    assert encoder_probe(probed) == dropped  # the probe itself, on a build of the same weights
    torch.manual_seed(0)
    built = build_model(run_config["model"], len(CLASSES))
    torch.manual_seed(0)
    full = build_model(smp(cfg), len(CLASSES)).eval()

    assert sorted(n for n, m in built.named_modules() if isinstance(m, Dropped)) == sorted(dropped)
    probed_state, built_state = probed.state_dict(), built.state_dict()
    assert built_state.keys() == probed_state.keys()
    assert all(torch.equal(built_state[k], probed_state[k]) for k in built_state)
    assert not any(k.startswith(tuple(f"{name}." for name in dropped)) for k in built_state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = built.eval()(x)
        assert torch.equal(out, probed.eval()(x))
        assert torch.equal(out, full(x))


def test_a_config_without_the_record_builds_every_module(tmp_path):
    """A run from before the record: its config and checkpoint load strictly, every module in, under
    inference_mode too."""
    cfg = smp(CASES[2][0])
    torch.manual_seed(0)
    full = build_model(cfg, len(CLASSES))
    assert not any(isinstance(m, Dropped) for m in full.modules())
    assert any(k.startswith("encoder.layer4.") for k in full.state_dict())
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in full.state_dict().items()},
                "hyper_parameters": {"cfg": {"model": cfg, "data": {"classes": CLASSES}}}}, path)
    with torch.inference_mode():
        loaded, saved_cfg = load_network(path)
        x = torch.randn(1, 3, 64, 64)
        assert torch.equal(loaded(x), full.eval()(x))
    assert "dropped" not in saved_cfg["model"]


def test_a_resumed_run_keeps_its_own_record_and_never_probes(monkeypatch):
    def no_probe(*args):
        raise AssertionError("a resumed run probed")

    monkeypatch.setattr("trashseg.models.registry.unreached_modules", no_probe)
    cfg = smp(CASES[2][0])
    new = {"model": dict(cfg), "data": {"classes": CLASSES}}
    record_dropped_modules(new, {"model": {**cfg, "dropped": ["encoder.layer4"]}})
    assert new["model"]["dropped"] == ["encoder.layer4"]
    old = {"model": {**cfg, "dropped": ["encoder.layer3"]}, "data": {"classes": CLASSES}}
    record_dropped_modules(old, {"model": cfg})  # saved before the record: none, whatever this command had
    assert "dropped" not in old["model"]


def test_builds_and_the_probe_work_under_inference_mode():
    """Inference code builds inside torch.inference_mode(): a build from the record never records an
    autograd graph, and the probe builds its own model outside inference_mode. Handed a model made
    under inference_mode, the probe stops in one line."""
    cfg, dropped = CASES[0]
    with torch.inference_mode():
        assert unreached_modules(smp(cfg), len(CLASSES)) == dropped
        model = build_model({**smp(cfg), "dropped": dropped}, len(CLASSES)).eval()
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 11, 64, 64)
        with pytest.raises(RuntimeError, match="needs a model built outside torch.inference_mode") as err:
            drop_unreached(build_model(smp(cfg), len(CLASSES)).encoder, torch.zeros(1, 3, 64, 64))
    assert "\n" not in str(err.value)


def test_a_record_that_names_no_module_is_one_line():
    with pytest.raises(ValueError, match=r"model.dropped names 'encoder.layer9', which model 'smp' has no submodule") as err:
        build_model({**smp(CASES[2][0]), "dropped": ["encoder.layer9"]}, len(CLASSES))
    assert "\n" not in str(err.value)


def test_the_probe_drops_only_what_the_output_does_not_depend_on():
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
    assert sorted(drop_unreached(net, x)) == ["discarded", "never"]
    assert isinstance(net.discarded, Dropped) and isinstance(net.never, Dropped)
    assert isinstance(net.gate, torch.nn.Conv2d) and isinstance(net.weight_only, torch.nn.Conv2d)
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items() if k in before)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), expected)


class Killed(Exception):
    """Stands for a kill: the process ends where it is."""


def _config(synthetic_root, tmp_path, *more):
    from hydra import compose, initialize_config_dir

    overrides = ["experiment=quickstart", f"data.root={synthetic_root}", "data.num_workers=0", "data.batch_size=4",
                 "data.val_batch_size=5", "trainer.enable_progress_bar=false", "trainer.max_epochs=2", "logger=csv",
                 "trainer.deterministic=true", "trainer.num_sanity_val_steps=0", f"runs_dir={tmp_path / 'runs'}",
                 "model.encoder_depth=3", "model.decoder.decoder_channels=[16,8,8]", "optimizer.layer_decay=0.9", *more]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _last(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_a_run_saved_without_the_record_resumes_as_it_was_saved(synthetic_root, tmp_path, monkeypatch):
    """unet_tiny at encoder_depth 3 (layer3 and layer4 unused) with layer decay: one optimizer group per
    encoder stage. A last.ckpt written without the record holds six groups; resumed, the model is built
    as saved (nothing dropped) and the run ends on the weights and optimizer state of a run never
    stopped. Dropping the modules at resume crashed the first scheduler step (6 base_lrs, 4 groups)."""
    from trashseg.training import run as run_module, run_config
    from trashseg.training.module import SegmentationModule

    def config(*more):
        return _config(synthetic_root, tmp_path, *more)

    straight, stopped = tmp_path / "runs" / "quickstart" / "straight", tmp_path / "runs" / "quickstart" / "stopped"

    def kill(self, outputs, batch, batch_idx):
        if self.global_step == 9:
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(run_config, "record_dropped_modules", lambda plain, saved: None)  # a run from before the record
        run_module.train(config(), straight)
        patch.setattr(SegmentationModule, "on_train_batch_end", kill, raising=False)
        with pytest.raises(Killed):
            run_module.train(config(), stopped)
    old = _last(stopped)
    assert old["global_step"] == 6 and "model.encoder.layer4.0.conv1.weight" in old["state_dict"]
    assert "dropped" not in old["hyper_parameters"]["cfg"]["model"]
    groups = [g["name"] for g in old["optimizer_states"][0]["param_groups"]]
    assert {"encoder.stage3", "encoder.stage4"} <= set(groups) and len(old["lr_schedulers"][0]["base_lrs"]) == len(groups)
    run_module.train(config(f"resume={stopped / 'checkpoints' / 'last.ckpt'}"), tmp_path / "runs" / "unused")

    a, b = _last(straight), _last(stopped)
    assert a["global_step"] == b["global_step"] == 12
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    opt_a, opt_b = a["optimizer_states"][0], b["optimizer_states"][0]
    assert [g["name"] for g in opt_a["param_groups"]] == [g["name"] for g in opt_b["param_groups"]]
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for i in opt_a["state"]:
        assert all(torch.equal(opt_a["state"][i][k], opt_b["state"][i][k]) for k in opt_a["state"][i])
    assert "dropped" not in yaml.safe_load((stopped / "config.yaml").read_text())["model"]


@pytest.mark.slow
def test_a_new_run_records_the_drop_and_resumes_from_the_record(synthetic_root, tmp_path, monkeypatch):
    """The record goes into config.yaml and the checkpoint's hyper_parameters; resume=auto continues the
    run (the record is no setting of the command's) and builds it from the record without probing."""
    from trashseg.models import registry
    from trashseg.training import run as run_module

    run_dir = tmp_path / "runs" / "quickstart" / "new"
    run_module.train(_config(synthetic_root, tmp_path, "trainer.max_epochs=1"), run_dir)
    dropped = ["encoder.layer3", "encoder.layer4"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["dropped"] == dropped
    first = _last(run_dir)
    assert first["hyper_parameters"]["cfg"]["model"]["dropped"] == dropped
    assert not any(".layer3." in k or ".layer4." in k for k in first["state_dict"])
    groups = [g["name"] for g in first["optimizer_states"][0]["param_groups"]]
    assert "encoder.stage2" in groups and not {"encoder.stage3", "encoder.stage4"} & set(groups)

    def no_probe(*args):
        raise AssertionError("resuming probed the model")

    monkeypatch.setattr(registry, "unreached_modules", no_probe)
    monkeypatch.setattr("trashseg.models.smp_models.drop_unreached", no_probe)
    run_module.train(_config(synthetic_root, tmp_path, "resume=auto"), run_dir)
    assert _last(run_dir)["global_step"] == 2 * first["global_step"]
