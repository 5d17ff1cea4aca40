"""One shared test over every model config, plus architecture checks against the papers."""

import logging
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
import yaml
from torch import nn

from trashseg.models import OfflineError, build_model, list_models
from trashseg.models.vgg import VGGEncoder, torchvision_features

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "model").glob("*.yaml"))
NUM_CLASSES = 11


def config(name: str, **overrides) -> dict:
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "model" / f"{name}.yaml").read_text())
    return {**cfg, "pretrained": None, **overrides}


def logits(out):
    return out["out"] if isinstance(out, dict) else out


def first_conv(module: nn.Module) -> nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_model_contract(path):
    torch.manual_seed(0)
    cfg = {**yaml.safe_load(path.read_text()), "pretrained": None}
    model = build_model(cfg, NUM_CLASSES)

    # encoder, decoder and head own every parameter exactly once
    parts = [list(getattr(model, p).parameters()) for p in ("encoder", "decoder", "head")]
    ids = [id(p) for part in parts for p in part]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))

    model.train()
    for size in [(64, 64), (70, 90)]:
        model.zero_grad()
        out = logits(model(torch.randn(2, 3, *size)))
        assert out.shape == (2, NUM_CLASSES, *size)
        out.float().pow(2).mean().backward()
        grad = first_conv(model.encoder).weight.grad
        assert grad is not None and grad.abs().sum() > 0, "no gradient reaches the encoder's first convolution"

    model.eval()
    x = torch.randn(1, 3, 64, 64)
    twin = build_model(cfg, NUM_CLASSES).eval()
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(x), twin(x))


def test_every_registered_family_has_a_config():
    names = {yaml.safe_load(p.read_text())["name"] for p in CONFIGS}
    assert names == set(list_models())


def test_unknown_name_and_key_fail_clearly():
    with pytest.raises(ValueError, match=r"unknown model 'fnc'; known models: alexnet_fcn, deconvnet"):
        build_model({"name": "fnc"}, NUM_CLASSES)
    with pytest.raises(ValueError, match=r"no parameter 'varaint' \(did you mean variant\?\)"):
        build_model({"name": "fcn", "varaint": "8s"}, NUM_CLASSES)


def test_auxiliary_output_only_in_training_and_when_configured():
    model = build_model(config("fcn_resnet50", aux_loss=True), NUM_CLASSES).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert set(out) == {"out", "aux"} and out["aux"].shape == (2, NUM_CLASSES, 64, 64)
    assert isinstance(model.eval()(torch.randn(1, 3, 64, 64)), torch.Tensor)
    assert isinstance(build_model(config("fcn_resnet50"), NUM_CLASSES).train()(torch.randn(2, 3, 64, 64)), torch.Tensor)


def test_fcn8s_fuses_pool3_and_pool4_scores():
    torch.manual_seed(0)
    fcn32 = build_model(config("fcn32s_vgg16", fc_channels=64), NUM_CLASSES)
    assert not hasattr(fcn32.head, "score_pool4") and not hasattr(fcn32.head, "score_pool3")
    model = build_model(config("fcn8s_vgg16", fc_channels=64), NUM_CLASSES).eval()
    x = torch.randn(1, 3, 64, 64)
    base = model(x)
    for layer in ("score_pool3", "score_pool4"):
        conv = getattr(model.head, layer)
        with torch.no_grad():
            conv.bias.fill_(1.0)  # zero-initialised as in the paper: perturb to see it used
            assert not torch.allclose(model(x), base), f"{layer} does not reach the output"
            conv.bias.zero_()
    # pool4 scores enter at 1/16, pool3 scores at 1/8 of the input
    seen = {}
    model.head.score_pool4.register_forward_hook(lambda m, i, o: seen.setdefault("pool4", o.shape[-1]))
    model.head.score_pool3.register_forward_hook(lambda m, i, o: seen.setdefault("pool3", o.shape[-1]))
    model(x)
    assert seen == {"pool4": 64 // 16, "pool3": 64 // 8}


def test_deconvnet_unpools_with_the_encoders_own_indices():
    model = build_model(config("deconvnet_vgg16bn", fc_channels=32), NUM_CLASSES).eval()
    pooled, unpooled = [], []
    for pool in model.encoder.pools:
        pool.register_forward_hook(lambda m, i, o: pooled.append(o[1]))
    for unpool in model.decoder.unpools:
        unpool.register_forward_hook(lambda m, i, o: unpooled.append(i[1]))
    model(torch.randn(1, 3, 64, 64))
    assert len(pooled) == len(unpooled) == 5
    for idx_pool, idx_unpool in zip(pooled[::-1], unpooled):
        assert idx_unpool is idx_pool  # the very tensors, deepest first


def test_deeplabv1_features_have_output_stride_8():
    model = build_model(config("deeplabv1_vgg16", fc_channels=32), NUM_CLASSES).eval()
    assert model.features(torch.randn(1, 3, 64, 96)).shape[-2:] == (8, 12)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_vgg_encoder_maps_one_to_one_onto_torchvision(batch_norm):
    torch.manual_seed(0)
    reference = (torchvision.models.vgg16_bn if batch_norm else torchvision.models.vgg16)(weights=None).eval()
    encoder = VGGEncoder(batch_norm).eval()
    features = torchvision_features(reference.state_dict())
    assert set(features) == set(encoder.state_dict())
    encoder.load_state_dict(features, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(encoder(x)[0][4], reference.features(x), atol=1e-6)


@pytest.fixture
def offline(monkeypatch):
    def fail(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fail)
    import segmentation_models_pytorch.encoders as smp_encoders

    monkeypatch.setattr(smp_encoders, "hf_hub_download", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))


@pytest.mark.parametrize("name", ["fcn8s_vgg16", "fcn_resnet50", "alexnet_fcn", "unet_tiny"])
def test_imagenet_offline_fails_with_one_clear_line(offline, name):
    with pytest.raises(OfflineError) as err:
        build_model(config(name, pretrained="imagenet"), NUM_CLASSES)
    message = str(err.value)
    assert "\n" not in message and "model.pretrained=null" in message and "download" in message


def test_local_weights_load_and_change_outputs(tmp_path, caplog):
    torch.manual_seed(1)
    state = {f"module.{k}": v for k, v in torchvision.models.vgg16_bn(weights=None).state_dict().items()}
    path = tmp_path / "vgg16_bn.pth"
    torch.save(state, path)
    torch.manual_seed(0)
    plain = build_model(config("deconvnet_vgg16bn", fc_channels=32), NUM_CLASSES).eval()
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="trashseg.models"):
        loaded = build_model(config("deconvnet_vgg16bn", fc_channels=32, pretrained=str(path)), NUM_CLASSES).eval()
    assert torch.equal(loaded.encoder.features[0].weight, state["module.features.0.weight"])
    assert "unexpected" in caplog.text and "classifier" in caplog.text  # torchvision's fc layers are reported
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(plain(x), loaded(x))
    with pytest.raises(FileNotFoundError, match="pretrained weights not found"):
        build_model(config("deconvnet_vgg16bn", pretrained=str(tmp_path / "missing.pth")), NUM_CLASSES)
