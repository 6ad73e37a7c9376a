"""The one figure style of every report (the summary's figures and the filter analysis'):
one palette keyed by variant family, one variant order, one way to save a figure.

A variant's family is its kind (``learnable``, ``frozen``, ``lc-learnable``, ``lc-frozen``: the
variant kinds of the conversion modes, :func:`lcdense.core.convert.variant_kinds`, whose order
gives the families' colours and reading order), so ``lc-frozen@8`` has the same colour in every figure; variants of one family (several E, several
sweep points) are told apart by :func:`line_style`.

>>> family("lc-frozen@8"), color("lc-frozen@8") == color("lc-frozen")
('lc-frozen', True)
>>> sorted(["lc-frozen@8", "learnable", "lc-learnable@2", "frozen", "lc-frozen@2"], key=variant_order)
['learnable', 'frozen', 'lc-learnable@2', 'lc-frozen@2', 'lc-frozen@8']
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..base.files import write_bytes
from ..core.convert import variant_kinds

#: The families' colours, in the order of the variant kinds (matplotlib's tab10 less GAP and OTHER).
COLORS: tuple[str, ...] = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
OTHER = "#7f7f7f"   # a family of no registered conversion mode (e.g. records of an uninstalled plug-in)
GAP = "#9467bd"     # gap curves
DPI = 110
LINE_STYLES: tuple[str, ...] = ("-", "--", "-.", ":")
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P")


def family(variant: str) -> str:
    """The family of a variant name or label: ``lc-frozen@8 [width=32]`` → ``lc-frozen``."""
    return variant.split(" [")[0].split("@")[0]


def palette() -> dict[str, str]:
    """Family → its colour, for every variant kind.

    Returns:
        e.g. ``{"learnable": "#1f77b4", ..., "lc-frozen": "#d62728"}``.
    """
    return {kind: COLORS[i % len(COLORS)] for i, kind in enumerate(variant_kinds())}


def color(variant: str) -> str:
    """The colour of a variant (or family) in every figure."""
    return palette().get(family(variant), OTHER)


def line_style(index: int) -> dict[str, str]:
    """Line style and marker of the ``index``-th variant of one family in a figure."""
    return {"linestyle": LINE_STYLES[index % len(LINE_STYLES)], "marker": MARKERS[index % len(MARKERS)]}


def variant_order(variant: str) -> tuple[int, int, int, str]:
    """The reading order of variants: learnable, frozen, then the LC variants by E (lc-learnable
    before lc-frozen at each E); other families last."""
    name = variant.split(" [")[0]
    kind, _, e_text = name.partition("@")
    families = list(variant_kinds())
    rank = families.index(kind) if kind in families else len(families)
    return (0 if not e_text else 1, int(e_text) if e_text.isdigit() else 0, rank, variant)


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot, no global state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically; returns ``path``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, buffer.getvalue())
    return path


__all__ = ["COLORS", "color", "family", "line_style", "new_figure", "palette", "save_figure", "variant_order"]
