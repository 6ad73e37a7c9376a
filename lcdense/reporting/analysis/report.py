"""Analyse a finished run: read every cell's ``filters.pt``, write ``analysis.json``/``.csv``/``.md``
and the figures, and return the "## Filter analysis" section for ``summary.md``.

>>> print(analyze_run("runs/classification/demo"))          # doctest: +SKIP
## Filter analysis
...
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from pathlib import Path

import torch

from ...base.errors import LcdenseError
from ...base.files import write_text
from ...engine.events import Callback, CellEnd, RunEnd
from ...engine.records import CellRecord, read_cell, read_summary
from ...engine.rundir import CellDir, PathLike, RunDir
from ..style import variant_order
from ..summary import paired_gap
from . import figures
from .cell_analysis import BANK_KEYS, CellAnalysis, analyze_cell
from .filters import load_filters, save_filters
from .metrics import COHERENCE_MAX_ROWS

FORMAT = "lcdense-analysis/1"
CSV_COLUMNS = ("variant", "axes", "kind", "E", "mode", "spatial", "seed", "layer_index", "layer", "type", "layer_kind",
               "kernel", "n_kernels", "entropy", "fve", "normalized", *(f"bank_{k}" for k in BANK_KEYS))
BASELINE = "learnable"


def load_cells(run_dir: PathLike, notes: list[str], records: list[CellRecord]) -> list[CellAnalysis]:
    """Analyse every finished cell under ``run_dir/cells`` that has a ``filters.pt`` (their
    records are appended to ``records``, what was skipped and why to ``notes``)."""
    run = RunDir(run_dir)
    if not run.cells.is_dir():
        raise LcdenseError(f"{run_dir} has no cells/ directory; pass the directory of an lcdense run "
                           "(runs/<task>/<name>)")
    cells = []
    for cell_dir in run.cell_dirs():
        if not cell_dir.cell_json.is_file():
            notes.append(f"{cell_dir.name}: no cell.json, skipped")
            continue
        cell = read_cell(cell_dir)
        if cell is None:
            raise LcdenseError(f"cannot read cell file {cell_dir.cell_json}; fix or delete the file")
        if not cell.done:
            notes.append(f"{cell_dir.name}: status '{cell.status}', skipped")
        elif not cell_dir.filters_pt.is_file():
            notes.append(f"{cell_dir.name}: no filters.pt, skipped")
        else:
            cells.append(analyze_cell(cell, load_filters(cell_dir.filters_pt)))
            records.append(cell)
    if not cells:
        raise LcdenseError(f"no finished cell with a filters.pt under {run.cells}; run or resume the run first")
    return cells


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else None


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _end_layer(cell: CellAnalysis, last: bool) -> dict | None:
    measured = [layer for layer in cell.layers if layer["entropy"] is not None]
    return (measured[-1] if last else measured[0]) if measured else None


def group_cells(cells: list[CellAnalysis]) -> dict[str, list[CellAnalysis]]:
    """Cells by label (variant at its sweep point) in the one variant order of every report
    (:func:`lcdense.reporting.style.variant_order`) within each sweep point; the cells of a label by seed."""
    keyed = {c.label: (c.point, variant_order(c.variant)) for c in cells}
    return {label: sorted((c for c in cells if c.label == label), key=lambda c: c.seed)
            for label in sorted(keyed, key=keyed.get)}


def summarize_variant(cells: list[CellAnalysis], primary: str | None) -> dict:
    """Seed means of the per-cell numbers of one variant (at one sweep point) and of its primary metric."""
    head = cells[0]
    out: dict = {"variant": head.variant, "axes": head.axes, "kind": head.kind, "family": head.family,
                 "E": head.E, "mode": head.mode, "spatial": head.spatial, "seeds": [c.seed for c in cells]}
    out["metric_mean"], out["metric_std"] = _mean_std([c.metrics.get(primary) for c in cells])
    for end in ("first", "last"):
        layers = [_end_layer(c, end == "last") for c in cells]
        normalized = all(layer is not None and layer["normalized"] for layer in layers)
        key = "fve" if normalized else "entropy"
        out[f"{end}_layer"] = layers[0]["layer"] if layers[0] else None
        out[f"{end}_normalized"] = normalized
        out[f"{end}_mean"], out[f"{end}_std"] = _mean_std([layer[key] if layer else None for layer in layers])
    lc_layers = [layer for c in cells for layer in c.layers if layer["bank_rows"] is not None]
    out["lc_layers"] = len(lc_layers) // len(cells)
    for key in ("effective_rank_ratio", "span_ratio", "coherence", "welch_bound"):
        out[f"bank_{key}"] = _mean_std([layer[f"bank_{key}"] for layer in lc_layers])[0]
    out["bank_condition_number_median"] = _median([layer["bank_condition_number"] for layer in lc_layers])
    maps = {k for c in cells for k in c.spatial_variance}
    out["spatial_variance"] = {
        str(k): torch.stack([c.spatial_variance[k] for c in cells if k in c.spatial_variance]).mean(0).tolist()
        for k in sorted(maps)
    }
    return out


def _finite(value):
    """JSON-safe copy: tensors to lists, inf/nan to None."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _finite(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _csv_text(cells: list[CellAnalysis]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for cell in cells:
        for layer in cell.layers:
            row = {"variant": cell.variant, "axes": cell.point, "kind": cell.kind, "E": cell.E, "mode": cell.mode,
                   "spatial": cell.spatial, "seed": cell.seed, **layer}
            writer.writerow({k: "" if v is None else v for k, v in _finite(row).items()})
    return buffer.getvalue()


def _fmt(value: float | None, std: float | None = None, digits: int = 3) -> str:
    if value is None:
        return "–"
    text = f"{value:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if std is not None else text


def markdown_section(variants: dict[str, dict], primary: str | None, run_figures: list[str],
                     variant_figures: dict[str, dict], notes: list[str]) -> str:
    """The "## Filter analysis" section: the numbers next to the accuracy gap, then the figures."""
    with_metric = primary is not None
    lines = [
        "## Filter analysis", "",
        ("Filter variance entropy (FVE, Gavrikov & Keuper 2022) of the combined filters W' = P·W "
        "(plain weights outside LC-Blocks), normalised by the randomness threshold H_T(n): "
        "≥ 1 reads as random, 0 as one pattern repeated in every kernel. Values marked *H* are "
        "un-normalised entropies (the threshold is defined for 3×3 kernels only). Bank columns describe "
        "the spatial bank W of the LC-Blocks (mean over LC layers; span = numerical rank / (c_in·k²), "
        "eff. rank = effective rank / min(c_out·E, c_in·k²))."), "",
        ("| variant | seeds | " + (f"{primary} (mean ± std) | Δ mean vs {BASELINE} | " if with_metric else "")
         + "FVE first layer | FVE last layer | bank eff. rank | bank span | bank cond. (median) | "
         "bank coherence (Welch bound) |"),
        "|---" * (10 if with_metric else 8) + "|",
    ]
    for name, v in variants.items():
        ends = [_fmt(v[f"{e}_mean"], v[f"{e}_std"]) + ("" if v[f"{e}_normalized"] else " *H*")
                for e in ("first", "last")]
        gap = v["gap_vs_learnable"]
        lc = v["lc_layers"] > 0
        lines.append(" | ".join([
            f"| {name}", str(len(v["seeds"])),
            *([_fmt(v["metric_mean"], v["metric_std"], 4), "–" if gap is None else f"{gap:+.4f}"] if with_metric else []),
            *ends,
            _fmt(v["bank_effective_rank_ratio"]) if lc else "–",
            _fmt(v["bank_span_ratio"], digits=2) if lc else "–",
            _fmt(v["bank_condition_number_median"], digits=1) if lc else "–",
            f"{_fmt(v['bank_coherence'])} ({_fmt(v['bank_welch_bound'])})" if lc and v["bank_coherence"] is not None
            else "–",
        ]) + " |")
    lines.append("")
    lines += [f"- {note}" for note in notes]
    if notes:
        lines.append("")
    for path in run_figures:
        lines += [f"![{Path(path).stem.replace('_', ' ')}]({path})", ""]
    if any(variant_figures.values()):
        lines += ["| variant | spatial variance of combined filters (Fig. 7b) | first-layer combined filters (A.5) |",
                  "|---|---|---|"]
        for name, drawn in variant_figures.items():
            heatmap = f"![spatial variance {name}]({drawn['spatial_variance']})" if "spatial_variance" in drawn else "–"
            grids = " ".join(f"![filters {Path(p).stem}]({p})" for p in drawn.get("filters", [])) or "–"
            lines.append(f"| {name} | {heatmap} | {grids} |")
        lines.append("")
    return "\n".join(lines)


def _primary_metric(run_dir: PathLike, records: list[CellRecord]) -> str | None:
    named = {r.primary_metric for r in records} - {None}
    if len(named) == 1:
        return named.pop()
    summary = read_summary(run_dir)
    return summary.primary_metric if summary else None


def _gaps_vs_baseline(variants: dict[str, dict], cells: dict[str, list[CellAnalysis]], primary: str | None) -> None:
    """Each variant's gap in the primary metric to the baseline at its sweep point, paired by seed
    (:func:`lcdense.reporting.summary.paired_gap`, as in the summary); None without a common seed."""
    for label, v in variants.items():
        base = next((b for b, bv in variants.items() if bv["kind"] == BASELINE and bv["axes"] == v["axes"]), None)
        own = {c.seed: c.metrics[primary] for c in cells[label] if primary in c.metrics}
        other = {c.seed: c.metrics[primary] for c in cells[base] if primary in c.metrics} if base else {}
        gap = paired_gap(own, other) if primary else None
        v["gap_vs_learnable"] = gap["mean"] if gap else None


def analyze_run(run_dir: str | os.PathLike) -> str:
    """Analyse the filters of every finished cell of ``run_dir``; returns the "## Filter analysis"
    section for summary.md (figures linked relative to ``run_dir``).

    Writes ``analysis.json`` (per variant and per cell), ``analysis.csv`` (one row per cell and
    layer), ``analysis.md`` (the section) and PNG figures under ``figures/``, all atomically; the
    primary metric comes from the cells' ``cell.json`` (or ``summary.json``).
    """
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise LcdenseError(f"run directory {run} does not exist; pass the directory of an lcdense run "
                           "(runs/<task>/<name>)")
    notes: list[str] = []
    records: list[CellRecord] = []
    cells = load_cells(run, notes, records)
    primary = _primary_metric(run, records)
    grouped = group_cells(cells)
    variants = {label: summarize_variant(group, primary) for label, group in grouped.items()}
    _gaps_vs_baseline(variants, grouped, primary)
    all_layers = [layer for c in cells for layer in c.layers]
    if any(layer["bank_coherence_rows"] and layer["bank_rows"] > layer["bank_coherence_rows"] for layer in all_layers):
        notes.append(f"bank coherence of banks with more than {COHERENCE_MAX_ROWS} filters uses "
                     f"{COHERENCE_MAX_ROWS} evenly spaced filters (a lower bound on the full bank's)")
    if any(layer["bank_rows"] is not None and layer["bank_coherence"] is None for layer in all_layers):
        notes.append("preconditioned LC layers keep only WᵀW: their bank coherence is not available")
    if any(layer["entropy"] is not None and not layer["normalized"] for layer in all_layers):
        notes.append("layers with kernels other than 3×3 report the un-normalised entropy H (analysis.csv: "
                     "normalized = False)")
    run.figures.mkdir(exist_ok=True)
    drawn, per_variant = figures.draw_all(grouped, variants, run)
    run_figures = [run.relative(p) for p in drawn]
    variant_figures = {
        name: {"filters": [run.relative(p) for p in drawn["filters"]],
               **({"spatial_variance": run.relative(drawn["spatial_variance"])}
                  if "spatial_variance" in drawn else {})}
        for name, drawn in per_variant.items()
    }
    ordered = [c for group in grouped.values() for c in group]
    result = _finite({
        "format": FORMAT, "primary_metric": primary, "baseline": BASELINE, "variants": variants,
        "cells": [{"variant": c.variant, "axes": c.axes, "seed": c.seed, "E": c.E, "mode": c.mode,
                   "spatial": c.spatial, "metrics": c.metrics, "layers": c.layers,
                   "spatial_variance": {str(k): m.tolist() for k, m in c.spatial_variance.items()}}
                  for c in ordered],
        "figures": run_figures, "variant_figures": variant_figures, "notes": notes,
    })
    write_text(run.analysis_json, json.dumps(result, indent=1) + "\n")
    write_text(run.analysis_csv, _csv_text(ordered))
    section = markdown_section(variants, primary, run_figures, variant_figures, notes)
    write_text(run.analysis_md, section + "\n")
    return section


class SaveFilters(Callback):
    """Saves what the filter analysis needs (``filters.pt``) at the end of every cell."""

    def on_cell_end(self, event: CellEnd) -> None:
        save_filters(event.model, CellDir(event.cell_dir).filters_pt)


class FilterAnalysis(Callback):
    """The filter analysis of the finished run at run end; its section goes into ``summary.md``."""

    def on_run_end(self, event: RunEnd) -> None:
        event.sections.append(analyze_run(event.run_dir))


__all__ = [
    "FORMAT",
    "FilterAnalysis",
    "SaveFilters",
    "analyze_run",
    "group_cells",
    "load_cells",
    "markdown_section",
    "summarize_variant",
]
