"""The statistics of a comparison with the paper: Welch intervals, Welch–Satterthwaite degrees of
freedom and the two one-sided tests (TOST) of equivalence.

A published number is a mean ± std over ``n`` runs, and so is a measured one; both are uncertain.
The difference of the means has the standard error ``sqrt(s1²/n1 + s2²/n2)`` and, following
Welch–Satterthwaite, ``(Σ vᵢ)² / Σ (vᵢ² / dfᵢ)`` degrees of freedom, where ``vᵢ`` are the squared
standard errors and ``dfᵢ = nᵢ − 1``. The same formula combines the standard error of a measured
paired gap (``df = n − 1``) with that of a published gap.

>>> d = welch(92.50, 0.20, 4, 92.34, 0.24, 4)
>>> round(d["difference"], 2), round(d["se"], 4), round(d["df"], 2)
(0.16, 0.1562, 5.81)
>>> [round(x, 3) for x in d["ci95"]]
[-0.225, 0.545]
>>> consistent(d)
True
>>> tost(d, delta=0.5)["equivalent"], tost(d, delta=0.3)["equivalent"]
(True, False)
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

LEVEL = 0.95  # the two-sided level of every interval
ALPHA = 0.05  # each one-sided test of TOST (its interval is the 1 − 2α = 90% one)


def _t():
    from scipy import stats

    return stats.t


def satterthwaite(variances: Sequence[float], dfs: Sequence[float]) -> float:
    """Welch–Satterthwaite degrees of freedom of a sum of independent squared standard errors.

    Args:
        variances: The squared standard errors ``vᵢ``.
        dfs: Their degrees of freedom ``dfᵢ``.

    Returns:
        ``(Σ vᵢ)² / Σ (vᵢ² / dfᵢ)``; infinite when every ``vᵢ`` is 0.

    >>> satterthwaite([0.01, 0.01], [3, 3])
    6.0
    """
    total = sum(variances)
    denominator = sum(v * v / df for v, df in zip(variances, dfs) if v > 0)
    return math.inf if denominator == 0 else total * total / denominator


def interval(difference: float, se: float, df: float, level: float = LEVEL) -> list[float]:
    """The two-sided Student-t interval ``difference ± t(level, df) · se``.

    Args:
        difference: The estimate.
        se: Its standard error.
        df: Its degrees of freedom.
        level: The coverage (0.95: a 95% interval).

    Returns:
        ``[low, high]``.
    """
    half = float(_t().ppf(0.5 + level / 2, df)) * se if se > 0 else 0.0
    return [difference - half, difference + half]


def combine(difference: float, parts: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """A difference of independent estimates with standard errors and degrees of freedom ``parts``.

    Args:
        difference: The difference of the estimates.
        parts: ``(se, df)`` of each estimate.

    Returns:
        ``difference``, ``se``, ``df`` (Welch–Satterthwaite) and ``ci95``.
    """
    variances = [se * se for se, _ in parts]
    se = math.sqrt(sum(variances))
    df = satterthwaite(variances, [df for _, df in parts])
    return {"difference": difference, "se": se, "df": df, "ci95": interval(difference, se, df)}


def welch(mean1: float, std1: float, n1: int, mean2: float, std2: float, n2: int) -> dict[str, Any]:
    """Welch's comparison of two means given as mean, sample std and count (each ``n`` ≥ 2).

    Args:
        mean1: The first mean (measured).
        std1: Its sample standard deviation.
        n1: Its number of runs.
        mean2: The second mean (published).
        std2: Its sample standard deviation.
        n2: Its number of runs.

    Returns:
        ``difference`` (mean1 − mean2), ``se``, ``df`` and ``ci95``, as :func:`combine`.
    """
    if n1 < 2 or n2 < 2:
        raise ValueError("Welch's interval needs at least 2 runs on each side")
    return combine(mean1 - mean2, [(std1 / math.sqrt(n1), n1 - 1), (std2 / math.sqrt(n2), n2 - 1)])


def consistent(comparison: dict[str, Any]) -> bool:
    """Whether the 95% interval of a difference contains 0.

    Args:
        comparison: A result of :func:`welch` or :func:`combine`.

    Returns:
        True when ``ci95[0] ≤ 0 ≤ ci95[1]``.
    """
    low, high = comparison["ci95"]
    return low <= 0.0 <= high


def tost(comparison: dict[str, Any], delta: float, alpha: float = ALPHA) -> dict[str, Any]:
    """The two one-sided tests of ``|true difference| < delta`` for a difference with ``se``, ``df``.

    Equivalence is shown when both one-sided nulls (difference ≤ −δ, difference ≥ +δ) are rejected
    at ``alpha``, i.e. when the ``1 − 2·alpha`` interval lies inside (−δ, δ).

    Args:
        comparison: A result of :func:`welch` or :func:`combine`.
        delta: The equivalence margin δ (> 0), in the unit of the difference, declared beforehand.
        alpha: The level of each one-sided test.

    Returns:
        ``delta``, ``p`` (the larger one-sided p-value), ``ci90`` and ``equivalent``.
    """
    if not delta > 0:
        raise ValueError(f"the equivalence margin must be > 0, got {delta}")
    t, d, se, df = _t(), comparison["difference"], comparison["se"], comparison["df"]
    if se == 0:
        p = 0.0 if abs(d) < delta else 1.0
    else:
        p = max(float(t.sf((d + delta) / se, df)), float(t.cdf((d - delta) / se, df)))
    return {"delta": delta, "p": p, "ci90": interval(d, se, df, 1 - 2 * alpha), "equivalent": p < alpha}


__all__ = ["ALPHA", "LEVEL", "combine", "consistent", "interval", "satterthwaite", "tost", "welch"]
