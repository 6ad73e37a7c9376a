"""Analyse the filters of a run: variance entropy, spatial variance, filter grids, LC bank diagnostics.

``lcdense analyze RUN_DIR`` writes ``analysis.json``, ``analysis.csv``, ``analysis.md`` and PNG
figures under ``RUN_DIR/figures/`` from every finished cell's ``filters.pt``; the runner saves those
with :func:`save_filters` after each cell and calls :func:`analyze_run` at the end of the run.

>>> import torch
>>> filter_variance_entropy(torch.randn(64, 16, 3, 3, generator=torch.Generator().manual_seed(0))) > 0.99
True
"""
from .cell_analysis import CellAnalysis, analyze_cell
from .filters import filter_records, load_filters, save_filters
from .metrics import (
    basis_diagnostics,
    filter_variance_entropy,
    gram_basis_diagnostics,
    randomness_threshold,
    spatial_variance_map,
    variance_entropy,
    welch_bound,
)
from .report import FilterAnalysis, SaveFilters, analyze_run

__all__ = [
    "CellAnalysis",
    "FilterAnalysis",
    "SaveFilters",
    "analyze_cell",
    "analyze_run",
    "basis_diagnostics",
    "filter_records",
    "filter_variance_entropy",
    "gram_basis_diagnostics",
    "load_filters",
    "randomness_threshold",
    "save_filters",
    "spatial_variance_map",
    "variance_entropy",
    "welch_bound",
]
