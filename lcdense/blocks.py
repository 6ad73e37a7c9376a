"""The LC-Block: a k×k conv c_in→c_out·E followed directly by a 1×1 conv c_out·E→c_out.

With nothing in between the two convs, the block is exactly one k×k conv whose filters are the
"combined filters" W' = P·W. :class:`LCConv` exposes that conv's interface (``in_channels``,
``kernel_size``, ``stride``, …, and ``weight`` = W', differentiable), so code that reads a conv's
weight (BN fusion, analysis) just works.

>>> import torch
>>> block = LCConv(3, 8, 3, expansion=4, padding=1)
>>> block(torch.randn(2, 3, 16, 16)).shape
torch.Size([2, 8, 16, 16])
>>> tuple(block.weight.shape)
(8, 3, 3, 3)
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .errors import LcdenseError

Impl = Literal["auto", "fold", "naive"]
Mid = Literal["relu", "bn", "bn_relu"]
IMPLS: tuple[str, ...] = ("auto", "fold", "naive")
MIDS: tuple[str, ...] = ("relu", "bn", "bn_relu")

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def combine_filters(spatial: torch.Tensor, combine: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Combined filters W' = P·W, group by group (pure and differentiable).

    ``spatial``: (c_out·E, c_in/groups, *k); ``combine``: (c_out, c_out·E/groups).
    Returns (c_out, c_in/groups, *k).
    """
    expanded, c_out = spatial.shape[0], combine.shape[0]
    w = spatial.reshape(groups, expanded // groups, -1)
    p = combine.reshape(groups, c_out // groups, expanded // groups)
    return torch.bmm(p, w).reshape(c_out, *spatial.shape[1:])


def _as_tuple(value: int | tuple[int, ...], dims: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


def _mid_module(mid: str | None, channels: int, dims: int) -> nn.Module | None:
    if mid is None:
        return None
    if mid not in MIDS:
        raise LcdenseError(f"unknown mid op '{mid}'; use one of: none, {', '.join(MIDS)}")
    layers: list[nn.Module] = []
    if mid.startswith("bn"):
        layers.append(_BATCH_NORM[dims](channels))
    if mid.endswith("relu"):
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class LCConv(nn.Module):
    """LC-Block for 1d/2d/3d convs: spatial bank W (frozen buffer or Parameter) and learnable P.

    ``impl`` picks the forward: ``"fold"`` computes W' = P·W and runs one conv (cost nearly
    independent of E), ``"naive"`` runs the two convs (for verification, and required when
    ``mid`` puts an op between them), ``"auto"`` picks the cheaper exact form from the shapes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        *,
        expansion: int,
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] | str = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        spatial: Literal["frozen", "learnable"] = "frozen",
        mid: Mid | None = None,
        impl: Impl = "auto",
        dims: int = 2,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if expansion < 1:
            raise LcdenseError(f"E must be a positive integer, got {expansion}")
        if spatial not in ("frozen", "learnable"):
            raise LcdenseError(f"spatial must be 'frozen' or 'learnable', got '{spatial}'")
        if impl not in IMPLS:
            raise LcdenseError(f"unknown impl '{impl}'; use one of: {', '.join(IMPLS)}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _as_tuple(kernel_size, dims)
        self.stride = _as_tuple(stride, dims)
        self.dilation = _as_tuple(dilation, dims)
        self.padding = padding if isinstance(padding, str) else _as_tuple(padding, dims)
        self.padding_mode, self.expansion, self.dims = padding_mode, int(expansion), dims
        self.spatial, self.impl = spatial, impl
        self.transposed, self.output_padding = False, (0,) * dims
        expanded = out_channels * self.expansion
        kw = {"dtype": dtype, "device": device}
        bank = torch.empty(expanded, in_channels // groups, *self.kernel_size, **kw)
        if spatial == "frozen":
            self.register_buffer("spatial_weight", bank)
        else:
            self.spatial_weight = nn.Parameter(bank)
        self.combine_weight = nn.Parameter(torch.empty(out_channels, expanded // groups, **kw))
        self.bias = nn.Parameter(torch.zeros(out_channels, **kw)) if bias else None
        self.mid = _mid_module(mid, expanded, dims)

    @property
    def lcdense_frozen(self) -> tuple[str, ...]:
        """Names of this module's frozen tensors (read by :func:`lcdense.frozen_digest`)."""
        return ("spatial_weight",) if self.spatial == "frozen" else ()

    @property
    def foldable(self) -> bool:
        return self.mid is None

    @property
    def weight(self) -> torch.Tensor:
        """The combined filters W' = P·W (differentiable); only defined for foldable blocks."""
        if not self.foldable:
            raise LcdenseError("this LC-Block has an op between its convs (mid=...); it has no single weight")
        return combine_filters(self.spatial_weight, self.combine_weight, self.groups)

    def _explicit_padding(self) -> tuple[int, ...]:
        """Padding per side in F.pad order (last dim first), for non-zero padding modes."""
        pads: list[int] = []
        for d, k in zip(reversed(self.dilation), reversed(self.kernel_size)):
            if self.padding == "same":
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            elif self.padding == "valid":
                pads += [0, 0]
        if not pads:
            pads = [p for p in reversed(self.padding) for _ in range(2)]
        return tuple(pads)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        conv = _CONV_FN[self.dims]
        if self.padding_mode != "zeros":
            x = F.pad(x, self._explicit_padding(), mode=self.padding_mode)
            return conv(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def naive_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The literal two-conv block (materialises c_out·E feature maps)."""
        y = self._conv(x, self.spatial_weight, None)
        if self.mid is not None:
            y = self.mid(y)
        pointwise = self.combine_weight.reshape(*self.combine_weight.shape, *([1] * self.dims))
        return _CONV_FN[self.dims](y, pointwise, self.bias, groups=self.groups)

    def fold_forward(self, x: torch.Tensor) -> torch.Tensor:
        """One conv with the combined filters."""
        return self._conv(x, self.weight, self.bias)

    def choose_impl(self, input_shape: torch.Size | tuple[int, ...]) -> str:
        """The implementation the forward uses for an input of ``input_shape`` ('fold' or 'naive')."""
        if self.mid is not None:
            return "naive"
        if self.impl != "auto":
            return self.impl
        fold_cost, naive_cost = self.step_macs(input_shape)
        return "fold" if fold_cost <= naive_cost else "naive"

    def step_macs(self, input_shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
        """Forward multiply-accumulates of (fold form, naive form) for ``input_shape``."""
        positions = input_shape[0] * math.prod(
            max(1, s // st) for s, st in zip(input_shape[2:], self.stride)
        )
        taps = (self.in_channels // self.groups) * math.prod(self.kernel_size)
        expanded = self.out_channels * self.expansion
        fold = self.out_channels * (expanded // self.groups) * taps + positions * self.out_channels * taps
        naive = positions * expanded * taps + positions * self.out_channels * (expanded // self.groups)
        return fold, naive

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.choose_impl(x.shape) == "naive":
            return self.naive_forward(x)
        return self.fold_forward(x)

    def extra_repr(self) -> str:
        mid = f", mid={self.mid}" if self.mid is not None else ""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, E={self.expansion}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
            f"spatial={self.spatial}, impl={self.impl}{mid}"
        )
