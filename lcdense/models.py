"""Build torchvision and timm models by name, randomly initialised (never downloads weights).

>>> create_model("resnet18", num_classes=10).fc.out_features
10
>>> create_model("timm:resnet18d", num_classes=10).fc.out_features
10
"""
from __future__ import annotations

from torch import nn

from .errors import LcdenseError, unknown_name


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def create_model(name: str, num_classes: int = 1000, **kwargs) -> nn.Module:
    """``name`` is a torchvision classification model, or a timm model as ``timm:NAME``
    (a bare name that torchvision lacks is looked up in timm too)."""
    import torchvision

    source, _, bare = name.rpartition(":")
    if source not in ("", "torchvision", "timm"):
        raise LcdenseError(f"unknown model source '{source}' in '{name}'; use torchvision:NAME or timm:NAME")
    if source != "timm" and bare in _torchvision_names():
        return torchvision.models.get_model(bare, weights=None, num_classes=num_classes, **kwargs)
    import timm

    if source == "torchvision" or not timm.list_models(bare):
        known = _torchvision_names() if source == "torchvision" else _torchvision_names() + timm.list_models()
        raise unknown_name("model", bare, known)
    return timm.create_model(bare, pretrained=False, num_classes=num_classes, **kwargs)


__all__ = ["create_model", "LcdenseError"]
