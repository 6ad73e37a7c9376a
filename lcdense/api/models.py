"""A finished cell's trained model, back from its run directory: :func:`cell_model` (what
``lcdense.load(run_dir).model(cell_id)`` calls) and :func:`export_cell` (``lcdense export``).

The model is rebuilt as the runner built it (the task's model from the facts kept with the
weights, converted with the cell's seeded conversion), so its frozen filters are drawn again;
its learned tensors come from the cell's weights file, whose SHA-256 must be the one in the
cell's record, and the regenerated frozen filters must have the record's digest, bit for bit.
See :mod:`lcdense.engine.trained` for the files.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..base.errors import LcdenseError
from ..base.files import write_json
from ..core.fold import fold
from ..engine.records import CellRecord
from ..engine.rundir import RunDir
from ..engine.runner import rebuild_model
from ..engine.task import get_task
from ..engine.trained import read_weights, restore

#: The format of an export's ``export.json``.
EXPORT_FORMAT = "lcdense-export/1"


def primary_weights(record: CellRecord) -> str:
    """The weights a cell's primary metric was measured on (``model``, ``best`` or ``ema``).

    Args:
        record: A finished cell's record.

    Returns:
        The name of those weights (``provenance.primary_weights``; ``model`` if not recorded).
    """
    return str((record.provenance or {}).get("primary_weights") or "model")


def cell_model(run_dir: str | os.PathLike, record: CellRecord, *, weights: str | None = None,
               device: str | torch.device = "cpu", folded: bool = False) -> nn.Module:
    """The trained model of a finished cell, its weights file and frozen filters verified.

    Args:
        run_dir: The run directory.
        record: The cell's record.
        weights: ``model`` (the final weights), ``best`` or ``ema`` where the cell keeps them;
            None: those its primary metric was measured on (:func:`primary_weights`).
        device: Where the model goes.
        folded: Fold every LC-Block into a plain conv (:func:`lcdense.fold`).

    Returns:
        The model, in eval mode, on ``device``.

    Raises:
        LcdenseError: The cell keeps no such weights (or none: trained before lcdense kept them),
            or its weights file is missing, corrupt, tampered with, or does not rebuild exactly.
    """
    model, _ = _rebuilt(run_dir, record, weights or primary_weights(record))
    if folded:
        model = fold(model, inplace=True)
    return model.to(device).eval()


def _rebuilt(run_dir: str | os.PathLike, record: CellRecord, name: str) -> tuple[nn.Module, dict[str, Any]]:
    """The cell's ``name`` weights loaded into its rebuilt model (on the CPU), and the file's metadata."""
    if not record.models:
        raise LcdenseError(f"cell {record.id} keeps no trained model (it finished before lcdense kept models); "
                           "train it again to keep one")
    if name not in record.models:
        raise LcdenseError(f"cell {record.id} keeps no '{name}' weights; it keeps: {', '.join(sorted(record.models))}")
    entry = record.models[name]
    tensors, info = read_weights(RunDir(run_dir).cell(record.id).weights_file(name), entry["sha256"])
    if info.get("cell") != record.id:
        raise LcdenseError(f"the '{name}' weights file of cell {record.id} was written for cell {info.get('cell')}")
    model = restore(rebuild_model(info), tensors, record.frozen_digest_after or entry["frozen_digest"],
                    f"cell {record.id} ({name} weights)")
    return model, info


def export_cell(run_dir: str | os.PathLike, record: CellRecord, *, weights: str | None = None,
                out: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write a finished cell's folded model as a plain checkpoint of its own library (timm,
    torchvision, smp, ultralytics: the task's :meth:`~lcdense.Task.export`), loadable without
    lcdense, with ``export.json`` saying where it came from.

    Args:
        run_dir: The run directory.
        record: The cell's record.
        weights: ``model``, ``best`` or ``ema``; None: the cell's primary weights.
        out: The folder to write (must not exist or be empty); default ``cells/<id>/export/<weights>``.

    Returns:
        What was written: a short name (the library, e.g. ``"timm"``) → the file or folder to load.

    Raises:
        LcdenseError: As :func:`cell_model`; or ``out`` exists and is not empty; or the task has no export.
    """
    name = weights or primary_weights(record)
    target = Path(out) if out is not None else RunDir(run_dir).cell(record.id).export / name
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise LcdenseError(f"{target} exists already; exports are never overwritten: delete it or choose --out")
    model, info = _rebuilt(run_dir, record, name)
    model = fold(model, inplace=True).eval()
    task = get_task(info["task"])
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    except OSError as exc:
        raise LcdenseError(f"cannot write the export to {target.parent}: {exc.strerror}; choose another --out") from None
    try:
        files = task.export(model, info["config"], info["facts"], staging)
        write_json(staging / "export.json", {
            "format": EXPORT_FORMAT, "run": str(Path(run_dir).resolve()), "cell": record.id, "task": info["task"],
            "variant": record.variant, "weights": name, "sha256": record.models[name]["sha256"],
            "files": {key: path.relative_to(staging).as_posix() for key, path in files.items()}})
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {key: target / path.relative_to(staging) for key, path in files.items()}


__all__ = ["EXPORT_FORMAT", "cell_model", "export_cell", "primary_weights"]
