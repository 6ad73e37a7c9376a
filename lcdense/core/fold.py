"""Fold LC-Blocks back into plain convs ("combined filters"), RepVGG style.

:func:`combined_weight` and :func:`fold_block` are pure. :func:`fold` follows one rule, as timm's
``reparameterize_model`` does: by default it folds a deep copy and leaves the model untouched;
with ``inplace=True`` it replaces the blocks inside the model and returns the model itself.

>>> import torch
>>> from lcdense import LCConv
>>> block = LCConv(3, 4, 3, expansion=2, padding=1).eval()
>>> x = torch.randn(1, 3, 8, 8)
>>> torch.allclose(fold_block(block)(x), block(x), atol=1e-5)
True
>>> model = torch.nn.Sequential(block, torch.nn.ReLU())
>>> deploy = fold(model)
>>> type(deploy[0]).__name__, type(model[0]).__name__
('Conv2d', 'LCConv')
>>> fold(model, inplace=True) is model, type(model[0]).__name__
(True, 'Conv2d')
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..base.errors import LcdenseError
from .blocks import LCConv
from .precondition import PreconditionedConv


def combined_weight(block: LCConv) -> torch.Tensor:
    """The combined filters W' = P·W of an LC-Block.

    Args:
        block: A foldable LC-Block (``mid=None``).

    Returns:
        W', shaped like the weight of the plain conv it folds into; differentiable with respect
            to the block's parameters.

    Raises:
        LcdenseError: The block has an operation between its two convs (``mid``) and so no single weight.
    """
    return block.weight


def fold_block(block: LCConv | PreconditionedConv) -> nn.Module:
    """A new plain conv computing exactly what ``block`` computes (``block.fuse()``).

    Args:
        block: An LC-Block with ``mid=None``, or a preconditioned conv.

    Returns:
        A new ``nn.Conv1d``/``Conv2d``/``Conv3d`` with the combined filters W' = P·W and the block's
            bias and geometry; it owns its tensors, and ``block`` is left unchanged.

    Raises:
        LcdenseError: The block has an operation between its two convs (``mid``) and cannot fold.
    """
    return block.fuse()


def fold(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Replace every LC-Block and preconditioned conv of ``model`` by its folded conv (:func:`fold_block`).

    Args:
        model: Any module; LC-Blocks and preconditioned convs anywhere inside it are folded.
        inplace: False: fold a deep copy and leave ``model`` untouched. True: replace the blocks
            inside ``model`` (no copy of the rest of the model is made).

    Returns:
        The folded model: a new module by default, ``model`` itself with ``inplace=True``.

    Raises:
        LcdenseError: ``inplace=True`` and ``model`` is itself an LC-Block or preconditioned conv
            (a module cannot replace itself; use :func:`fold_block`), or a block has a ``mid``
            operation and cannot fold.
    """
    if inplace and isinstance(model, (LCConv, PreconditionedConv)):
        raise LcdenseError(f"fold(inplace=True) cannot replace the model itself, a {type(model).__name__}; "
                           "use fold_block(model) for a single block")
    if not inplace:
        if isinstance(model, (LCConv, PreconditionedConv)):
            return fold_block(model)  # a new conv that owns its tensors: no copy of the block needed
        model = copy.deepcopy(model)
    _fold_children(model)
    return model


def _fold_children(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, (LCConv, PreconditionedConv)):
            setattr(module, name, fold_block(child))
        else:
            _fold_children(child)
