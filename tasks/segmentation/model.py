"""The U-Net (segmentation_models_pytorch) and a record of where each spatial filter's init came from.

smp initialises the decoder (Kaiming uniform, fan_in, ReLU gain) and the segmentation head
(Xavier uniform) with its own scheme inside ``smp.Unet(...)``. The runner converts the model
*after* it is built, and :func:`lcdense.convert` re-draws every conv it touches from its seeded
``init``, so the conversion's init is what every converted conv starts from. Convs left out of
the conversion scope keep smp's scheme (decoder/head) or the encoder's own default;
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
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

import lcdense
from lcdense import LCConv, LcdenseError, is_spatial_conv

#: Module-name globs for ``conversion.include`` (passed straight to :func:`lcdense.convert`).
SCOPES: dict[str, list[str]] = {
    "encoder": ["encoder.*"],
    "decoder": ["decoder.*"],
    "head": ["segmentation_head.*"],
}

_BUILD_DIGESTS = "lcdense_build_digests"


def transfer_source(encoder_from: str) -> tuple[str, lcdense.RunResult, str]:
    """The timm architecture, classification run and cell id of ``model.encoder_from`` (``RUN_DIR/cells/ID``).

    Args:
        encoder_from: The path of a finished classification cell of a timm model.

    Returns:
        (timm model name, the run as :func:`lcdense.load` reads it, the cell's id).

    Raises:
        LcdenseError: The path is not a cell of a run, the cell is unfinished or not a timm classifier.
    """
    path = Path(encoder_from).expanduser()
    if path.parent.name != "cells":
        raise LcdenseError(f"model.encoder_from must be RUN_DIR/cells/CELL_ID of a classification run, got {encoder_from}")
    run = lcdense.load(path.parent.parent)
    record = run.cell(path.name)
    source, _, arch = str(run.config.get("model", {}).get("name", "")).rpartition(":")
    if record.task != "classification" or source != "timm":
        raise LcdenseError(f"model.encoder_from needs a classification cell of a timm model (--model timm:NAME); "
                           f"{path.name} is a {record.task} cell of '{run.config.get('model', {}).get('name')}'")
    return arch, run, record.id


def build_unet(encoder: str, *, depth: int, decoder_channels: Sequence[int], encoder_from: str | None = None) -> smp.Unet:
    """A binary U-Net with randomly initialised weights (``encoder_weights=None``: never downloads).

    With ``encoder_from`` (``RUN_DIR/cells/ID``) the encoder is that trained classification
    cell's network, folded: the cell is exported to its timm checkpoint (a temporary folder),
    which smp's ``tu-`` encoder has timm load (``pretrained_cfg_overlay=dict(file=...)``); its
    spatial convs are marked trained (:func:`lcdense.is_trained`), so the conversion freezes them
    or LC-converts them from these filters instead of drawing random ones. ``encoder`` is then
    ``tu-<the cell's timm model>``.
    """
    if encoder_from:
        arch, run, cell_id = transfer_source(encoder_from)
        encoder = f"tu-{arch}"
        with tempfile.TemporaryDirectory(prefix="lcdense-encoder-") as folder:
            weights = run.export(cell_id, out=Path(folder) / "timm")["timm"]
            classes = json.loads((weights.parent / "config.json").read_text())["num_classes"]
            model = _unet(encoder, depth, decoder_channels, pretrained_cfg_overlay={"file": str(weights),
                                                                                    "num_classes": classes})
        for _, conv in _spatial_convs(model.encoder):
            conv.lcdense_trained = True
        return model
    return _unet(encoder, depth, decoder_channels)


def _unet(encoder: str, depth: int, decoder_channels: Sequence[int], **timm_kwargs: Any) -> smp.Unet:
    known = encoder in smp.encoders.get_encoder_names() or (encoder.startswith("tu-") and timm.is_model(encoder[3:]))
    if not known:
        raise LcdenseError(f"unknown smp encoder '{encoder}' (model.name); e.g. resnet18, resnet34, efficientnet-b0, "
                           "tu-<any timm model> — see segmentation_models_pytorch.encoders.get_encoder_names()")
    if len(decoder_channels) != depth:
        raise LcdenseError(f"model.decoder_channels needs one entry per encoder stage: {depth} "
                           f"(model.encoder_depth), got {len(decoder_channels)}")
    model = smp.Unet(encoder_name=encoder, encoder_depth=depth, encoder_weights=True if timm_kwargs else None,
                     decoder_channels=list(decoder_channels), in_channels=3, classes=1, **timm_kwargs)
    _drop_unused_encoder_stages(model, depth)
    setattr(model, _BUILD_DIGESTS, {name: _digest(m.weight) for name, m in _spatial_convs(model)})
    return model


def export_unet(model: nn.Module, model_config: dict[str, Any], folder: Path) -> Path:
    """Write the folded U-Net ``model`` into ``folder`` through smp's own ``save_pretrained``
    (``config.json`` + ``model.safetensors``); ``smp.from_pretrained(folder)`` loads it. The
    encoder stages the U-Net does not use (dropped by :func:`build_unet`) are smp's fresh ones.

    Args:
        model: The trained, folded U-Net.
        model_config: The resolved ``model`` section.
        folder: An existing, empty folder.

    Returns:
        ``folder``.
    """
    encoder_from = model_config.get("encoder_from")
    name = f"tu-{transfer_source(encoder_from)[0]}" if encoder_from else model_config["name"]
    unet = smp.Unet(encoder_name=name, encoder_depth=model_config["encoder_depth"], encoder_weights=None,
                    decoder_channels=list(model_config["decoder_channels"]), in_channels=3, classes=1)
    loaded = unet.load_state_dict(model.state_dict(), strict=False)
    unused = [key for key in loaded.missing_keys if key not in model.state_dict()
              and not key.startswith("encoder.")]
    if loaded.unexpected_keys or unused:
        raise LcdenseError(f"the trained U-Net does not fit smp's (unexpected: {loaded.unexpected_keys[:3]}, "
                           f"missing: {unused[:3]})")
    unet.save_pretrained(str(folder))
    return folder


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
        if lcdense.is_trained(module):
            out[name] = "trained (model.encoder_from)"
        elif isinstance(module, LCConv):
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
