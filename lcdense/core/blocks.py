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

import functools
import math
import weakref
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..base.errors import LcdenseError

Impl = Literal["auto", "fold", "naive"]
Mid = Literal["relu", "bn", "bn_relu"]
IMPLS: tuple[str, ...] = ("auto", "fold", "naive")
MIDS: tuple[str, ...] = ("relu", "bn", "bn_relu")

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def combine_filters(spatial: torch.Tensor, combine: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Combined filters W' = P·W, group by group (pure and differentiable).

    The product runs in the bank's memory layout (e.g. channels_last), so the bank is never
    copied, and W' comes out in that same layout. Under autocast it runs in the autocast dtype
    without saving a low-precision copy of the bank.

    Args:
        spatial: The spatial bank W, shaped (c_out·E, c_in/groups, *k).
        combine: The combination P, shaped (c_out, c_out·E/groups).
        groups: The conv's groups; P combines the maps of each group separately.

    Returns:
        W', shaped (c_out, c_in/groups, *k).
    """
    expanded, c_out = spatial.shape[0], combine.shape[0]
    cast = autocast_dtype(spatial.device.type)
    if groups == 1 and cast is None and _onednn_fold(spatial, combine):
        return _OneDnnFold.apply(combine, spatial.view(expanded, -1)).view(c_out, *spatial.shape[1:])
    order = [0, *sorted(range(1, spatial.dim()), key=lambda i: -spatial.stride(i))]
    w = spatial.permute(order).reshape(groups, expanded // groups, -1)
    p = combine.reshape(groups, c_out // groups, expanded // groups)
    if cast is not None and cast != spatial.dtype:
        product = _LowPrecisionBmm.apply(p, w, cast)
    else:
        product = torch.bmm(p, w)
    out = product.reshape([c_out, *[spatial.shape[i] for i in order[1:]]])
    return out.permute([order.index(i) for i in range(spatial.dim())])


_PLAIN = (torch.Tensor, nn.Parameter)  # not fake or other tensor subclasses


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs in on ``device_type`` now, or None (off, or a device without autocast).

    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     autocast_dtype("cpu")
    torch.bfloat16
    >>> autocast_dtype("cpu"), autocast_dtype("meta")
    (None, None)
    """
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _onednn_fold(w: torch.Tensor, p: torch.Tensor) -> bool:
    """Whether :class:`_OneDnnFold` computes this fold: float32 CPU tensors, both contiguous
    (P as (c_out, K), W as (K, taps) with the bank's standard layout), oneDNN available, and not
    while compiling (the compiler takes the plain product)."""
    return (not torch.compiler.is_compiling() and w.device.type == "cpu" and w.dtype == p.dtype == torch.float32
            and w.is_contiguous() and p.is_contiguous() and type(w) in _PLAIN and type(p) in _PLAIN
            and torch.backends.mkldnn.is_available())


class _OneDnnFold(torch.autograd.Function):
    """W' = P·W and its backward as oneDNN GEMMs, each in the layout that needs no copy of the bank.

    All three are oneDNN inner products (``linear(x, y) = x·yᵀ``): W' = P·(Wᵀ)ᵀ reads the bank
    through its transposed view, which oneDNN takes as a strided weight without a copy; ∂P = G·Wᵀ
    reads W as it is, and ∂W = Pᵀ·G reads the small transposes of P and G.
    """

    @staticmethod
    def forward(ctx, p: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(p, w)
        return torch.ops.mkldnn._linear_pointwise(p, w.t(), None, "none", [], "")  # P·W

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        p, w = ctx.saved_tensors
        grad = grad.contiguous()
        linear = torch.ops.mkldnn._linear_pointwise
        grad_p = linear(grad, w, None, "none", [], "") if ctx.needs_input_grad[0] else None  # G·Wᵀ
        grad_w = (linear(p.t().contiguous(), grad.t().contiguous(), None, "none", [], "")  # Pᵀ·G
                  if ctx.needs_input_grad[1] else None)
        return grad_p, grad_w


class _LowPrecisionBmm(torch.autograd.Function):
    """``bmm(P, W)`` in ``dtype`` (as autocast would run it) that saves the full-precision P
    and W for backward, not their casts: W is resident anyway, so under autocast no bank-sized
    copy joins the saved activations; the backward casts W once more instead."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        ctx.save_for_backward(p, w)
        ctx.dtype = dtype
        return torch.bmm(p.to(dtype), w.to(dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        p, w = ctx.saved_tensors
        grad = grad.to(ctx.dtype)
        grad_p = torch.bmm(grad, w.to(ctx.dtype).transpose(1, 2)).to(p.dtype) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(p.to(ctx.dtype).transpose(1, 2), grad).to(w.dtype) if ctx.needs_input_grad[1] else None
        return grad_p, grad_w, None


def conv_with_weight(block: nn.Module, conv_class: type[nn.Module], weight: torch.Tensor) -> nn.Module:
    """A new ``conv_class`` with ``block``'s geometry (channels, kernel, stride, padding, dilation,
    groups, padding mode) whose weight is a copy of ``weight`` and bias a copy of ``block``'s. Built
    on the meta device, so no init is drawn (torch's global generator is left alone).

    >>> conv = conv_with_weight(nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d, torch.ones(3, 2, 3, 3))
    >>> conv.weight.sum().item(), conv.padding, conv.bias.shape
    (54.0, (1, 1), torch.Size([3]))
    """
    conv = conv_class(
        block.in_channels, block.out_channels, block.kernel_size, stride=block.stride, padding=block.padding,
        dilation=block.dilation, groups=block.groups, bias=block.bias is not None,
        padding_mode=block.padding_mode, device="meta", dtype=weight.dtype,
    )
    conv.weight = nn.Parameter(weight.detach().clone())
    if block.bias is not None:
        conv.bias = nn.Parameter(block.bias.detach().clone())
    return conv


#: The plain conv class of each number of spatial dimensions.
PLAIN_CONV: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


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

    A k×k conv ``in_channels`` → ``out_channels``·E (the bank W, ``spatial_weight``) followed by a
    1×1 conv ``out_channels``·E → ``out_channels`` (P, ``combine_weight``) and the bias. It has a
    conv's interface (``in_channels``, ``kernel_size``, ``stride``, …) and, without ``mid``, its
    ``weight`` is the combined filters W' = P·W. Both parts start from PyTorch's default conv init
    (:meth:`reset_parameters`).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: The spatial kernel, an int or one size per dimension.
        expansion: E, the bank's maps per output channel (>= 1).
        stride: As in ``nn.Conv2d``.
        padding: As in ``nn.Conv2d`` (an int, one per dimension, ``"same"`` or ``"valid"``).
        dilation: As in ``nn.Conv2d``.
        groups: As in ``nn.Conv2d``; P combines the maps of each group separately.
        bias: Whether the block adds a learnable bias.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
        spatial: ``"frozen"``: the bank is a buffer no optimizer updates (listed in
            ``lcdense_frozen``); ``"learnable"``: a parameter.
        mid: An op between the two convs (``"relu"``, ``"bn"``, ``"bn_relu"``); the block is then
            no longer one linear conv: it always runs both convs and cannot fold.
        impl: The forward: ``"fold"`` computes W' and runs one conv (its cost nearly independent
            of E), ``"naive"`` runs the two convs (for verification), ``"auto"`` picks the
            cheaper exact form from the shapes (:meth:`choose_impl`).
        dims: Spatial dimensions: 1, 2 or 3.
        dtype: The dtype of the block's tensors.
        device: The device of the block's tensors.

    Raises:
        LcdenseError: ``expansion`` < 1, or an unknown ``spatial`` or ``impl``.
    """

    _last_impl: str | None = None  # the form the last forward took
    _prefolded: tuple | None = None  # W', the bank and P it was combined from, and their state (prefold())
    _shapes_only: bool = False  # forwards give zeros of the output's shape (lcdense.trace_layers)

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
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default conv init on both parts (Kaiming uniform, bound 1/sqrt(fan_in)), from
        torch's global RNG; :func:`lcdense.convert` overwrites both with seeded filters."""
        with torch.no_grad():
            for weight in (self.spatial_weight, self.combine_weight):
                bound = 1.0 / math.sqrt(weight[0].numel())
                weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-1.0 / math.sqrt(self.combine_weight.shape[1]), 1.0 / math.sqrt(self.combine_weight.shape[1]))

    @property
    def lcdense_frozen(self) -> tuple[str, ...]:
        """Names of this module's frozen tensors (read by :func:`lcdense.frozen_digest`)."""
        return ("spatial_weight",) if self.spatial == "frozen" else ()

    @property
    def foldable(self) -> bool:
        """Whether the block is one linear conv (no ``mid`` op), so it has a ``weight`` and folds."""
        return self.mid is None

    @property
    def weight(self) -> torch.Tensor:
        """The combined filters W' = P·W (differentiable); only defined for foldable blocks.

        Raises:
            LcdenseError: The block has an op between its convs (``mid``).
        """
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
        """The literal two-conv block (materialises c_out·E feature maps).

        Args:
            x: The input, (N, C, *spatial).

        Returns:
            The block's output.
        """
        y = self._conv(x, self.spatial_weight, None)
        if self.mid is not None:
            y = self.mid(y)
        pointwise = self.combine_weight.reshape(*self.combine_weight.shape, *([1] * self.dims))
        return _CONV_FN[self.dims](y, pointwise, self.bias, groups=self.groups)

    def fold_forward(self, x: torch.Tensor) -> torch.Tensor:
        """One conv with the combined filters (those :meth:`prefold` combined, while still current).

        Args:
            x: The input, (N, C, *spatial).

        Returns:
            The block's output.
        """
        return self._conv(x, self._combined(), self.bias)

    def _state(self) -> tuple:
        """What W' was combined from, beyond the two tensors' identity: their versions (bumped by
        every in-place update), devices and dtypes, and the autocast state."""
        w, p = self.spatial_weight, self.combine_weight
        return w._version, p._version, w.device, w.dtype, p.device, p.dtype, autocast_dtype(w.device.type)

    def prefold(self) -> None:
        """Combine the filters now, for this block's next forwards, if its last forward folded and
        its bank is on the CPU (where the reordering is measured; see :func:`lcdense.prefold`).

        The combination is used while the bank and P are the same tensors, unmodified, under the
        same autocast state; it is let go once its gradient has been computed.
        """
        if self._last_impl != "fold" or self.spatial_weight.device.type != "cpu":
            return
        weight = self.weight
        self._prefolded = (weight, self.spatial_weight, self.combine_weight, self._state())
        if weight.requires_grad:
            weight.register_hook(functools.partial(_release_prefolded, weakref.ref(self), weakref.ref(weight)))

    def _combined(self) -> torch.Tensor:
        """W' for this forward: the prefolded one if still current, else combined now."""
        if self._prefolded is not None and not torch.compiler.is_compiling():
            weight, spatial, combine, state = self._prefolded
            if spatial is self.spatial_weight and combine is self.combine_weight and state == self._state():
                return weight
        return self.weight

    def __getstate__(self) -> dict:
        """Pickling and deep copies leave out a prefolded W' (a graph node, not state)."""
        state = super().__getstate__()
        state.pop("_prefolded", None)
        return state

    def choose_impl(self, input_shape: torch.Size | tuple[int, ...], training: bool | None = None) -> str:
        """The implementation the forward uses for an input of ``input_shape``.

        ``"auto"`` picks the form with fewer MACs for a whole training step (forward and
        backward) when training, for the forward alone otherwise; in training it takes the
        naive form only if the c_out·E maps it saves for backward are no larger than the spatial
        bank itself (memory stays bounded).

        Args:
            input_shape: The input's shape (N, C, *spatial).
            training: Whether the forward is part of a training step; default: grad mode is on
                and P requires grad.

        Returns:
            ``"fold"`` or ``"naive"``.
        """
        if self.mid is not None:
            return "naive"
        if self.impl != "auto":
            return self.impl
        if training is None:
            training = torch.is_grad_enabled() and self.combine_weight.requires_grad
        fold_cost, naive_cost = self.step_macs(input_shape, backward=training)
        saved_maps = self._positions(input_shape) * self.out_channels * self.expansion
        if naive_cost < fold_cost and (not training or saved_maps <= self.spatial_weight.numel()):
            return "naive"
        return "fold"

    def _positions(self, input_shape: torch.Size | tuple[int, ...]) -> int:
        """Output positions (batch × spatial) for ``input_shape``."""
        positions = input_shape[0]
        for size, stride in zip(input_shape[2:], self.stride):
            positions *= max(1, -(-size // stride))
        return positions

    def step_macs(self, input_shape: torch.Size | tuple[int, ...], *, backward: bool = False) -> tuple[int, int]:
        """Multiply-accumulates of the fold form and of the naive form for ``input_shape``.

        Args:
            input_shape: The input's shape (N, C, *spatial).
            backward: Count a whole training step: the forward and the gradients of the input,
                of P and, when the bank is learnable, of W (each conv's backward costs two forwards).

        Returns:
            (fold form MACs, naive form MACs) for the whole batch.
        """
        positions = self._positions(input_shape)
        taps = (self.in_channels // self.groups) * math.prod(self.kernel_size)
        expanded = self.out_channels * self.expansion
        conv = positions * self.out_channels * taps  # the folded conv
        combine = self.out_channels * (expanded // self.groups) * taps  # W' = P·W
        spatial = positions * expanded * taps  # naive: k×k conv to c_out·E maps
        pointwise = positions * self.out_channels * (expanded // self.groups)  # naive: 1×1 conv
        if not backward:
            return conv + combine, spatial + pointwise
        bank_passes = 3 if self.spatial == "learnable" else 2
        return 3 * conv + bank_passes * combine, bank_passes * spatial + 3 * pointwise

    def fuse(self) -> nn.Module:
        """This block as one new plain conv computing exactly what it computes, with weight W' = P·W.

        The hook that :func:`lcdense.fold_block` and ``timm.utils.reparameterize_model`` call, so
        timm's own tool folds LC models exactly.

        Returns:
            A new ``nn.Conv{1,2,3}d``; the block is left as it was.

        Raises:
            LcdenseError: the block has an op between its convs (``mid=...``): not a linear map.
        """
        if not self.foldable:
            raise LcdenseError("cannot fold an LC-Block with an op between its convs (mid=...): it is not a linear map")
        return conv_with_weight(self, PLAIN_CONV[self.dims], self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._shapes_only:
            weight = torch.empty(self.out_channels, self.in_channels // self.groups, *self.kernel_size, device="meta")
            return x.new_zeros(self._conv(x.to("meta"), weight, None).shape)
        impl = self.choose_impl(x.shape)
        if not torch.compiler.is_compiling():
            self._last_impl = impl
        if impl == "naive":
            return self.naive_forward(x)
        return self.fold_forward(x)

    def extra_repr(self) -> str:
        mid = f", mid={self.mid}" if self.mid is not None else ""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, E={self.expansion}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
            f"spatial={self.spatial}, impl={self.impl}{mid}"
        )


def _release_prefolded(block_ref: weakref.ref, weight_ref: weakref.ref, grad: torch.Tensor) -> None:
    """Tensor hook on a prefolded W': its gradient is complete, so no recomputation (activation
    checkpointing) can still need it; the block lets it go unless a newer one replaced it."""
    block = block_ref()
    if block is not None and block._prefolded is not None and block._prefolded[0] is weight_ref():
        block._prefolded = None


def prefold(model: nn.Module, _inputs: object = None) -> None:
    """Combine the filters W' = P·W of every LC-Block in ``model`` that folded in its last forward,
    before any layer runs: the forward pre-hook that :func:`lcdense.convert` registers.

    The same products as combining layer by layer, bitwise; only their order changes. The banks
    stream through the cache in one run instead of between the layers' activation work, and
    their backward (∂P, ∂W) runs after all of the model's other backward work, since autograd
    runs the most recently created node first. Without grad mode, and while compiling, nothing
    is done; nor for banks off the CPU: there it is not measured, and under DDP it would hold
    every bank's gradient, and so its all-reduce, to the end of the backward instead of
    overlapping it.

    Args:
        model: The model whose LC-Blocks combine their filters now.
        _inputs: The forward's inputs, as a forward pre-hook receives them (unused).

    >>> block = LCConv(3, 8, 3, expansion=4, padding=1)
    >>> _ = block.register_forward_pre_hook(prefold)
    >>> x = torch.randn(2, 3, 8, 8)
    >>> _ = block(x)                      # the first forward learns the block's form
    >>> y = block(x)                      # this one used the W' that prefold combined
    >>> block._prefolded is not None, torch.allclose(y, block._conv(x, block.weight, block.bias))
    (True, True)
    >>> y.sum().backward(); block._prefolded is None
    True
    """
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return
    for module in model.modules():
        if isinstance(module, LCConv):
            module.prefold()
