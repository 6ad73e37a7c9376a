"""The one figure style of every report (the summary's figures and the filter analysis'):
one palette keyed by variant family, one variant order, one way to save a figure.

A variant's family is its kind (``learnable``, ``frozen``, ``lc-learnable``, ``lc-frozen``), so
``lc-frozen@8`` has the same colour in every figure; variants of one family (several E, several
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

FAMILIES: tuple[str, ...] = ("learnable", "frozen", "lc-learnable", "lc-frozen")
PALETTE: dict[str, str] = {"learnable": "#1f77b4", "frozen": "#ff7f0e", "lc-learnable": "#2ca02c",
                           "lc-frozen": "#d62728"}
OTHER = "#7f7f7f"   # a family lcdense does not know (a third-party variant)
GAP = "#9467bd"     # gap curves
DPI = 110
LINE_STYLES: tuple[str, ...] = ("-", "--", "-.", ":")
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P")


def family(variant: str) -> str:
    """The family of a variant name or label: ``lc-frozen@8 [width=32]`` → ``lc-frozen``."""
    return variant.split(" [")[0].split("@")[0]


def color(variant: str) -> str:
    """The colour of a variant (or family) in every figure."""
    return PALETTE.get(family(variant), OTHER)


def line_style(index: int) -> dict[str, str]:
    """Line style and marker of the ``index``-th variant of one family in a figure."""
    return {"linestyle": LINE_STYLES[index % len(LINE_STYLES)], "marker": MARKERS[index % len(MARKERS)]}


def variant_order(variant: str) -> tuple[int, int, int, str]:
    """The reading order of variants: learnable, frozen, then the LC variants by E (lc-learnable
    before lc-frozen at each E); other families last."""
    name = variant.split(" [")[0]
    kind, _, e_text = name.partition("@")
    rank = FAMILIES.index(kind) if kind in FAMILIES else len(FAMILIES)
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


__all__ = ["FAMILIES", "PALETTE", "color", "family", "line_style", "new_figure", "save_figure", "variant_order"]
