"""Filter metrics: variance entropy (Gavrikov & Keuper, CVPR 2022), spatial variance, basis diagnostics.

All functions are pure, take CPU or GPU tensors, and compute in float64.

>>> import torch
>>> bank = torch.randn(64, 16, 3, 3, generator=torch.Generator().manual_seed(0))
>>> round(filter_variance_entropy(bank), 1)      # i.i.d. random filters read as random
1.0
>>> filter_variance_entropy(torch.ones(64, 16, 3, 3))  # one repeated pattern
0.0
"""
from __future__ import annotations

import math

import torch

# Randomness threshold H_T(n) fitted by Gavrikov & Keuper (2022) for 3×3 kernels.
_THRESHOLD_L = 1.2618047
_THRESHOLD_X0 = 2.30436435
_THRESHOLD_KAPPA = 0.88767525
_THRESHOLD_B = -0.31050834
NORMALIZED_KERNEL = (3, 3)
COHERENCE_MAX_ROWS = 2048


def randomness_threshold(n: int) -> float:
    """H_T(n): the variance entropy that ``n`` i.i.d. random 3×3 kernels reach.

    >>> round(randomness_threshold(48), 3), round(randomness_threshold(512), 3)
    (0.886, 0.948)
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    logistic = 1.0 + math.exp(-_THRESHOLD_KAPPA * (math.log2(n) - _THRESHOLD_X0))
    return _THRESHOLD_L / logistic + _THRESHOLD_B


def kernel_rows(weight: torch.Tensor) -> torch.Tensor:
    """A conv weight (c_out, c_in, *k) as n = c_out·c_in rows of prod(k) values, float64."""
    return weight.detach().reshape(-1, math.prod(weight.shape[2:])).to(torch.float64)


def variance_entropy(weight: torch.Tensor) -> float:
    """Un-normalised variance entropy H = −Σ p_i log₁₀ p_i of the kernels of ``weight``.

    p_i = s_i²/Σs² are the explained-variance ratios of the column-centred n×k² kernel matrix
    (s_i² are the eigenvalues of its scatter matrix, computed in float64). A bank whose centred
    kernels are all zero (one repeated pattern) has H = 0.
    """
    rows = kernel_rows(weight)
    centred = rows - rows.mean(dim=0, keepdim=True)
    variances = torch.linalg.eigvalsh(centred.T @ centred).clamp_min(0.0)
    total = variances.sum()
    if total <= 0:
        return 0.0
    p = variances / total
    p = p[p > 0]
    return float(-(p * torch.log10(p)).sum())


def is_normalizable(weight: torch.Tensor) -> bool:
    """Whether H_T applies: the threshold is only defined for 3×3 kernels."""
    return tuple(weight.shape[2:]) == NORMALIZED_KERNEL


def filter_variance_entropy(weight: torch.Tensor) -> float:
    """Variance entropy normalised by H_T(n), n = c_out·c_in: ≥ 1 random, 0 one repeated pattern.

    Only defined for 3×3 kernels; use :func:`variance_entropy` for other sizes.
    """
    if not is_normalizable(weight):
        size = "x".join(map(str, weight.shape[2:]))
        raise ValueError(f"the randomness threshold is defined for 3x3 kernels, got {size}; use variance_entropy")
    n = weight.shape[0] * weight.shape[1]
    return variance_entropy(weight) / randomness_threshold(n)


def spatial_variance_map(weights: list[torch.Tensor]) -> torch.Tensor:
    """Per-position variance over all kernels of several layers with the same k×k size (Fig. 7b).

    Each layer's kernels are divided by the std of that layer's whole weight, then all N kernels are
    stacked to k×k×N and the (population) variance is taken over N. Returns a float64 k×k map.
    """
    if not weights:
        raise ValueError("spatial_variance_map needs at least one weight")
    kernel = tuple(weights[0].shape[2:])
    stacked = []
    for weight in weights:
        if tuple(weight.shape[2:]) != kernel:
            raise ValueError(f"all weights must share one kernel size, got {kernel} and {tuple(weight.shape[2:])}")
        w = weight.detach().to(torch.float64)
        std = w.std()
        stacked.append((w / std if std > 0 else w).reshape(-1, *kernel))
    return torch.cat(stacked).var(dim=0, correction=0)


def _mutual_coherence(rows: torch.Tensor) -> float:
    """max |cos(a_i, a_j)| over distinct non-zero rows (0 for fewer than two)."""
    norms = rows.norm(dim=1)
    unit = rows[norms > 0] / norms[norms > 0, None]
    if unit.shape[0] < 2:
        return 0.0
    gram = (unit @ unit.T).abs_()
    gram.fill_diagonal_(0.0)
    return float(gram.max())


def _gram_singular_values(gram: torch.Tensor) -> torch.Tensor:
    """Singular values (descending) of a matrix from its float64 Gram matrix: cheaper than
    an SVD of a tall bank and accurate to ~1e-8·s_max, far below the rank tolerance."""
    return torch.linalg.eigvalsh(gram).clamp_min(0.0).sqrt().flip(0)


def welch_bound(count: int, dim: int) -> float:
    """Lowest possible mutual coherence of ``count`` unit vectors in ``dim`` dimensions."""
    if count <= dim or count < 2:
        return 0.0
    return math.sqrt((count - dim) / (dim * (count - 1)))


def _spectrum_diagnostics(s: torch.Tensor, rows: int, cols: int) -> dict:
    """Rank and conditioning of a rows×cols matrix from its min(rows, cols) singular values (descending)."""
    s_max = float(s[0]) if s.numel() else 0.0
    tolerance = s_max * max(rows, cols) * torch.finfo(torch.float32).eps
    numerical_rank = int((s > tolerance).sum())
    total = s.sum()
    if total > 0:
        p = s / total
        p = p[p > 0]
        effective_rank = math.exp(float(-(p * torch.log(p)).sum()))
    else:
        effective_rank = 0.0
    s_min = float(s[-1]) if s.numel() else 0.0
    return {
        "rows": rows,
        "cols": cols,
        "singular_values": s.to(device="cpu", dtype=torch.float32),
        "effective_rank": effective_rank,
        "effective_rank_ratio": effective_rank / min(rows, cols),
        "numerical_rank": numerical_rank,
        "span_ratio": numerical_rank / cols,
        "condition_number": s_max / s_min if s_min > tolerance else math.inf,
    }


def basis_diagnostics(bank: torch.Tensor, max_rows: int = COHERENCE_MAX_ROWS) -> dict:
    """How well the spatial bank W of an LC-Block spans filter space.

    The bank (c_out·E, c_in/g, *k) is flattened to rows × cols = c_out·E × c_in·prod(k). Returns the
    singular values (float32 tensor, descending), ``effective_rank`` (Roy & Vetterli: exp of the
    entropy of s/Σs), ``effective_rank_ratio`` (over min(rows, cols)), ``numerical_rank``,
    ``span_ratio`` (numerical rank over cols: 1 means every filter of that shape is reachable),
    ``condition_number`` (s_max/s_min over min(rows, cols) values; inf if singular),
    ``coherence`` (max |cosine| between two atoms) with its ``welch_bound``. Coherence uses at most
    ``max_rows`` rows, evenly spaced and so deterministic (``coherence_rows`` says how many).

    >>> d = basis_diagnostics(torch.eye(4).reshape(4, 1, 2, 2))
    >>> d["numerical_rank"], d["condition_number"], d["coherence"]
    (4, 1.0, 0.0)
    """
    device = bank.device if bank.device.type == "cuda" else torch.device("cpu")  # float64 needs cuda/cpu
    flat = bank.detach().reshape(bank.shape[0], -1).to(device=device, dtype=torch.float64)
    rows, cols = flat.shape
    gram = flat.T @ flat if rows >= cols else flat @ flat.T
    used = min(rows, max_rows)
    picked = torch.linspace(0, rows - 1, used, device=device).round().long()
    sample = (flat if used == rows else flat[picked]).float()
    return {
        **_spectrum_diagnostics(_gram_singular_values(gram), rows, cols),
        "coherence": _mutual_coherence(sample),
        "coherence_rows": used,
        "welch_bound": welch_bound(used, cols),
    }


def gram_basis_diagnostics(gram: torch.Tensor, rows: int) -> dict:
    """:func:`basis_diagnostics` of a bank known only through its Gram matrix WᵀW (cols × cols, or
    per group (g, d, d), which is summed: the flattened bank's Gram), e.g. the preconditioned form.
    The atoms themselves are unknown, so ``coherence`` and ``welch_bound`` are None.

    >>> d = gram_basis_diagnostics(torch.eye(4), rows=4)
    >>> d["numerical_rank"], d["condition_number"], d["coherence"]
    (4, 1.0, None)
    """
    total = gram.detach().to(dtype=torch.float64, device=gram.device if gram.device.type == "cuda" else "cpu")
    if total.dim() == 3:
        total = total.sum(dim=0)
    cols = total.shape[-1]
    s = _gram_singular_values(total)[: min(rows, cols)]
    return {**_spectrum_diagnostics(s, rows, cols), "coherence": None, "coherence_rows": 0, "welch_bound": None}


__all__ = [
    "COHERENCE_MAX_ROWS",
    "basis_diagnostics",
    "filter_variance_entropy",
    "gram_basis_diagnostics",
    "is_normalizable",
    "kernel_rows",
    "randomness_threshold",
    "spatial_variance_map",
    "variance_entropy",
    "welch_bound",
]
