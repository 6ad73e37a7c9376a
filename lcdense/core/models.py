"""Models by name, randomly initialised (never downloads weights): the paper's CIFAR ResNet-D-W
(``resnet_lc``), any torchvision classification model, and timm models (``timm:NAME``).

>>> create_model("resnet18", num_classes=10).fc.out_features
10
>>> create_model("timm:resnet18d", num_classes=10).fc.out_features
10
>>> sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in cifar_resnet(20, 16).modules())
19
"""
from __future__ import annotations

from importlib.util import find_spec

import torch
from torch import nn

from ..base.errors import LcdenseError, require_extra, unknown_name


class BasicBlock(nn.Module):
    """Two k×k convs with BN/ReLU and a 1×1-conv shortcut where the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, kernel_size: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size, stride, pad, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size, 1, pad, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """Open-LTH style ResNet-D-W: k×k stride-1 stem, stages W/2W/4W of (D−2)/6 Basic blocks, FC."""

    def __init__(self, depth: int = 20, width: int = 16, kernel_size: int = 3, num_classes: int = 10,
                 in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise LcdenseError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 56, ...), got {depth}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise LcdenseError(f"kernel_size must be odd and positive, got {kernel_size}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size, 1, kernel_size // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        layers, c_in = [], width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(blocks):
                layers.append(BasicBlock(c_in, c_out, 2 if stage > 0 and i == 0 else 1, kernel_size))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def cifar_resnet(depth: int = 20, width: int = 16, kernel_size: int = 3, num_classes: int = 10,
                 in_channels: int = 3) -> CifarResNet:
    """The paper's CIFAR ResNet-D-W with k×k kernels (ResNet-20-16 by default), randomly initialised.

    Args:
        depth: D, of the form 6n+2 (8, 14, 20, 56, ...).
        width: W, the first stage's channels (the stages have W, 2W and 4W).
        kernel_size: k, odd: the spatial kernel of every conv but the shortcuts' 1×1.
        num_classes: Outputs of the final linear layer.
        in_channels: Input image channels.

    Returns:
        The model.

    Raises:
        LcdenseError: ``depth`` is not 6n+2, or ``kernel_size`` is not odd and positive.
    """
    return CifarResNet(depth, width, kernel_size, num_classes, in_channels)


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def create_model(name: str, num_classes: int = 1000, **kwargs) -> nn.Module:
    """A torchvision or timm classification model by name, randomly initialised (no download).

    Args:
        name: A torchvision model (``"resnet18"``, ``"torchvision:resnet18"``) or a timm model
            (``"timm:resnet18d"``); a bare name that torchvision lacks is looked up in timm too.
        num_classes: Outputs of the classifier.
        **kwargs: Passed on to ``torchvision.models.get_model`` or ``timm.create_model``.

    Returns:
        The model.

    Raises:
        LcdenseError: An unknown source or model name (the error lists the known ones).
        MissingExtra: The name needs timm, which is not installed.
    """
    import torchvision

    source, _, bare = name.rpartition(":")
    if source not in ("", "torchvision", "timm"):
        raise LcdenseError(f"unknown model source '{source}' in '{name}'; use torchvision:NAME or timm:NAME")
    if source != "timm" and bare in _torchvision_names():
        return torchvision.models.get_model(bare, weights=None, num_classes=num_classes, **kwargs)
    if source != "timm" and find_spec("timm") is None:
        raise unknown_name("torchvision model", bare, _torchvision_names())
    require_extra("timm", "timm", what=f"model '{name}'")
    import timm

    if source == "torchvision" or not timm.list_models(bare):
        known = _torchvision_names() if source == "torchvision" else _torchvision_names() + timm.list_models()
        raise unknown_name("model", bare, known)
    return timm.create_model(bare, pretrained=False, num_classes=num_classes, **kwargs)


