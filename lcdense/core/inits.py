"""Seeded random filter banks.

Every distribution is scaled to the standard deviation of PyTorch's default conv init,
Kaiming uniform U(-a, a) with a = 1/sqrt(fan_in), i.e. std = 1/sqrt(3 * fan_in) (paper, appendix B).
The Glorot variants use fan_avg = (fan_in + fan_out) / 2 in place of fan_in.

A layer's filters depend only on (seed, layer name, shape, init), never on construction order,
so the baseline, frozen and learnable variants of a model start from identical filters.

They are bitwise the same on every host and device: sampling happens on the CPU from the
generator's serial streams only (``torch.rand``, ``torch.randint``), and the normal family is
transformed from uniform bits with IEEE-exact operations alone (+, −, ×, ÷, √, frexp): the
Marsaglia polar method, with a logarithm of its own (:func:`exact_log`). ``torch.randn`` is not
used: its CPU kernel takes a vectorised path under AVX2/AVX512 and a scalar one elsewhere
(``ATEN_CPU_CAPABILITY=default``, aarch64), which draw different numbers from the same seed.

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
from torch._guards import detect_fake_mode

from ..base.errors import unknown_name

InitFn = Callable[[tuple[int, ...], float, torch.Generator, torch.dtype], torch.Tensor]


def _uniform(shape: tuple[int, ...], std: float, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    bound = std * math.sqrt(3.0)
    return torch.rand(shape, generator=gen, dtype=dtype).mul_(2).sub_(1).mul_(bound)


_LN2 = 0.6931471805599453  # float64 nearest to ln 2
_SQRT_HALF = 0.7071067811865476
_CHUNK = 1 << 20  # pairs drawn per round of standard_normal
_LOG_TERMS = 12  # atanh series terms: |s| <= 0.1716, s² <= 0.0295: the first omitted term is below 1e-20


def exact_log(x: torch.Tensor) -> torch.Tensor:
    """Natural logarithm of positive float64 ``x`` built from IEEE-exact operations only, so every
    CPU path (vectorised or scalar, any capability) gives the same bits, unlike ``torch.log``.

    ``x = m · 2^e`` with m in [√½, √2); ``log m = 2·atanh(s)``, ``s = (m − 1)/(m + 1)``, summed by Horner
    from its series; accurate to a few units in the last place.

    Args:
        x: Positive finite float64 values.

    Returns:
        ``log(x)``, float64.

    >>> import math
    >>> v = exact_log(torch.tensor([1e-300, 0.3, 1.0, 2.5], dtype=torch.float64))
    >>> max(abs(a - math.log(b)) for a, b in zip(v.tolist(), [1e-300, 0.3, 1.0, 2.5])) < 1e-13
    True
    """
    m, e = torch.frexp(x)  # m in [0.5, 1)
    low = m < _SQRT_HALF
    m = torch.where(low, m * 2.0, m)
    e = (e - low.to(e.dtype)).to(torch.float64)
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    poly = torch.full_like(s, 1.0 / (2 * _LOG_TERMS - 1))
    for k in range(_LOG_TERMS - 2, -1, -1):  # one rounded operation at a time: nothing fused
        poly.mul_(s2).add_(1.0 / (2 * k + 1))
    return poly.mul_(s).mul_(2.0).add_(e.mul_(_LN2))


def standard_normal(count: int, gen: torch.Generator, *, scale: float = 1.0,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``count`` normal samples of standard deviation ``scale``, bitwise the same on every CPU and host.

    The Marsaglia polar method on pairs of ``torch.rand`` float64 draws (a serial, per-element
    generator path), with :func:`exact_log` and IEEE-exact arithmetic: no transcendental kernel
    whose vectorised and scalar versions could round differently. Computed in float64, in chunks
    (the result does not depend on their size), each rounded to ``dtype`` once.

    Args:
        count: How many samples.
        gen: A CPU generator (its state advances).
        scale: The standard deviation (multiplied in float64).
        dtype: The returned dtype.

    Returns:
        A tensor of ``count`` samples.

    >>> z = standard_normal(100_000, torch.Generator().manual_seed(0))
    >>> abs(float(z.mean())) < 0.01, abs(float(z.std()) - 1) < 0.01
    (True, True)
    """
    out, have = torch.empty(count, dtype=dtype), 0
    while have < count:
        pairs = min((count - have) // 2 + 16, _CHUNK)
        pairs += pairs // 3  # about π/4 of the pairs are accepted
        u = torch.rand(pairs, 2, generator=gen, dtype=torch.float64) * 2.0 - 1.0
        s = u[:, 0] * u[:, 0] + u[:, 1] * u[:, 1]
        keep = (s > 0) & (s < 1)
        u, s = u[keep], s[keep]
        factor = torch.sqrt((exact_log(s) * -2.0) / s)
        z = (u * factor[:, None]).reshape(-1)[:count - have]  # both coordinates of each accepted pair, in order
        out[have:have + len(z)] = (z * scale).to(dtype)
        have += len(z)
    return out


def _normal(shape: tuple[int, ...], std: float, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    return standard_normal(math.prod(shape), gen, scale=std, dtype=dtype).reshape(shape)


def _binary(shape: tuple[int, ...], std: float, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    signs = torch.randint(0, 2, shape, generator=gen).to(dtype) * 2 - 1
    return signs * std


def _ternary(shape: tuple[int, ...], std: float, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    # values {-a, 0, a} with equal probability: std = a * sqrt(2/3)
    levels = torch.randint(0, 3, shape, generator=gen).to(dtype) - 1
    return levels * std * math.sqrt(1.5)


def _orthogonal(shape: tuple[int, ...], std: float, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    # semi-orthogonal over the flattened bank (rows = filters), rescaled to the target std; the
    # Gaussian matrix from standard_normal, its QR in float64 (LAPACK) whatever the model's dtype
    rows, cols = shape[0], math.prod(shape[1:])
    a = standard_normal(rows * cols, gen).reshape(max(rows, cols), min(rows, cols))
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))
    if rows < cols:
        q = q.T
    rms = math.sqrt(min(rows, cols) / (rows * cols))
    return (q * (std / rms)).reshape(shape).to(dtype)


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

    Sampling happens on the CPU (so every device gets the same filters), bitwise the same on every
    host (see the module's notes); uniform, binary and ternary draws are made in float32 (float64 for
    float64 models), the normal family and orthogonal in float64, rounded to ``dtype`` at the end; the
    scale is that of PyTorch's default conv init.

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
    if detect_fake_mode() is not None:  # a shape-only copy (lcdense.cost.estimate): nothing to draw
        return torch.empty(shape, dtype=dtype, device=device)
    gen = torch.Generator().manual_seed(layer_seed(seed, name, shape, init))
    sample_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    weights = sampler(shape, 1.0 / math.sqrt(3.0 * fan), gen, sample_dtype)
    return weights.to(dtype=dtype, device=device)
