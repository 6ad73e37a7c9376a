"""The trained models a cell keeps: its learned tensors in safetensors, the frozen ones regenerated.

A cell's weights (``model``: the final ones; ``best``, ``ema`` where its task selects or averages
them) are each one ``<name>.safetensors`` file in the cell's folder. It holds only what was
learned: every tensor of the model's ``state_dict`` except its frozen ones
(:func:`lcdense.frozen_tensors`), which are a function of (seed, layer name, shape, init) and are
drawn again when the model is rebuilt, then checked bit for bit against the digest of the cell's
record. An lc-frozen model's file is therefore about the size of its trainable parameters,
whatever E is. The file's metadata (``lcdense``, JSON) says how to rebuild the model: the format
version, task, cell, variant, seed, the cell's config and the model facts of its data
(:meth:`lcdense.Task.model_facts`), and the frozen digest it was saved with.

The cell's record lists each file with its SHA-256 (``models`` in ``cell.json``): a file that
was changed after the run, or is truncated or not a model file at all, is refused with one line.

>>> import tempfile, pathlib
>>> from torch import nn
>>> from lcdense import convert
>>> model = convert(nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)), "frozen").model
>>> sorted(learned_state(model))  # the frozen conv weight is not among them
['1.bias', '1.num_batches_tracked', '1.running_mean', '1.running_var', '1.weight']
>>> path = pathlib.Path(tempfile.mkdtemp()) / "model.safetensors"
>>> save_weights(path, model, {"task": "demo"})
>>> entry = describe(path)
>>> sorted(entry), entry["frozen_digest"] == frozen_digest(model)
(['bytes', 'file', 'frozen_digest', 'sha256'], True)
>>> tensors, info = read_weights(path, entry["sha256"])
>>> info["format"], info["task"], len(tensors)
('lcdense-model/1', 'demo', 5)
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..base.errors import LcdenseError
from ..base.files import write_bytes
from ..core.digest import frozen_digest, frozen_tensors

MODEL_FORMAT = "lcdense-model/1"
#: The metadata key of the rebuild information in a weights file.
METADATA_KEY = "lcdense"


class ModelFileError(LcdenseError):
    """A weights file that is missing, corrupt, tampered with, or not an lcdense model file."""


def learned_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of ``model``'s ``state_dict`` but its frozen ones, on the CPU.

    Args:
        model: A (converted) model.

    Returns:
        State-dict name → a CPU copy of the tensor, frozen tensors left out.
    """
    frozen = set(frozen_tensors(model))
    return {name: tensor.detach().to("cpu", copy=True).contiguous()
            for name, tensor in model.state_dict().items() if name not in frozen}


def save_weights(path: str | Path, model: nn.Module, info: dict[str, Any]) -> None:
    """Atomically write ``model``'s learned tensors to ``path`` (safetensors) with ``info``.

    Args:
        path: The weights file (``<name>.safetensors``).
        model: The trained model.
        info: What rebuilds the model (task, cell, variant, seed, config, facts); the format
            version, the frozen digest and the frozen tensors' names are added.
    """
    from safetensors.torch import save

    meta = {"format": MODEL_FORMAT, **info, "frozen_digest": frozen_digest(model),
            "frozen": sorted(frozen_tensors(model))}
    write_bytes(path, save(learned_state(model), metadata={METADATA_KEY: json.dumps(meta, default=str)}))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _metadata(data: bytes, path: Path) -> dict[str, Any]:
    """The lcdense metadata of the safetensors bytes ``data`` (its header: 8-byte length, then JSON)."""
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + length])
        info = json.loads(header["__metadata__"][METADATA_KEY])
    except (struct.error, ValueError, KeyError, TypeError):
        raise ModelFileError(f"{path} is not an lcdense weights file (no lcdense metadata in a safetensors "
                             "header); it is corrupt or was replaced") from None
    if not isinstance(info, dict) or info.get("format") != MODEL_FORMAT:
        found = info.get("format") if isinstance(info, dict) else None
        raise ModelFileError(f"{path} is format {found}; this lcdense reads {MODEL_FORMAT} (upgrade lcdense to read it)")
    return info


def describe(path: str | Path) -> dict[str, Any]:
    """The record's entry for a weights file: its name, SHA-256, size and frozen digest (and
    ``epoch`` where the file says which epoch it is).

    Args:
        path: A weights file written by :func:`save_weights`.

    Returns:
        ``{"file", "sha256", "bytes", "frozen_digest"}`` (and ``"epoch"``).
    """
    path = Path(path)
    data = path.read_bytes()
    info = _metadata(data, path)
    entry = {"file": path.name, "sha256": _sha256(data), "bytes": len(data), "frozen_digest": info["frozen_digest"]}
    if "epoch" in info:
        entry["epoch"] = info["epoch"]
    return entry


def read_weights(path: str | Path, sha256: str | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The learned tensors and the rebuild information of a weights file, its SHA-256 checked first.

    Args:
        path: A weights file.
        sha256: The digest the cell's record holds for it (None: not checked).

    Returns:
        (state-dict name → tensor, the file's lcdense metadata).

    Raises:
        ModelFileError: The file is missing, its digest is not the record's, or it cannot be read.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"cannot read the weights file {path} ({exc.strerror or type(exc).__name__})") from None
    if sha256 is not None and _sha256(data) != sha256:
        raise ModelFileError(f"{path} does not match the digest in its cell record (sha256 {_sha256(data)[:12]}, "
                             f"recorded {sha256[:12]}): the file was changed after the run; refusing to load it")
    info = _metadata(data, path)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path} is corrupt ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return tensors, info


def restore(model: nn.Module, tensors: dict[str, torch.Tensor], expected_digest: str, what: str) -> nn.Module:
    """Load the learned ``tensors`` into the rebuilt ``model`` and prove its regenerated frozen
    tensors equal the trained ones (``expected_digest``, the record's).

    Args:
        model: The model rebuilt and converted as the cell built it (frozen tensors regenerated).
        tensors: The learned tensors of the weights file.
        expected_digest: The frozen digest the cell's record holds.
        what: How the error names the model (e.g. ``"cell lc-frozen@8__seed0"``).

    Returns:
        ``model``, with the learned tensors loaded.

    Raises:
        ModelFileError: The tensors do not fit the model, or the regenerated frozen tensors differ.
    """
    frozen = set(frozen_tensors(model))
    expected = set(model.state_dict()) - frozen
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        names = ", ".join((missing or unexpected)[:3])
        raise ModelFileError(f"{what}: the weights file does not fit the rebuilt model ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected tensors, e.g. {names}); it belongs to another model")
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:
        raise ModelFileError(f"{what}: the weights file does not fit the rebuilt model "
                             f"({str(exc).splitlines()[-1].strip()})") from None
    found = frozen_digest(model)
    if found != expected_digest:
        raise ModelFileError(f"{what}: the regenerated frozen filters differ from the trained ones (digest "
                             f"{found[:12]}, recorded {expected_digest[:12]}); this lcdense or torch draws them "
                             "differently, so the model cannot be rebuilt exactly")
    return model


__all__ = ["METADATA_KEY", "MODEL_FORMAT", "ModelFileError", "describe", "learned_state", "read_weights", "restore",
           "save_weights"]
