"""Store what the filter analysis needs from a trained model: ``filters.pt``.

For every spatial conv and LC-Block, in module order: the combined filters W' (= P·W for LC-Blocks,
the plain weight otherwise) as float32 CPU tensors and, for LC-Blocks, the basis diagnostics of the
spatial bank W computed at save time (the bank itself is E× larger than W', so it is not kept;
the preconditioned form keeps only WᵀW, which gives the spectrum but not the coherence).

>>> import tempfile, os, torch
>>> from torch import nn
>>> from lcdense import convert
>>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
>>> _ = convert(model, "lc", E=4)
>>> path = os.path.join(tempfile.mkdtemp(), "filters.pt")
>>> save_filters(model, path)
>>> [(layer["name"], layer["kind"], tuple(layer["weight"].shape)) for layer in load_filters(path)["layers"]]
[('0', 'lc', (8, 3, 3, 3)), ('2', 'lc', (8, 8, 3, 3))]
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile

import torch
from torch import nn

from ...base.errors import LcdenseError
from ...base.files import write_bytes
from ...core.blocks import LCConv
from ...core.convert import is_spatial_conv
from ...core.precondition import PreconditionedConv
from .metrics import basis_diagnostics, gram_basis_diagnostics

FORMAT = "lcdense-filters/1"


def _layer_record(name: str, module: nn.Module) -> dict:
    record: dict = {
        "name": name or "(model)",
        "type": type(module).__name__,
        "kernel": list(module.kernel_size),
        "groups": int(module.groups),
        "frozen": bool(getattr(module, "lcdense_frozen", ())),
    }
    if isinstance(module, LCConv):
        record.update(kind="lc", E=module.expansion, spatial=module.spatial)
        with torch.no_grad():
            record["weight"] = module.weight.detach().float().cpu().clone() if module.foldable else None
        record["bank"] = basis_diagnostics(module.spatial_weight)
    elif isinstance(module, PreconditionedConv):  # a frozen LC-Block that keeps only WᵀW
        record.update(kind="lc", E=module.expansion, spatial="frozen")
        record["weight"] = module.weight.detach().float().cpu().clone()
        record["bank"] = gram_basis_diagnostics(module.preconditioner, rows=module.out_channels * module.expansion)
    else:
        record.update(kind="conv", E=None, spatial=None, bank=None)
        record["weight"] = module.weight.detach().float().cpu().clone()
    return record


def filter_records(model: nn.Module) -> list[dict]:
    """One record per spatial conv / LC-Block of ``model`` in module order (see :func:`save_filters`)."""
    return [
        _layer_record(name, module)
        for name, module in model.named_modules()
        if isinstance(module, LCConv) or is_spatial_conv(module)
    ]


def save_filters(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``filters.pt`` for ``model`` atomically (loadable with ``torch.load(weights_only=True)``).

    Each layer record holds ``name``, ``type``, ``kind`` ("lc" | "conv"), ``kernel``, ``groups``,
    ``frozen``, ``E``, ``spatial``, ``weight`` (W', float32; None for an LC-Block with a mid op, which
    has no single combined filter) and ``bank`` (basis diagnostics of an LC-Block's spatial bank).
    """
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "layers": filter_records(model)}, buffer)
    write_bytes(path, buffer.getvalue())


def load_filters(path: str | os.PathLike) -> dict:
    """Read a ``filters.pt`` written by :func:`save_filters` (safe: ``weights_only=True``)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LcdenseError(f"filters file not found: {path}") from None
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        raise LcdenseError(f"cannot read filters file {path} ({type(exc).__name__}); "
                           "it is corrupt: delete it and re-run that cell") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise LcdenseError(f"{path} is not an lcdense filters file (expected format '{FORMAT}')")
    return payload


__all__ = ["FORMAT", "filter_records", "load_filters", "save_filters"]
