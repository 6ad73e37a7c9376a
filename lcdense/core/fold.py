"""Fold LC-Blocks back into plain convs ("combined filters"), RepVGG style.

:func:`combined_weight` and :func:`fold_block` are pure; :func:`fold` walks a model in place.

>>> import torch
>>> from lcdense import LCConv
>>> block = LCConv(3, 4, 3, expansion=2, padding=1).eval()
>>> x = torch.randn(1, 3, 8, 8)
>>> torch.allclose(fold_block(block)(x), block(x), atol=1e-5)
True
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import LCConv
from .precondition import PreconditionedConv


def combined_weight(block: LCConv) -> torch.Tensor:
    """The combined filters W' = P·W of ``block`` (differentiable)."""
    return block.weight


def fold_block(block: LCConv | PreconditionedConv) -> nn.Module:
    """A new plain conv computing exactly what ``block`` (an LC-Block with ``mid=None``, or a
    preconditioned conv) computes: ``block.fuse()``."""
    return block.fuse()


def fold(model: nn.Module) -> nn.Module:
    """Replace every LC-Block (and preconditioned conv) in ``model`` by its folded conv, in place; returns the model.

    A model that is itself an LC-Block is returned folded (a new module).
    """
    if isinstance(model, (LCConv, PreconditionedConv)):
        return fold_block(model)
    for name, child in list(model.named_children()):
        setattr(model, name, fold(child))
    return model
