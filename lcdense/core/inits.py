"""Seeded random filter banks.

Every distribution is scaled to the standard deviation of PyTorch's default conv init,
Kaiming uniform U(-a, a) with a = 1/sqrt(fan_in), i.e. std = 1/sqrt(3 * fan_in) (paper, appendix B).
The Glorot variants use fan_avg = (fan_in + fan_out) / 2 in place of fan_in.

A layer's filters depend only on (seed, layer name, shape, init), never on construction order,
so the baseline, frozen and learnable variants of a model start from identical filters.

>>> import torch
>>> w = seeded_filters("kaiming_uniform", (16, 3, 3, 3), seed=0, name="conv1")
>>> torch.equal(w, seeded_filters("kaiming_uniform", (16, 3, 3, 3), seed=0, name="conv1"))
True
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import torch

from ..base.errors import unknown_name

InitFn = Callable[[tuple[int, ...], float, torch.Generator, torch.dtype], torch.Tensor]


def _uniform(shape: tuple[int, ...], std: float, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    bound = std * math.sqrt(3.0)
    return torch.rand(shape, generator=gen, dtype=dtype).mul_(2).sub_(1).mul_(bound)


def _normal(shape: tuple[int, ...], std: float, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=dtype).mul_(std)


def _binary(shape: tuple[int, ...], std: float, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    signs = torch.randint(0, 2, shape, generator=gen).to(dtype) * 2 - 1
    return signs * std


def _ternary(shape: tuple[int, ...], std: float, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    # values {-a, 0, a} with equal probability: std = a * sqrt(2/3)
    levels = torch.randint(0, 3, shape, generator=gen).to(dtype) - 1
    return levels * std * math.sqrt(1.5)


def _orthogonal(shape: tuple[int, ...], std: float, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    # semi-orthogonal over the flattened bank (rows = filters), rescaled to the target std
    rows, cols = shape[0], math.prod(shape[1:])
    a = torch.randn(max(rows, cols), min(rows, cols), generator=gen, dtype=dtype)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))
    if rows < cols:
        q = q.T
    rms = math.sqrt(min(rows, cols) / (rows * cols))
    return (q * (std / rms)).reshape(shape)


_DISTRIBUTIONS: dict[str, tuple[InitFn, bool]] = {
    # name: (sampler, uses fan_avg instead of fan_in)
    "kaiming_uniform": (_uniform, False),
    "kaiming_normal": (_normal, False),
    "glorot_uniform": (_uniform, True),
    "glorot_normal": (_normal, True),
    "binary": (_binary, False),
    "ternary": (_ternary, False),
    "orthogonal": (_orthogonal, False),
}

INITS: tuple[str, ...] = tuple(_DISTRIBUTIONS)
"""The names of the filter distributions :func:`seeded_filters` draws from."""


NATIVE = "native"
"""Not a distribution: keep the filters the architecture's own init gave them when the model was
built (e.g. timm's ResNet init), as the paper's timm baselines started. Only the baseline and frozen
modes can keep them; LC-Blocks draw new banks."""


def check_init(init: str, *, native: bool = False) -> str:
    """Return ``init`` if it is a known init name (or :data:`NATIVE`, where ``native``), else raise a clear error.

    Args:
        init: The name.
        native: Whether :data:`NATIVE` is accepted.

    Returns:
        ``init``.

    Raises:
        LcdenseError: An unknown name, or ``native`` where it does not apply.
    """
    if native and init == NATIVE:
        return init
    if init not in _DISTRIBUTIONS:
        raise unknown_name("init", init, INITS + ((NATIVE,) if native else ()))
    return init


def layer_seed(seed: int, name: str, shape: Sequence[int], init: str) -> int:
    """A 63-bit seed derived from (seed, layer name, shape, init) alone."""
    key = f"{seed}|{name}|{tuple(int(s) for s in shape)}|{init}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def seeded_filters(
    init: str,
    shape: Sequence[int],
    *,
    seed: int,
    name: str,
    fan_out: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw a filter bank of ``shape`` for layer ``name``, from its own seeded generator.

    Sampling happens on the CPU (so every device gets the same filters) in float64 for float64
    models and in float32 otherwise; the scale is that of PyTorch's default conv init.

    Args:
        init: The distribution, one of :data:`INITS`.
        shape: (c_out, c_in/groups, *kernel); fan_in is ``prod(shape[1:])``.
        seed: The experiment's seed.
        name: The layer's name; with ``seed``, ``shape`` and ``init`` it alone decides the filters.
        fan_out: For the Glorot inits (default ``shape[0] * prod(shape[2:])``).
        dtype: The returned dtype.
        device: The returned device.

    Returns:
        The filters, a new tensor of ``shape``.

    Raises:
        LcdenseError: An unknown ``init``.
    """
    sampler, uses_fan_avg = _DISTRIBUTIONS[check_init(init)]
    shape = tuple(int(s) for s in shape)
    fan_in = math.prod(shape[1:])
    if fan_out is None:
        fan_out = shape[0] * math.prod(shape[2:])
    fan = (fan_in + fan_out) / 2 if uses_fan_avg else fan_in
    gen = torch.Generator().manual_seed(layer_seed(seed, name, shape, init))
    sample_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    weights = sampler(shape, 1.0 / math.sqrt(3.0 * fan), gen, sample_dtype)
    return weights.to(dtype=dtype, device=device)
