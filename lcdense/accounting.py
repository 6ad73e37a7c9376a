"""Costs of a model: parameter counts and forward multiply-accumulates (MACs).

>>> from torch import nn
>>> count_parameters(nn.Conv2d(3, 8, 3))["trainable"]
224
>>> forward_macs(nn.Conv2d(3, 8, 3, padding=1), (3, 4, 4))
3456
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .blocks import LCConv
from .digest import frozen_tensors


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameters, frozen tensors (lcdense-frozen) and their sum."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fixed = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    frozen = sum(t.numel() for t in frozen_tensors(model).values()) + fixed
    return {"trainable": trainable, "frozen": frozen, "total": trainable + frozen}


def _module_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    if isinstance(module, LCConv):
        x = inputs[0]
        fold, naive = module.step_macs(x.shape)
        return (fold if module.choose_impl(x.shape) == "fold" else naive) // x.shape[0]
    if isinstance(module, nn.modules.conv._ConvNd):
        taps = module.in_channels // module.groups * math.prod(module.kernel_size)
        return output[0].numel() * taps
    if isinstance(module, nn.Linear):
        return output[0].numel() * module.in_features
    return 0


def layer_inputs(model: nn.Module, input_size: Sequence[int], batch_size: int = 1) -> dict[str, tuple[int, ...]]:
    """Shape of the input each conv/linear module sees for a batch of ``input_size`` (C, H, W...)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str, module: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        shapes.setdefault(name, tuple(inp[0].shape))

    _trace(model, input_size, record, batch_size)
    return shapes


def forward_macs(model: nn.Module, input_size: Sequence[int], batch_size: int = 1) -> int:
    """Multiply-accumulates per sample of convs and linear layers for inputs of ``input_size``.

    LC-Blocks count what their chosen implementation executes at ``batch_size``, the fold of
    W' (once per batch) shared among the batch's samples.
    """
    total = [0]

    def add(name: str, module: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        if isinstance(out, torch.Tensor):
            total[0] += _module_macs(module, inp, out)

    _trace(model, input_size, add, batch_size)
    return total[0]


def _trace(model: nn.Module, input_size: Sequence[int], callback, batch_size: int = 1) -> None:
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear, LCConv)):
            handles.append(
                module.register_forward_hook(lambda m, i, o, n=name: callback(n, m, i, o))
            )
    param = next(iter(model.parameters()), None)
    kwargs = {"dtype": param.dtype, "device": param.device} if param is not None else {}
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(batch_size, *input_size, **kwargs))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
