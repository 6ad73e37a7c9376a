"""The U-Net (segmentation_models_pytorch) and a record of where each spatial filter's init came from.

smp initialises the decoder (Kaiming uniform, fan_in, ReLU gain) and the segmentation head
(Xavier uniform) with its own scheme inside ``smp.Unet(...)``. The runner converts the model
*after* it is built, and :func:`lcdense.convert` re-draws every conv it touches from its seeded
``init``, so the conversion's init is what every converted conv starts from. Convs left out of
the conversion scope (``conversion.scope``; the segmentation head by default) keep smp's scheme (decoder/head) or the encoder's own default;
:func:`init_sources` says which is which, and ``fit`` writes it to the cell's ``init_sources.json``.

>>> import torch
>>> _ = torch.manual_seed(0)
>>> model = build_unet("resnet18", depth=3, decoder_channels=[32, 16, 8])
>>> sources = init_sources(model, "kaiming_uniform")
>>> sources["decoder.blocks.0.conv1.0"]
'smp decoder scheme (kaiming_uniform fan_in, relu gain)'
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from lcdense import LCConv, LcdenseError, is_spatial_conv

#: The U-Net's parts as module-name globs (smp's layout), which the conversion scopes name.
PARTS: dict[str, tuple[str, ...]] = {
    "encoder": ("encoder.*",),
    "decoder": ("decoder.*",),
    "head": ("segmentation_head.*",),
}

_BUILD_DIGESTS = "lcdense_build_digests"


def build_unet(encoder: str, *, depth: int, decoder_channels: Sequence[int]) -> smp.Unet:
    """A binary U-Net with randomly initialised weights (``encoder_weights=None``: never downloads)."""
    known = encoder in smp.encoders.get_encoder_names() or (encoder.startswith("tu-") and timm.is_model(encoder[3:]))
    if not known:
        raise LcdenseError(f"unknown smp encoder '{encoder}' (model.name); e.g. resnet18, resnet34, efficientnet-b0, "
                           "tu-<any timm model> — see segmentation_models_pytorch.encoders.get_encoder_names()")
    if len(decoder_channels) != depth:
        raise LcdenseError(f"model.decoder_channels needs one entry per encoder stage: {depth} "
                           f"(model.encoder_depth), got {len(decoder_channels)}")
    model = smp.Unet(encoder_name=encoder, encoder_depth=depth, encoder_weights=None,
                     decoder_channels=list(decoder_channels), in_channels=3, classes=1)
    _drop_unused_encoder_stages(model, depth)
    setattr(model, _BUILD_DIGESTS, {name: _digest(m.weight) for name, m in _spatial_convs(model)})
    return model


def _drop_unused_encoder_stages(model: smp.Unet, depth: int) -> None:
    """smp keeps every encoder stage even when ``encoder_depth`` uses fewer (e.g. resnet18's
    layer3/layer4 at depth 3); replace encoder children whose parameters get no gradient in a
    probe forward/backward by ``nn.Identity``, so they are neither converted nor counted."""
    side = 2 ** (depth + 1)
    model.eval()(torch.zeros(1, 3, side, side)).sum().backward()
    model.train()
    for name, child in list(model.encoder.named_children()):
        params = list(child.parameters())
        if params and all(p.grad is None for p in params):
            setattr(model.encoder, name, nn.Identity())
    model.zero_grad(set_to_none=True)


def _spatial_convs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LCConv) or is_spatial_conv(m)]


def _digest(weight: torch.Tensor) -> str:
    return hashlib.sha256(weight.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()


def init_sources(model: nn.Module, init: str) -> dict[str, str]:
    """Each spatial conv → where its starting filters came from (call before training; ``init``:
    the init the conversion re-drew the cell's filters from)."""
    built: dict[str, str] = getattr(model, _BUILD_DIGESTS, {})
    out = {}
    for name, module in _spatial_convs(model):
        if isinstance(module, LCConv):
            out[name] = f"lcdense {init} (LC-Block spatial bank)"
        elif built.get(name) != _digest(module.weight):
            out[name] = f"lcdense {init}"
        elif name.startswith("decoder."):
            out[name] = "smp decoder scheme (kaiming_uniform fan_in, relu gain)"
        elif name.startswith("segmentation_head."):
            out[name] = "smp head scheme (xavier_uniform)"
        else:
            out[name] = "encoder default"
    return out
