"""Any segmentation-models-pytorch architecture x encoder from config (Unet, UnetPlusPlus, FPN,
PSPNet, PAN, DeepLabV3, DeepLabV3Plus, UPerNet, Segformer, Linknet, MAnet), with smp's
`segmentation_head` as the head. `decoder` holds the architecture's own keyword arguments;
`encoder_params` the timm model's, for `tu-` encoders (e.g. Swin's `img_size` and
`dynamic_img_size: true`, which lets a Swin take any padded H x W; `drop_path_rate`)."""

from __future__ import annotations

import difflib
import inspect

import segmentation_models_pytorch as smp
import torch

from .base import SegmentationModel
from .pretrained import check_pretrained, download, load_local
from .registry import register

# Architectures whose forward is smp's generic encoder -> decoder -> head.
ARCHS = ("Unet", "UnetPlusPlus", "FPN", "PSPNet", "PAN", "DeepLabV3", "DeepLabV3Plus", "UPerNet", "Segformer",
         "Linknet", "MAnet")

# Arguments this adapter sets itself, or that would break the contract (logits out, no extra head).
OWN_ARGUMENTS = {"self", "encoder_name", "encoder_depth", "encoder_weights", "in_channels", "classes", "activation",
                 "aux_params", "kwargs"}

# PAN's feature pyramid attention pools its deepest features three more times.
EXTRA_STRIDE = {"PAN": 8}


def decoder_arguments(arch: str) -> list[str]:
    """The keyword arguments smp's `arch` takes besides what the adapter sets."""
    return [p for p in inspect.signature(getattr(smp, arch).__init__).parameters if p not in OWN_ARGUMENTS]


class SmpModel(SegmentationModel):
    def __init__(self, net: smp.base.SegmentationModel, arch: str):
        super().__init__(net.encoder, net.decoder, net.segmentation_head)
        self.pad_multiple = net.encoder.output_stride * EXTRA_STRIDE.get(arch, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))


@register("smp")
def smp_model(
    num_classes: int, arch: str = "Unet", encoder_name: str = "resnet34", encoder_depth: int | None = None,
    decoder: dict | None = None, encoder_params: dict | None = None, pretrained=None,
) -> SmpModel:
    if arch not in ARCHS:
        raise ValueError(f"smp arch {arch!r} is not supported; choose one of {', '.join(ARCHS)}")
    check_pretrained(pretrained)
    if not encoder_name.startswith(("tu-", "timm-")) and encoder_name not in smp.encoders.encoders:
        close = difflib.get_close_matches(encoder_name, list(smp.encoders.encoders), n=3)
        raise ValueError(f"smp has no encoder {encoder_name!r}; closest: {', '.join(close) or 'none'} "
                         "(all: segmentation_models_pytorch.encoders.get_encoder_names(), or tu-<timm model>)")
    kwargs = dict(decoder or {})
    # smp forwards unknown keywords to the encoder, which ignores them unless it is a timm one:
    # a misspelt decoder option would pass silently, so check against the architecture's own.
    valid = decoder_arguments(arch)
    for key in kwargs:
        if key not in valid:
            raise ValueError(f"smp {arch} has no option model.decoder.{key}; valid: {', '.join(valid)}")
    if encoder_depth is not None:
        kwargs["encoder_depth"] = encoder_depth
    if encoder_params and not encoder_name.startswith("tu-"):
        raise ValueError(f"model.encoder_params go to a timm model, and {encoder_name!r} is smp's own encoder; remove "
                         "them or use a tu-<timm model> encoder")
    timm_kwargs = dict(encoder_params or {})
    for key in timm_kwargs:  # smp would take these itself, not pass them on to timm
        if key in valid or key in OWN_ARGUMENTS:
            hint = f"; set model.decoder.{key}" if key in valid else ""
            raise ValueError(f"model.encoder_params.{key} is an argument of smp, not of the timm model{hint}")

    def build(weights: str | None) -> smp.base.SegmentationModel:
        try:
            return smp.create_model(arch, encoder_name=encoder_name, encoder_weights=weights, classes=num_classes,
                                    **kwargs, **timm_kwargs)
        except TypeError as err:  # timm's model class refuses a keyword of encoder_params
            if not timm_kwargs or "unexpected keyword" not in str(err):
                raise
            raise ValueError(f"model.encoder_params: timm's {encoder_name[3:]} does not take them ({err}); valid ones "
                             "are its model class's arguments") from None

    if pretrained == "imagenet":
        net = download(f"smp {encoder_name} ImageNet weights", lambda: build("imagenet"))
    else:
        net = build(None)
    model = SmpModel(net, arch)
    if pretrained not in (None, "imagenet"):
        load_local(model.encoder, pretrained)
    return model
