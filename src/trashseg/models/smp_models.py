"""Any segmentation-models-pytorch architecture x encoder from config (Unet, UnetPlusPlus, FPN,
PSPNet, PAN, DeepLabV3, DeepLabV3Plus, UPerNet, Segformer, Linknet, MAnet), with smp's
`segmentation_head` as the head. `decoder` holds the architecture's own keyword arguments;
`encoder_params` the timm model's, for `tu-` encoders (e.g. Swin's `img_size` and
`dynamic_img_size: true`, which lets a Swin take any padded H x W, and is set by default for every
timm model that takes it; `drop_path_rate`).

`pretrained: imagenet` on `tu-tf_efficientnet_lite0/1/2` reads the weights an installed package
ships (`packaged_weights`): no network; every other name downloads through smp / timm.

Encoder modules the forward never uses (an EfficientNet's classifier convolution, the stages past
`encoder_depth`) are found by this family's probe (`encoder_probe`) when a new run's config is
resolved, recorded in it (`model.dropped`) and left out of every build of the run (`registry`):
every parameter left trains, as DDP requires."""

from __future__ import annotations

import difflib
import inspect
import logging
import sys

import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from .base import SegmentationModel
from .packaged_weights import has_packaged_weights, load_packaged
from .pretrained import check_pretrained, download, load_local
from .prune_unreached import drop_unreached
from .registry import register

# Architectures whose forward is smp's generic encoder -> decoder -> head.
ARCHS = ("Unet", "UnetPlusPlus", "FPN", "PSPNet", "PAN", "DeepLabV3", "DeepLabV3Plus", "UPerNet", "Segformer",
         "Linknet", "MAnet")

# Arguments this adapter sets itself, or that would break the contract (logits out, no extra head).
OWN_ARGUMENTS = {"self", "encoder_name", "encoder_depth", "encoder_weights", "in_channels", "classes", "activation",
                 "aux_params", "kwargs"}

log = logging.getLogger("trashseg.models")

# PAN's feature pyramid attention pools its deepest features three more times.
EXTRA_STRIDE = {"PAN": 8}

# The input that finds the encoder's unused modules: the smallest every encoder takes at full depth.
PROBE_SIZE = 64


def decoder_arguments(arch: str) -> list[str]:
    """The keyword arguments smp's `arch` takes besides what the adapter sets."""
    return [p for p in inspect.signature(getattr(smp, arch).__init__).parameters if p not in OWN_ARGUMENTS]


def takes_dynamic_size(timm_name: str) -> bool:
    """Whether the model class behind a timm name takes `dynamic_img_size` (ViT, Swin, ...): such
    models are planned for one img_size and refuse any other unless told to resize themselves."""
    try:
        module = sys.modules[timm.models.model_entrypoint(timm_name.split(".")[0]).__module__]
    except (RuntimeError, KeyError):  # not a timm model: smp reports it when it builds
        return False
    classes = (c for c in vars(module).values()
               if isinstance(c, type) and issubclass(c, nn.Module) and c.__module__ == module.__name__)
    return any("dynamic_img_size" in inspect.signature(c.__init__).parameters for c in classes)


class SmpModel(SegmentationModel):
    def __init__(self, net: smp.base.SegmentationModel, arch: str):
        super().__init__(net.encoder, net.decoder, net.segmentation_head)
        self.pad_multiple = net.encoder.output_stride * EXTRA_STRIDE.get(arch, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))


def encoder_probe(model: SmpModel) -> list[str]:
    """The encoder's modules (model-relative names) its forward does not use: smp's decoders and
    heads use every parameter they have."""
    dropped = ["encoder." + n for n in drop_unreached(model.encoder, torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE))]
    if dropped:
        log.info("smp encoder modules its forward does not use, recorded as model.dropped: %s", ", ".join(dropped))
    return dropped


@register("smp", probe=encoder_probe)
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
    if encoder_name.startswith("tu-") and "dynamic_img_size" not in timm_kwargs and takes_dynamic_size(encoder_name[3:]):
        timm_kwargs["dynamic_img_size"] = True  # else any input but img_size fails inside timm's patch embedding

    def build(weights: str | None) -> smp.base.SegmentationModel:
        try:
            return smp.create_model(arch, encoder_name=encoder_name, encoder_weights=weights, classes=num_classes,
                                    **kwargs, **timm_kwargs)
        except TypeError as err:  # timm's model class refuses a keyword of encoder_params
            if not timm_kwargs or "unexpected keyword" not in str(err):
                raise
            raise ValueError(f"model.encoder_params: timm's {encoder_name[3:]} does not take them ({err}); valid ones "
                             "are its model class's arguments") from None

    packaged = pretrained == "imagenet" and encoder_name.startswith("tu-") and has_packaged_weights(encoder_name[3:])
    if pretrained == "imagenet" and not packaged:
        net = download(f"smp {encoder_name} ImageNet weights", lambda: build("imagenet"))
    else:
        net = build(None)
    if packaged:
        load_packaged(net.encoder.model, encoder_name[3:])
    model = SmpModel(net, arch)
    if pretrained not in (None, "imagenet"):
        load_local(model.encoder, pretrained)
    return model
