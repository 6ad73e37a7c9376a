"""The filter metrics of one finished cell (:class:`CellAnalysis`), computed from its record and its
saved ``filters.pt``: per layer, the variance entropy, the normalised FVE and the bank diagnostics.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...engine.records import CellRecord
from ...engine.variants import sweep_point
from .metrics import (
    is_normalizable,
    randomness_threshold,
    spatial_variance_map,
    variance_entropy,
)

BANK_KEYS = ("effective_rank", "effective_rank_ratio", "numerical_rank", "span_ratio", "condition_number",
             "coherence", "welch_bound", "coherence_rows", "rows", "cols")


@dataclass
class CellAnalysis:
    """The filter metrics of one finished cell (one variant, one seed)."""

    variant: str
    seed: int
    E: int | None
    mode: str | None
    spatial: str | None
    kind: str
    axes: dict
    metrics: dict
    layers: list[dict]
    spatial_variance: dict[int, torch.Tensor] = field(default_factory=dict)
    first_layer_weight: torch.Tensor | None = None
    spectra: list[torch.Tensor | None] = field(default_factory=list)

    @property
    def point(self) -> str:
        """The sweep point other than E and seed, e.g. ``width=32`` ('' for a plain run)."""
        return sweep_point(self.axes)

    @property
    def label(self) -> str:
        """The variant at its sweep point: a row of the table."""
        return f"{self.variant} [{self.point}]" if self.point else self.variant

    @property
    def family(self) -> str:
        """The line a sweep over E draws: the variant's kind at its sweep point."""
        return f"{self.kind} [{self.point}]" if self.point else self.kind


def layer_metrics(index: int, record: dict) -> dict:
    """The numbers of one stored layer record: entropy, normalised FVE (3×3 only), bank diagnostics."""
    weight = record["weight"]
    row = {"layer_index": index, "layer": record["name"], "type": record["type"], "layer_kind": record["kind"],
           "kernel": "x".join(map(str, record["kernel"])), "n_kernels": None, "entropy": None, "fve": None,
           "normalized": False}
    if weight is not None:
        n = weight.shape[0] * weight.shape[1]
        row.update(n_kernels=n, entropy=variance_entropy(weight), normalized=is_normalizable(weight))
        if row["normalized"]:
            row["fve"] = row["entropy"] / randomness_threshold(n)
    bank = record.get("bank") or {}
    row.update({f"bank_{key}": bank.get(key) for key in BANK_KEYS})
    return row


def analyze_cell(cell: CellRecord, payload: dict) -> CellAnalysis:
    """Metrics of one cell from its record and its loaded ``filters.pt``."""
    records = payload["layers"]
    analysis = CellAnalysis(
        variant=cell.variant, seed=int(cell.seed), E=cell.E, mode=cell.mode, spatial=cell.spatial, kind=cell.kind,
        axes=dict(cell.axes), metrics=dict(cell.metrics),
        layers=[layer_metrics(i, r) for i, r in enumerate(records)],
        spectra=[(r.get("bank") or {}).get("singular_values") for r in records],
    )
    by_kernel: dict[int, list[torch.Tensor]] = {}
    for record in records:
        weight = record["weight"]
        if weight is not None and weight.dim() == 4 and weight.shape[2] == weight.shape[3] >= 2:
            by_kernel.setdefault(int(weight.shape[2]), []).append(weight)
    analysis.spatial_variance = {k: spatial_variance_map(ws) for k, ws in sorted(by_kernel.items())}
    analysis.first_layer_weight = next((r["weight"] for r in records if r["weight"] is not None), None)
    return analysis
