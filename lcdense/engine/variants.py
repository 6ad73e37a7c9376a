"""Variants and cells: what a run trains.

A variant is one of ``learnable`` (the unchanged baseline), ``frozen`` (spatial convs frozen
random), ``lc-learnable@E`` and ``lc-frozen@E``: a variant kind of a conversion mode
(:func:`lcdense.core.convert.variant_kinds`), with an expansion E if the mode builds LC-Blocks. A cell is a variant at one seed and one point of
a sweep grid.

>>> [v.name for v in parse_variants(["learnable", "lc-frozen"], [8, 32])]
['learnable', 'lc-frozen@8', 'lc-frozen@32']
>>> CellSpec(Variant.parse("lc-frozen@8"), seed=1, axes={"width": 32}).id
'lc-frozen@8__width=32__seed1'
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..base.errors import LcdenseError, unknown_name
from ..core.convert import MODES, ConversionMode, variant_kinds


@dataclass(frozen=True)
class Variant:
    """A conversion of the task's model: mode, spatial bank and expansion."""

    kind: str
    E: int | None = None

    @property
    def name(self) -> str:
        return f"{self.kind}@{self.E}" if self.E is not None else self.kind

    @property
    def mode(self) -> str:
        """The conversion mode (``lc`` for ``lc-frozen``)."""
        return variant_kinds()[self.kind][0]

    @property
    def spatial(self) -> str | None:
        """The spatial bank of an LC variant (``frozen`` for ``lc-frozen``), else None."""
        return variant_kinds()[self.kind][1]

    @property
    def spec(self) -> ConversionMode:
        """The conversion mode's entry in :data:`lcdense.core.convert.MODES`."""
        return MODES.get(self.mode)

    @classmethod
    def parse(cls, text: str, default_E: int | None = None) -> Variant:
        """``lc-frozen@8`` → Variant("lc-frozen", 8); ``lc-frozen`` takes ``default_E``."""
        kind, _, e_text = text.strip().partition("@")
        kinds = variant_kinds()
        if kind not in kinds:
            raise unknown_name("variant", kind, kinds)
        if not MODES.get(kinds[kind][0]).blocks:
            if e_text:
                raise LcdenseError(f"variant '{kind}' takes no expansion (got '{text}')")
            return cls(kind)
        E = _positive(e_text, f"the expansion in variant '{text}'") if e_text else default_E
        if E is None:
            raise LcdenseError(f"variant '{kind}' needs an expansion: write {kind}@E or pass --E")
        return cls(kind, E)


def _positive(text: Any, what: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise LcdenseError(f"{what} must be a positive integer, got '{text}'") from None
    if value < 1 or str(text).strip() not in (str(value), f"+{value}"):
        raise LcdenseError(f"{what} must be a positive integer, got '{text}'")
    return value


def parse_expansions(values: Any) -> list[int]:
    """E as an int, a list, or a comma-separated string → list of positive ints."""
    items = values.split(",") if isinstance(values, str) else values if isinstance(values, list) else [values]
    out = [_positive(v, "E") for v in items if str(v).strip()]
    if not out:
        raise LcdenseError("E must list at least one positive integer")
    return out


def parse_seeds(values: Any) -> list[int]:
    """Seeds as a list, a comma-separated string, or a count ``N`` (→ 0..N-1)."""
    if isinstance(values, int) and not isinstance(values, bool):
        return list(range(_positive(values, "the number of seeds")))
    items = values.split(",") if isinstance(values, str) else values
    try:
        seeds = [int(v) for v in items if str(v).strip()]
    except (TypeError, ValueError):
        raise LcdenseError(f"seeds must be integers, a comma-separated list or a count, got '{values}'") from None
    if isinstance(values, str) and len(seeds) == 1 and "," not in values:
        return list(range(_positive(seeds[0], "the number of seeds")))
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise LcdenseError(f"seeds must be distinct non-negative integers, got '{values}'")
    return seeds


def parse_variants(names: list[str] | str, expansions: list[int]) -> list[Variant]:
    """Variant names (``lc-frozen`` expands over every E) in a stable order, without repeats."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    kinds = variant_kinds()
    out: list[Variant] = []
    for name in names:
        bare = "@" not in name and name.strip() in kinds and MODES.get(kinds[name.strip()][0]).blocks
        for E in expansions if bare else [None]:
            variant = Variant.parse(name, E)
            if variant not in out:
                out.append(variant)
    if not out:
        raise LcdenseError("no variants selected")
    return out


@dataclass(frozen=True)
class CellSpec:
    """One cell: a variant at one seed and one point of the sweep's other axes."""

    variant: Variant
    seed: int
    axes: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        parts = [self.variant.name, *(f"{k}={v}" for k, v in self.axes.items()), f"seed{self.seed}"]
        return "__".join(parts)

    def __hash__(self) -> int:
        return hash(self.id)


def sweep_point(axes: dict[str, Any]) -> str:
    """The sweep point of a cell other than E, e.g. 'width=32' ('' for a plain run).

    >>> sweep_point({"width": 32, "init": "orthogonal"}), sweep_point({})
    ('init=orthogonal,width=32', '')
    """
    return ",".join(f"{k}={v}" for k, v in sorted(axes.items()))
