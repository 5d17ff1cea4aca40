"""torchvision's segmentation models behind the shared contract: FCN-ResNet50/101 (the
competition's official baseline), DeepLab v3 (ResNet50/101, MobileNetV3) and LR-ASPP.

The backbone is the encoder; the classifier without its last 1x1 convolution is the decoder
(with the auxiliary FCN head when `aux_loss: true`); that last convolution is the head."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import segmentation as tvseg
from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights, ResNet101_Weights

from .base import SegmentationModel
from .pretrained import check_pretrained, download, load_local
from .registry import register

ARCHS = {
    "fcn_resnet50": (tvseg.fcn_resnet50, ResNet50_Weights.IMAGENET1K_V1, 8),
    "fcn_resnet101": (tvseg.fcn_resnet101, ResNet101_Weights.IMAGENET1K_V1, 8),
    "deeplabv3_resnet50": (tvseg.deeplabv3_resnet50, ResNet50_Weights.IMAGENET1K_V1, 8),
    "deeplabv3_resnet101": (tvseg.deeplabv3_resnet101, ResNet101_Weights.IMAGENET1K_V1, 8),
    "deeplabv3_mobilenet_v3_large": (tvseg.deeplabv3_mobilenet_v3_large, MobileNet_V3_Large_Weights.IMAGENET1K_V1, 16),
    "lraspp_mobilenet_v3_large": (tvseg.lraspp_mobilenet_v3_large, MobileNet_V3_Large_Weights.IMAGENET1K_V1, 16),
}


class TorchvisionModel(SegmentationModel):
    def __init__(self, net: nn.Module, aux_loss: bool, pad_multiple: int):
        classifier = net.classifier
        lraspp = isinstance(classifier, tvseg.lraspp.LRASPPHead)
        if lraspp:
            decoder = nn.ModuleDict({"cbr": classifier.cbr, "scale": classifier.scale})
            head = nn.ModuleDict({"low": classifier.low_classifier, "high": classifier.high_classifier})
        else:
            decoder = nn.ModuleDict({"main": nn.Sequential(*list(classifier)[:-1])})
            head = classifier[-1]
            if net.aux_classifier is not None:
                decoder["aux"] = net.aux_classifier
        super().__init__(net.backbone, decoder, head, aux_loss)
        self.lraspp, self.pad_multiple = lraspp, pad_multiple

    def logits(self, x: torch.Tensor):
        features = self.encoder(x)
        if self.lraspp:  # torchvision's LRASPPHead.forward, on our submodules
            high = self.decoder.cbr(features["high"]) * self.decoder.scale(features["high"])
            high = F.interpolate(high, size=features["low"].shape[-2:], mode="bilinear", align_corners=False)
            return self.head.low(features["low"]) + self.head.high(high)
        out = self.head(self.decoder.main(features["out"]))
        if "aux" in self.decoder and self.training:
            return out, self.decoder.aux(features["aux"])
        return out


@register("torchvision")
def torchvision_model(num_classes: int, arch: str = "fcn_resnet50", aux_loss: bool = False, pretrained=None) -> TorchvisionModel:
    if arch not in ARCHS:
        raise ValueError(f"unknown torchvision arch {arch!r}; choose one of {', '.join(ARCHS)}")
    check_pretrained(pretrained)
    builder, weights, pad_multiple = ARCHS[arch]
    kwargs = {"weights": None, "num_classes": num_classes}
    if arch.startswith("lraspp"):
        if aux_loss:
            raise ValueError(f"{arch} has no auxiliary head; set model.aux_loss=false")
    else:
        kwargs["aux_loss"] = aux_loss
    if pretrained == "imagenet":
        net = download(f"torchvision {weights}", lambda: builder(weights_backbone=weights, **kwargs))
    else:
        net = builder(weights_backbone=None, **kwargs)
    model = TorchvisionModel(net, aux_loss, pad_multiple)
    if pretrained not in (None, "imagenet"):
        load_local(model.encoder, pretrained)
    return model
