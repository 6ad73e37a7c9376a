"""Costs of a model: parameter counts and forward multiply-accumulates (MACs).

>>> from torch import nn
>>> count_parameters(nn.Conv2d(3, 8, 3))["trainable"]
224
>>> forward_macs(nn.Conv2d(3, 8, 3, padding=1), (3, 4, 4))
3456
>>> step_macs(nn.Conv2d(3, 8, 3, padding=1), (3, 4, 4))
10368
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .blocks import LCConv
from .digest import frozen_tensors
from .precondition import PreconditionedConv


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameters, frozen tensors and their sum.

    Args:
        model: Any module.

    Returns:
        ``{"trainable": ..., "frozen": ..., "total": ...}`` in elements: frozen counts the
            tensors a module lists in ``lcdense_frozen`` and parameters that do not require grad.
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fixed = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    frozen = sum(t.numel() for t in frozen_tensors(model).values()) + fixed
    return {"trainable": trainable, "frozen": frozen, "total": trainable + frozen}


@dataclass
class LayerCall:
    """One conv/linear call seen while tracing a single sample."""

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    output_numel: int

    def batch_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, *self.input_shape[1:])

    def macs(self, batch_size: int) -> int:
        """MACs per sample when the layer runs on a batch of ``batch_size``."""
        m = self.module
        if isinstance(m, LCConv):
            shape = self.batch_shape(batch_size)
            fold, naive = m.step_macs(shape)
            return (fold if m.choose_impl(shape) == "fold" else naive) // batch_size
        if isinstance(m, nn.modules.conv._ConvNd):
            return self.output_numel * m.in_channels // m.groups * math.prod(m.kernel_size)
        return self.output_numel * m.in_features


    def step_macs(self, batch_size: int) -> int:
        """MACs per sample of a training step (forward and backward) at ``batch_size``: a conv or
        linear layer's backward costs two forwards (input and weight gradients); an LC-Block
        counts its chosen form's step (:meth:`LCConv.step_macs`); a preconditioned conv adds
        G·M (c_out × d × d per group, once per batch)."""
        m = self.module
        if isinstance(m, LCConv):
            shape = self.batch_shape(batch_size)
            fold, naive = m.step_macs(shape, backward=True)
            return (fold if m.choose_impl(shape, training=True) == "fold" else naive) // batch_size
        macs = 3 * self.macs(batch_size)
        if isinstance(m, PreconditionedConv):
            d = m.preconditioner.shape[-1]
            macs += m.out_channels * d * d // batch_size
        return macs


def trace_layers(model: nn.Module, input_size: Sequence[int]) -> list[LayerCall]:
    """Run one zero sample of ``input_size`` (C, H, W...) through ``model`` in eval mode and
    record every conv, linear and LC-Block call. LC-Blocks compute nothing while tracing: each
    gives zeros of its output's shape, so its filters are not combined (at a large E that would
    cost more than the rest of the model); the model's mode is restored."""
    calls: list[LayerCall] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear, LCConv)):
            def hook(m: nn.Module, inp: tuple, out: torch.Tensor, n: str = name) -> None:
                if isinstance(out, torch.Tensor):
                    calls.append(LayerCall(n, m, tuple(inp[0].shape), out[0].numel()))
            handles.append(module.register_forward_hook(hook))
    param = next(iter(model.parameters()), None)
    kwargs = {"dtype": param.dtype, "device": param.device} if param is not None else {}
    was_training = model.training
    blocks = {m: m._last_impl for m in model.modules() if isinstance(m, LCConv)}
    try:
        for block in blocks:  # no last form: lcdense.prefold combines nothing either
            block._shapes_only, block._last_impl = True, None
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size, **kwargs))
    finally:
        model.train(was_training)
        for block, last in blocks.items():
            block._shapes_only, block._last_impl = False, last
        for h in handles:
            h.remove()
    return calls


def forward_macs(model: nn.Module, input_size: Sequence[int], batch_size: int = 1) -> int:
    """Multiply-accumulates per sample of the forward's convs and linear layers.

    LC-Blocks count what their chosen implementation executes at ``batch_size``, the fold of
    W' (once per batch) shared among the batch's samples. The model runs one zero sample, in eval
    mode (its mode is restored).

    Args:
        model: Any module.
        input_size: One sample's shape, (C, H, W) or (C, *spatial).
        batch_size: The batch the LC-Blocks choose their forms for and share their fold among.

    Returns:
        MACs per sample.
    """
    return sum(call.macs(batch_size) for call in trace_layers(model, input_size))


def step_macs(model: nn.Module, input_size: Sequence[int], batch_size: int = 1) -> int:
    """Multiply-accumulates per sample of a training step (see :meth:`LayerCall.step_macs`)."""
    return sum(call.step_macs(batch_size) for call in trace_layers(model, input_size))
