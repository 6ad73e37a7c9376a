"""A finished cell's trained model, back from its run directory: :func:`cell_model` (what
``lcdense.load(run_dir).model(cell_id)`` calls).

The model is rebuilt as the runner built it (the task's model from the facts kept with the
weights, converted with the cell's seeded conversion), so its frozen filters are drawn again;
its learned tensors come from the cell's weights file, whose SHA-256 must be the one in the
cell's record, and the regenerated frozen filters must have the record's digest, bit for bit.
See :mod:`lcdense.engine.trained` for the files.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..base.errors import LcdenseError
from ..core.fold import fold
from ..engine.records import CellRecord
from ..engine.rundir import RunDir
from ..engine.runner import rebuild_model
from ..engine.trained import read_weights, restore


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
    name = weights or primary_weights(record)
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
    if folded:
        model = fold(model, inplace=True)
    return model.to(device).eval()


__all__ = ["cell_model", "primary_weights"]
