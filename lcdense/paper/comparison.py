"""Measured vs published: the paper column of a paper run's report.

A measured mean is **within the published spread** when it lies in the published mean ± one
published standard deviation: ``|measured mean − published mean| ≤ published std``. Where the
paper gives no std, there is no spread to lie in; a smoke run is never compared.

>>> agreement(92.10, 92.34, 0.24, scale="full")
'yes'
>>> agreement(91.90, 92.34, 0.24, scale="full")
'no'
>>> agreement(91.90, 91.60, None, scale="full")
'n/a: no published spread'
>>> agreement(92.34, 92.34, 0.24, scale="smoke")
'smoke: not comparable'
"""
from __future__ import annotations

from typing import Any

from ..engine.records import SummaryRecord
from ..engine.variants import sweep_point
from .registry import Experiment

WITHIN = "|measured mean − published mean| ≤ published std (the measured mean lies in the published mean ± 1 std)"
SMOKE = "smoke: not comparable"


def agreement(measured: float | None, mean: float, std: float | None, *, scale: str) -> str:
    """``yes``/``no`` (see :data:`WITHIN`), or why the question does not apply."""
    if scale != "full":
        return SMOKE
    if measured is None:
        return "not measured"
    if std is None:
        return "n/a: no published spread"
    return "yes" if abs(measured - mean) <= std + 1e-9 else "no"  # 1e-9: the published values are rounded decimals


def compare(summary: SummaryRecord, experiment: Experiment, scale: str, overrides: list[str]) -> dict[str, Any]:
    """The paper block of ``summary``: one row per published number, next to what the run measured."""
    rows = []
    for published in experiment.published:
        for value in published.values:
            variant = summary.groups.get(sweep_point(value.axes), {}).get("variants", {}).get(value.variant)
            stats = variant["metrics"].get(published.metric) if variant else None
            measured = None if stats is None else {"mean": stats["mean"] * experiment.factor,
                                                   "std": stats["std"] * experiment.factor, "n": stats["n"]}
            rows.append({
                "variant": value.variant, "group": sweep_point(value.axes), "metric": published.metric,
                "source": published.source, "published_mean": value.mean, "published_std": value.std,
                "measured": measured,
                "difference": None if measured is None else measured["mean"] - value.mean,
                "within_published_spread": agreement(measured and measured["mean"], value.mean, value.std,
                                                     scale=scale),
            })
    if experiment.published:
        note = None
    elif experiment.source.startswith("Figure"):
        note = f"the paper shows {experiment.source} as a figure only: no published numbers to compare"
    else:
        note = f"the paper published no numbers for {experiment.source}: these are the first"
    return {"experiment": experiment.name, "source": experiment.source, "scale": scale, "unit": experiment.unit,
            "recipe": experiment.recipe, "overrides": list(overrides), "definition": WITHIN, "rows": rows,
            "note": note}
