"""Any segmentation-models-pytorch architecture x encoder from config (Unet, UnetPlusPlus, FPN,
PSPNet, PAN, DeepLabV3, DeepLabV3Plus, UPerNet, Segformer, Linknet, MAnet), with smp's
`segmentation_head` as the head."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch

from .base import SegmentationModel
from .pretrained import check_pretrained, download, load_local
from .registry import register

# Architectures whose forward is smp's generic encoder -> decoder -> head.
ARCHS = ("Unet", "UnetPlusPlus", "FPN", "PSPNet", "PAN", "DeepLabV3", "DeepLabV3Plus", "UPerNet", "Segformer",
         "Linknet", "MAnet")


# PAN's feature pyramid attention pools its 1/16 features three more times.
EXTRA_STRIDE = {"PAN": 8}


class SmpModel(SegmentationModel):
    def __init__(self, net: smp.base.SegmentationModel, arch: str):
        super().__init__(net.encoder, net.decoder, net.segmentation_head)
        self.pad_multiple = net.encoder.output_stride * EXTRA_STRIDE.get(arch, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))


@register("smp")
def smp_model(
    num_classes: int, arch: str = "Unet", encoder_name: str = "resnet34", encoder_depth: int | None = None,
    decoder: dict | None = None, pretrained=None,
) -> SmpModel:
    if arch not in ARCHS:
        raise ValueError(f"smp arch {arch!r} is not supported; choose one of {', '.join(ARCHS)}")
    check_pretrained(pretrained)
    kwargs = dict(decoder or {})
    if encoder_depth is not None:
        kwargs["encoder_depth"] = encoder_depth
    build = lambda weights: smp.create_model(arch, encoder_name=encoder_name, encoder_weights=weights,  # noqa: E731
                                             classes=num_classes, **kwargs)
    try:
        net = download(f"smp {encoder_name} ImageNet weights", lambda: build("imagenet")) if pretrained == "imagenet" else build(None)
    except TypeError as err:
        raise ValueError(f"smp {arch}: {err} (check model.decoder keys)") from None
    model = SmpModel(net, arch)
    if pretrained not in (None, "imagenet"):
        load_local(model.encoder, pretrained)
    return model
