"""Prove that frozen filters never moved: a stable hash of every frozen tensor in a model.

A module declares its frozen tensors by name in ``lcdense_frozen`` (LC-Blocks do it
themselves; :func:`lcdense.convert` marks the convs it freezes).

>>> from torch import nn
>>> from lcdense import convert
>>> model = nn.Sequential(nn.Conv2d(3, 8, 3))
>>> _ = convert(model, "frozen")
>>> len(frozen_digest(model))
64
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn


def frozen_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every frozen tensor of ``model`` by its qualified name.

    A module declares its frozen tensors by attribute name in ``lcdense_frozen``.

    Args:
        model: Any module.

    Returns:
        ``{qualified name: tensor}`` (e.g. ``"layer1.0.conv1.spatial_weight"``), in module order.
    """
    found: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        for attr in getattr(module, "lcdense_frozen", ()):
            found[f"{module_name}.{attr}" if module_name else attr] = getattr(module, attr)
    return found


def frozen_digest(model: nn.Module) -> str:
    """A stable hash of every frozen tensor of ``model`` (:func:`frozen_tensors`).

    Args:
        model: Any module; its frozen tensors may live on any device.

    Returns:
        The SHA-256, as 64 hex digits, over the names, dtypes, shapes and bytes of the frozen
            tensors, sorted by name: equal digests before and after training prove the frozen filters
            never moved.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(frozen_tensors(model).items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
