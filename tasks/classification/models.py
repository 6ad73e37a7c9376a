"""The classification task's model wrapper: input normalization inside the model, so that
attacks work in [0, 1] pixel space.

>>> import torch
>>> model = Normalized(nn.Identity(), mean=(0.5,), std=(0.25,))
>>> model(torch.full((1, 1, 1, 1), 0.75)).item()
1.0
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn



class Normalized(nn.Module):
    """``net`` applied to per-channel normalised inputs; the model itself takes [0, 1] pixels."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)
