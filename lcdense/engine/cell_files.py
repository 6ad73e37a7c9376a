"""Per-cell files beside ``cell.json``, written by the :class:`CellFiles` callback (atomically):

- ``history.csv``: one row per epoch (``epoch`` first, then every key of the cell's history in the
  order it first appears, blank where an epoch lacks it), like ultralytics' ``results.csv`` and
  timm's ``summary.csv``; rewritten after every epoch, so it can be watched while the cell trains;
- ``per_<unit>.csv`` for every per-unit result a task reports in ``extra_metrics`` as
  ``per_<unit>: {name: {metric: value}}`` (``per_class`` for detection and classification,
  ``per_car`` / ``per_patient`` for segmentation): one row per class, car or patient.

>>> history_csv([{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.25, "top1": 0.75}])
'epoch,train_loss,top1\\n1,0.5,\\n2,0.25,0.75\\n'
>>> per_unit_csv("class", {"cat": {"top1": 0.5, "count": 4}})
'class,top1,count\\ncat,0.5,4\\n'
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..base.files import write_text
from .events import Callback, CellEnd, CellStart, EpochEnd, RunStart
from .rundir import CellDir, RunDir


def _csv(header: list[str], rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def history_csv(history: list[dict[str, Any]]) -> str:
    """The CSV text of a cell's per-epoch history (scalar values only)."""
    header = ["epoch"]
    for row in history:
        header += [k for k, v in row.items() if k not in header and isinstance(v, (int, float, str))]
    return _csv(header, [{**row, "epoch": int(row["epoch"])} for row in history])


def per_unit_csv(unit: str, results: dict[str, dict[str, Any]]) -> str:
    """The CSV text of per-class (per-car, per-patient) results: one row per ``unit``."""
    header = [unit]
    for values in results.values():
        header += [k for k in values if k not in header]
    return _csv(header, [{unit: name, **values} for name, values in results.items()])


def per_unit_results(extra_metrics: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """The ``per_<unit>`` entries of a record's ``extra_metrics``, by unit (``class``, ``car``...)."""
    return {key.removeprefix("per_"): value for key, value in extra_metrics.items()
            if key.startswith("per_") and isinstance(value, dict) and value
            and all(isinstance(v, dict) for v in value.values())}


def _read_history(path: Path) -> list[dict[str, Any]]:
    """The rows of an earlier ``history.csv`` (a resumed cell keeps its first epochs), numbers parsed."""
    if not path.is_file():
        return []
    rows = []
    for row in csv.DictReader(path.open()):
        rows.append({k: float(v) if k != "epoch" else int(v) for k, v in row.items() if v not in ("", None)})
    return rows


class CellFiles(Callback):
    """Writes ``history.csv`` after every epoch and at the cell's end, and the per-unit CSVs."""

    def __init__(self) -> None:
        self.run: RunDir | None = None
        self.history: dict[str, dict[int, dict[str, Any]]] = {}

    def on_run_start(self, event: RunStart) -> None:
        self.run = RunDir(event.run_dir)

    def on_cell_start(self, event: CellStart) -> None:
        self.run = RunDir(event.run_dir)  # a cluster job runs cells only: no run start
        if not event.skipped:
            earlier = _read_history(self.run.cell(event.cell.id).history_csv)
            self.history[event.cell.id] = {int(row["epoch"]): row for row in earlier}

    def on_epoch_end(self, event: EpochEnd) -> None:
        if self.run is None:
            return
        rows = self.history.setdefault(event.cell_id, {})
        rows[event.epoch] = event.metrics
        cell_dir = self.run.cell(event.cell_id)
        cell_dir.path.mkdir(parents=True, exist_ok=True)
        write_text(cell_dir.history_csv, history_csv([rows[e] for e in sorted(rows) if e <= event.epoch]))

    def on_cell_end(self, event: CellEnd) -> None:
        record = event.record
        self.history.pop(record.id, None)
        cell_dir = CellDir(event.cell_dir)
        write_text(cell_dir.history_csv, history_csv(record.history))
        for unit, results in per_unit_results(record.extra_metrics).items():
            write_text(cell_dir.per_unit_csv(unit), per_unit_csv(unit, results))


__all__ = ["CellFiles", "history_csv", "per_unit_csv", "per_unit_results"]
