"""One shared test over every model config, plus architecture checks against the papers."""

import logging
from pathlib import Path
from urllib.error import URLError

import pytest
import segmentation_models_pytorch.encoders as smp_encoders
import torch
import torchvision
import yaml
from torch import nn

from trashseg.models import OfflineError, build_model, list_models
from trashseg.models.base import bilinear_upsampler
from trashseg.models.fc import fc_as_conv, fc_layers
from trashseg.models.vgg import VGGEncoder, torchvision_features

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
NUM_CLASSES = 11


def config(name: str, **overrides) -> dict:
    """A model config as the YAML says, built without downloads unless an override asks for one."""
    cfg = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    return {**cfg, "pretrained": None, **overrides}


def logits(out):
    return out["out"] if isinstance(out, dict) else out


def first_conv(module: nn.Module) -> nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


def one_block_per_stage(cfg: dict) -> dict:
    """Deep timm encoders (Swin, ConvNeXt) are tested with one block per stage: the wiring the contract
    checks (stages, widths, windows, any H x W) is the same, and the test several times faster."""
    if cfg.get("encoder_name", "").startswith(("tu-swin", "tu-convnext")):
        return {**cfg, "encoder_params": {**(cfg.get("encoder_params") or {}), "depths": [1, 1, 1, 1]}}
    return cfg


# Over ~10 s each on two busy cores (builds twice, two backward passes): marked slow, still run by CI.
HEAVY = {"deconvnet_vgg16bn", "upernet_swin_b", "upernet_swin_l", "segformer_mitb4", "segformer_mitb5"}


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.stem in HEAVY else p for p in CONFIGS],
                         ids=[p.stem for p in CONFIGS])
def test_model_contract(path):
    torch.manual_seed(0)
    cfg = one_block_per_stage(config(path.stem))
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


@pytest.mark.parametrize("name", ["upernet_swin_t", "upernet_swin_b"])
def test_swin_takes_the_competition_size_and_odd_sizes(name):
    """timm's Swin checks the input against img_size unless dynamic_img_size is on; the YAMLs plan
    the windows for 512 px crops (shifted windows in every stage) and take any other size."""
    cfg = config(name)  # a narrow decoder: at 512 px the 512-channel one costs most of the time
    cfg = {**cfg, "decoder": {"decoder_channels": 32}, "encoder_params": {**cfg["encoder_params"], "depths": [1, 1, 1, 2]}}
    model = build_model(cfg, NUM_CLASSES).eval()
    shifted = model.encoder.model.layers_3.blocks[1]  # odd blocks shift their windows by half a window
    assert shifted.shift_size == (shifted.window_size[0] // 2,) * 2  # 16 x 16 tokens at 512 > the window: shifted
    with torch.no_grad():
        for size in [(512, 512), (37, 250)]:
            assert model(torch.randn(1, 3, *size)).shape == (1, NUM_CLASSES, *size)
    # dynamic_img_size is on by default for every timm model that takes it; switched off, timm checks 224
    strict = {**config("upernet_swin_t"), "encoder_params": {"depths": [1, 1, 1, 1], "dynamic_img_size": False}}
    with pytest.raises(AssertionError, match="doesn't match model"):
        build_model(strict, NUM_CLASSES)(torch.randn(1, 3, 70, 90))


def test_encoder_params_reach_timm_and_bad_ones_are_one_line():
    model = build_model(config("upernet_convnext_t", encoder_params={"depths": [1, 1, 2, 1], "drop_path_rate": 0.2}),
                        NUM_CLASSES)
    stages = model.encoder.model
    assert [len(stage.blocks) for stage in (stages.stages_0, stages.stages_1, stages.stages_2, stages.stages_3)] == [1, 1, 2, 1]
    # stochastic depth rises linearly over the 5 blocks to 0.2: the 4th block (stage 3's second) gets 0.15
    assert stages.stages_2.blocks[1].drop_path.drop_prob == pytest.approx(0.2 * 3 / 4)
    for params, message in [
        ({"drop_path_rat": 0.1}, r"model.encoder_params: timm's convnext_tiny does not take them \(.*'drop_path_rat'\)"),
        ({"decoder_channels": 64}, r"model.encoder_params.decoder_channels is an argument of smp, not of the timm model; "
                                   r"set model.decoder.decoder_channels"),
    ]:
        with pytest.raises(ValueError, match=message) as err:
            build_model(config("upernet_convnext_t", encoder_params=params), NUM_CLASSES)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"'resnet18' is smp's own encoder"):
        build_model(config("unet_tiny", encoder_params={"drop_path_rate": 0.1}), NUM_CLASSES)


def test_every_registered_family_has_a_config():
    names = {yaml.safe_load(p.read_text())["name"] for p in CONFIGS}
    assert names == set(list_models())


def test_unknown_name_and_key_fail_clearly():
    with pytest.raises(ValueError, match=r"unknown model 'fnc'; known models: alexnet_fcn, deconvnet"):
        build_model({"name": "fnc"}, NUM_CLASSES)
    with pytest.raises(ValueError, match=r"no parameter 'varaint' \(did you mean variant\?\)"):
        build_model({"name": "fcn", "varaint": "8s"}, NUM_CLASSES)
    # smp passes unknown keywords on to its encoder, which would ignore them silently
    with pytest.raises(ValueError, match=r"smp Unet has no option model.decoder.decoder_chanels; valid: .*decoder_channels"):
        build_model(config("unet_tiny", decoder={"decoder_chanels": [8, 8, 8, 8, 8]}), NUM_CLASSES)
    with pytest.raises(ValueError, match=r"no option model.decoder.activation"):  # logits only
        build_model(config("unet_tiny", decoder={"activation": "softmax2d"}), NUM_CLASSES)
    with pytest.raises(ValueError, match=r"smp has no encoder 'resnet-18'; closest: resnet18"):
        build_model(config("unet_tiny", encoder_name="resnet-18"), NUM_CLASSES)
    with pytest.raises(ValueError, match=r"lraspp_mobilenet_v3_large has no auxiliary head; set model.aux_loss=false"):
        build_model(config("lraspp_mobilenet", aux_loss=True), NUM_CLASSES)


@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_mobilenet"])
def test_auxiliary_output_only_in_training_and_when_configured(name):
    model = build_model(config(name, aux_loss=True), NUM_CLASSES).train()
    out = model(torch.randn(2, 3, 70, 90))
    assert set(out) == {"out", "aux"} and out["aux"].shape == out["out"].shape == (2, NUM_CLASSES, 70, 90)
    assert isinstance(model.eval()(torch.randn(1, 3, 64, 64)), torch.Tensor)
    assert isinstance(build_model(config(name), NUM_CLASSES).train()(torch.randn(2, 3, 64, 64)), torch.Tensor)


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


def test_deeplabv2_is_resnet101_at_output_stride_8_with_summed_aspp():
    model = build_model(config("deeplabv2_resnet101"), NUM_CLASSES).eval()
    assert sum(len(getattr(model.encoder, f"layer{i}")) for i in range(1, 5)) == 3 + 4 + 23 + 3  # ResNet-101
    features = model.encoder(torch.randn(1, 3, 64, 96))[-1]
    assert features.shape[1:] == (2048, 8, 12)
    assert [conv.dilation for conv in model.head.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    with torch.no_grad():
        assert torch.allclose(model.head(features), sum(conv(features) for conv in model.head.branches))


def test_bilinear_upsampler_starts_as_bilinear_interpolation():
    x = torch.randn(1, 3, 6, 5)
    for factor in (2, 8, 32):
        up = bilinear_upsampler(3, factor)
        assert up.weight.requires_grad  # learnable
        with torch.no_grad():
            out = up(x)
        reference = torch.nn.functional.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        assert out.shape == reference.shape
        inner = slice(factor, -factor)  # the transposed convolution sees zeros beyond the border
        assert torch.allclose(out[..., inner, inner], reference[..., inner, inner], atol=1e-5)


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
    """The download functions torchvision and smp call fail as they do without a network."""

    def url_fails(*args, **kwargs):
        raise URLError("simulated: [Errno -3] Temporary failure in name resolution")

    def hub_fails(*args, **kwargs):
        raise OSError("simulated: cannot reach huggingface.co")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", url_fails)
    monkeypatch.setattr(smp_encoders, "hf_hub_download", hub_fails)


@pytest.mark.parametrize("name", ["fcn8s_vgg16", "deeplabv2_resnet101", "fcn_resnet50", "alexnet_fcn", "unet_tiny"])
def test_imagenet_offline_fails_with_one_clear_line(offline, name):
    with pytest.raises(OfflineError) as err:
        build_model(config(name, pretrained="imagenet"), NUM_CLASSES)
    message = str(err.value)
    assert "\n" not in message and "simulated" in message  # one line, from the patched download
    assert "model.pretrained=null" in message and "model.pretrained=/path/to/weights.pth" in message


def test_imagenet_weights_land_where_they_belong(monkeypatch):
    """A (simulated) torchvision download fills the encoder and, as the papers do, fc6/fc7:
    reshaped for AlexNet-FCN, decimated to 1024 channels and 3x3 for DeepLab v1 LargeFOV."""
    torch.manual_seed(0)
    references = {"alexnet": torchvision.models.alexnet(weights=None).state_dict(),
                  "vgg16": torchvision.models.vgg16(weights=None).state_dict()}
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url",
                        lambda url, *a, **k: references["alexnet" if "alexnet" in url else "vgg16"])

    alex = build_model(config("alexnet_fcn", pretrained="imagenet"), NUM_CLASSES)
    ref = references["alexnet"]
    assert torch.equal(alex.encoder.features[0].weight, ref["features.0.weight"])
    assert torch.equal(alex.decoder.fc6.weight.flatten(1), ref["classifier.1.weight"])
    assert torch.equal(alex.decoder.fc7.weight.flatten(1), ref["classifier.4.weight"])

    v1 = build_model(config("deeplabv1_vgg16", pretrained="imagenet"), NUM_CLASSES)
    ref = references["vgg16"]
    assert torch.equal(v1.encoder.features[28].weight, ref["features.28.weight"])
    assert v1.decoder.fc6.weight.shape == (1024, 512, 3, 3)
    assert torch.equal(v1.decoder.fc6.weight[1, 2, 1, 2], ref["classifier.0.weight"].view(4096, 512, 7, 7)[4, 2, 3, 6])
    assert torch.equal(v1.decoder.fc7.weight[5, 3, 0, 0], ref["classifier.3.weight"][20, 12])


def test_fc_layers_as_convolutions_compute_the_linear_layers():
    """FCN's convolutionalisation: on a pool5-sized input, conv fc6/fc7 equal the Linear fc6/fc7."""
    torch.manual_seed(0)
    for channels, size in [(8, 7), (8, 6)]:  # VGG's 7x7 pool5, AlexNet's 6x6 (even: padded bottom/right)
        fc6, fc7 = nn.Linear(channels * size * size, 32), nn.Linear(32, 32)
        layers = fc_layers(channels, 32, size).eval()
        layers.load_state_dict(fc_as_conv((fc6.weight, fc6.bias), (fc7.weight, fc7.bias), channels, size, 32, size))
        x = torch.randn(2, channels, size, size)
        out = layers(x)
        assert out.shape == (2, 32, size, size)  # 'same' size
        centre = out[:, :, size // 2 - (size % 2 == 0), size // 2 - (size % 2 == 0)]
        with torch.no_grad():
            assert torch.allclose(centre, fc7(fc6(x.flatten(1)).relu()).relu(), atol=1e-5)


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


def test_encoder_weights_from_a_training_checkpoint(tmp_path, caplog):
    """A Lightning checkpoint (`state_dict` of `model.*` keys) gives its encoder, and only that;
    wrongly shaped tensors are skipped and reported, not loaded."""
    torch.manual_seed(0)
    trained = build_model(config("unet_tiny"), NUM_CLASSES)
    state = {f"model.{k}": v for k, v in trained.state_dict().items()}
    state["model.encoder.conv1.weight"] = torch.zeros(3)  # a tensor the encoder has, in another shape
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    torch.manual_seed(1)
    with caplog.at_level(logging.WARNING, logger="trashseg.models"):
        model = build_model(config("unet_tiny", pretrained=str(path)), NUM_CLASSES)
    for (name, mine), theirs in zip(model.encoder.state_dict().items(), trained.encoder.state_dict().values()):
        assert torch.equal(mine, theirs) == (name != "conv1.weight"), name
    assert not torch.equal(model.head[0].weight, trained.head[0].weight)
    assert "wrong shape 1: ['model.encoder.conv1.weight']" in caplog.text and "model.decoder." in caplog.text
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="no tensor matches the encoder"):
        build_model(config("unet_tiny", pretrained=str(path)), NUM_CLASSES)
