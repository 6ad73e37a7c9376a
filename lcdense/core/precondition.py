"""The preconditioned form of a frozen-spatial LC-Block: cost independent of E, even E → ∞.

With the spatial bank W frozen, an LC-Block's only trainable map is P and its conv is W' = P·W.
An SGD step on P moves W' by -lr·(∂L/∂W')·WᵀW (plus ``wd·W'`` for weight decay on P): so
training P with SGD (momentum, Nesterov, dampening, weight decay, any LR schedule) is
*exactly* training W' directly with its gradient right-multiplied by M = WᵀW (per group,
d × d with d = c_in/groups·k²). :class:`PreconditionedConv` is that: a plain conv whose
weight is W' (started at P₀·W, the LC-Block's own initial filters) and whose backward returns
G·M instead of G. W itself is never stored, only the frozen M (listed in ``lcdense_frozen``).

Exact **only for SGD-family optimizers** (``torch.optim.SGD``) and **without gradient
clipping** (clipping rescales by the norm of G·M rather than of the LC-Block's gradients);
adaptive optimizers (Adam, AdamW, RMSprop, …) normalise per parameter and break it.
:func:`check_preconditioned_optimizer` refuses everything else.

>>> import torch
>>> from lcdense import LCConv
>>> block = LCConv(3, 8, 3, expansion=4, padding=1)
>>> _ = torch.nn.init.normal_(block.spatial_weight), torch.nn.init.normal_(block.combine_weight)
>>> conv = PreconditionedConv.from_lc(block)
>>> x = torch.randn(2, 3, 8, 8)
>>> torch.allclose(conv(x), block(x), atol=1e-4)
True
>>> tuple(conv.preconditioner.shape)
(1, 27, 27)
"""
from __future__ import annotations

import torch
from torch import nn

from ..base.errors import LcdenseError
from .blocks import PLAIN_CONV, LCConv, conv_with_weight

SGD_FAMILY: tuple[type[torch.optim.Optimizer], ...] = (torch.optim.SGD,)


class _PreconditionGradient(torch.autograd.Function):
    """Identity in the forward; the backward right-multiplies the weight's gradient by M."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, preconditioner: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(preconditioner)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (m,) = ctx.saved_tensors
        flat = grad.reshape(m.shape[0], -1, m.shape[-1])
        return torch.bmm(flat, m.to(grad.dtype)).reshape(grad.shape), None


def spatial_gram(spatial: torch.Tensor, groups: int) -> torch.Tensor:
    """M = WᵀW per group: (groups, d, d) for a bank W of shape (c_out·E, c_in/groups, *k)."""
    w = spatial.reshape(groups, spatial.shape[0] // groups, -1)
    return torch.bmm(w.transpose(1, 2), w)


class PreconditionedConv(nn.modules.conv._ConvNd):
    """The preconditioned form of a frozen-spatial LC-Block: a conv of weight W' whose gradient is G·M.

    The base class of :class:`PreconditionedConv1d`, :class:`PreconditionedConv2d` and
    :class:`PreconditionedConv3d` (the ``isinstance`` target); build one with :meth:`from_lc`.
    Its frozen buffer ``preconditioner`` is M = WᵀW per group. Exact only under SGD
    (:func:`check_preconditioned_optimizer`).

    The constructor is torch's conv constructor (``nn.Conv{1,2,3}d`` for the subclasses); it sets
    no ``preconditioner``, which :meth:`from_lc` adds.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: The kernel's size per spatial dimension.
        stride: The stride.
        padding: The padding, or ``"same"``/``"valid"``.
        dilation: The dilation.
        transposed: Whether the conv is transposed (False here; the subclasses set it).
        output_padding: The transposed conv's output padding (unused here).
        groups: The number of channel groups.
        bias: Whether the conv has a bias.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
        device: The device of the weight and bias.
        dtype: The dtype of the weight and bias.
    """

    lcdense_frozen: tuple[str, ...] = ("preconditioner",)
    foldable = True

    @property
    def dims(self) -> int:
        return len(self.kernel_size)

    @classmethod
    def from_lc(cls, block: LCConv) -> PreconditionedConv:
        """The preconditioned conv computing what ``block`` computes.

        Args:
            block: An LC-Block with a frozen spatial bank and no ``mid``.

        Returns:
            A new preconditioned conv of the block's dimensions, with weight W' = P·W, the block's
                bias and training mode, and M from its bank (the bank itself is not kept).

        Raises:
            LcdenseError: The bank is learnable, or the block has a ``mid`` op.
        """
        if block.spatial != "frozen" or not block.foldable:
            raise LcdenseError(
                "the preconditioned form needs a frozen spatial bank and no op between the convs "
                f"(got spatial='{block.spatial}', mid={block.mid}); use impl='fold' instead"
            )
        conv = conv_with_weight(block, _PRECONDITIONED[block.dims], block.weight)
        conv.register_buffer("preconditioner", spatial_gram(block.spatial_weight.detach(), block.groups))
        conv.expansion = block.expansion
        conv.train(block.training)
        return conv

    def fuse(self) -> nn.Module:
        """This conv as a new plain conv of the same weight and bias.

        The hook that :func:`lcdense.fold_block` and ``timm.utils.reparameterize_model`` call.

        Returns:
            A new ``nn.Conv{1,2,3}d`` that owns copies of the weight and bias.
        """
        return conv_with_weight(self, PLAIN_CONV[self.dims], self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _PreconditionGradient.apply(self.weight, self.preconditioner), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, preconditioned E={self.expansion}"


class PreconditionedConv1d(PreconditionedConv, nn.Conv1d):
    """1d :class:`PreconditionedConv`."""


class PreconditionedConv2d(PreconditionedConv, nn.Conv2d):
    """2d :class:`PreconditionedConv`."""


class PreconditionedConv3d(PreconditionedConv, nn.Conv3d):
    """3d :class:`PreconditionedConv`."""


_PRECONDITIONED = {1: PreconditionedConv1d, 2: PreconditionedConv2d, 3: PreconditionedConv3d}


def check_preconditioned_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Refuse an optimizer outside the SGD family for a model's preconditioned convs.

    The preconditioned form is exact only under SGD (momentum, Nesterov, weight decay), without
    gradient clipping.

    Args:
        optimizer: The optimizer that will train ``model``.
        model: The model, with or without preconditioned convs.

    Raises:
        LcdenseError: ``optimizer`` is not in the SGD family and trains a preconditioned weight
            of ``model``.
    """
    preconditioned = {
        id(m.weight): name for name, m in model.named_modules() if isinstance(m, PreconditionedConv)
    }
    if not preconditioned or isinstance(optimizer, SGD_FAMILY):
        return
    handled = [preconditioned[id(p)] for g in optimizer.param_groups for p in g["params"] if id(p) in preconditioned]
    if handled:
        raise LcdenseError(
            f"the preconditioned LC form (impl='preconditioned') is exact only under SGD (momentum, "
            f"Nesterov, weight decay; no gradient clipping), but {type(optimizer).__name__} trains "
            f"{len(handled)} preconditioned weights (e.g. '{handled[0]}.weight'); use an SGD optimizer "
            "or impl='fold'"
        )


__all__ = ["PreconditionedConv", "check_preconditioned_optimizer", "spatial_gram", "SGD_FAMILY"]
