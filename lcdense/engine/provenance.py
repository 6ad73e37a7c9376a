"""What a cell actually did beyond its config: the precision it trained and evaluated in, whether
and how it resumed, which weights its primary metric comes from, and the frozen digests of every
copy of the weights it evaluated.

Tasks and the shared training loop fill a cell's :class:`Provenance` in (``cell.provenance``);
the runner writes it to ``cell.json`` as ``provenance`` and fails the cell if any evaluated copy's
frozen digest differs from the trained model's.

Resume sources: ``fp32_state`` (lcdense's own fp32 checkpoint of the model, optimizer, schedule
and, for detection, the EMA: the state is restored bit for bit) and ``ultralytics_fp16_ema``
(ultralytics' ``last.pt``: the weights continue from the fp16-rounded EMA, so the resume is
approximate). ``data_order`` says whether the resumed epochs see the data an uninterrupted run
would (``replayed``) or the framework restarted its data order (``restarted``).

>>> p = Provenance()
>>> p.trained_in("fp32")
>>> p.resumed(after_epoch=3, source="ultralytics_fp16_ema", data_order="restarted")
>>> p.to_dict(init="orthogonal")["resume"]["exact"]
False
>>> autocast_precision(True, torch.device("cpu"))
'fp32'
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..base.errors import LcdenseError

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: resume source → whether it restores the training state exactly
RESUME_SOURCES: dict[str, bool] = {"fp32_state": True, "ultralytics_fp16_ema": False}


AMP_SETTINGS: tuple[Any, ...] = (True, False, "bf16", "fp16")
"""What ``train.amp`` takes: true (bf16), false (fp32), ``bf16``, or ``fp16`` (autocast with a gradient
scaler, as the AMP of 2021–22 timm, i.e. of the paper's ImageNet runs)."""


def autocast_precision(amp: bool | str, device: torch.device) -> str:
    """The precision the shared training loop runs in: on CUDA, bf16 autocast when ``amp`` is true
    or ``"bf16"``, fp16 autocast (with a gradient scaler) when it is ``"fp16"``; else fp32 (on CPU
    ``amp`` does nothing).

    Args:
        amp: ``train.amp``, one of :data:`AMP_SETTINGS`.
        device: The device the model runs on.

    Returns:
        ``"bf16"``, ``"fp16"`` or ``"fp32"``.

    >>> autocast_precision("fp16", torch.device("cuda")), autocast_precision(True, torch.device("cuda"))
    ('fp16', 'bf16')
    """
    if amp not in AMP_SETTINGS:
        raise LcdenseError(f"train.amp must be one of true, false, bf16, fp16; got {amp!r}")
    if not amp or device.type != "cuda":
        return "fp32"
    return "fp16" if amp == "fp16" else "bf16"


@dataclass
class Provenance:
    """A cell's provenance, filled in while it trains and evaluates.

    Attributes:
        train_precisions: The precisions (of :data:`PRECISIONS`) training ran in, in order.
        eval_precision: The precision the final evaluation ran in, or None if not noted.
        resumes: One entry per resume: ``after_epoch``, ``source``, ``exact``, ``data_order``.
        primary_weights: Which weights the primary metric comes from (``"model"``, or e.g. ``"ema"``).
        frozen_digests: Frozen digests of evaluated copies other than the trained model.
        weight_decay: What the optimizer decays (:meth:`note_weight_decay`), or None if not noted.
    """

    #: precisions used for training, in order (several only if a resume changed it)
    train_precisions: list[str] = field(default_factory=list)
    eval_precision: str | None = None
    resumes: list[dict[str, Any]] = field(default_factory=list)
    primary_weights: str = "model"
    #: frozen digests of evaluated copies other than the trained model, e.g. {"ema": ...}
    frozen_digests: dict[str, str] = field(default_factory=dict)
    weight_decay: dict[str, Any] | None = None

    def note_weight_decay(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
        """Note what ``optimizer`` decays: its rates, and the trainable parameters of ``model`` it
        decays and does not, norms and biases (parameters of one dimension) counted apart.

        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        >>> p = Provenance()
        >>> p.note_weight_decay(torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-4), net)
        >>> p.weight_decay["norms_and_biases"], p.weight_decay["decayed"]
        ('decayed', {'tensors': 4, 'params': 120})

        Args:
            optimizer: The optimizer that trains ``model``.
            model: The model (its frozen filters are buffers, outside any optimizer).
        """
        rate = {id(p): float(g.get("weight_decay", 0.0)) for g in optimizer.param_groups for p in g["params"]}
        trainable = [p for p in model.parameters() if p.requires_grad]
        decayed = [p for p in trainable if rate.get(id(p), 0.0) > 0]
        kept = [p for p in trainable if rate.get(id(p), 0.0) == 0]
        small = [rate.get(id(p), 0.0) > 0 for p in trainable if p.ndim <= 1]
        self.weight_decay = {
            "rates": sorted({r for r in rate.values() if r > 0}),
            "decayed": {"tensors": len(decayed), "params": sum(p.numel() for p in decayed)},
            "not_decayed": {"tensors": len(kept), "params": sum(p.numel() for p in kept)},
            "norms_and_biases": "decayed" if small and all(small) else "partly decayed" if any(small) else "not decayed",
        }

    def trained_in(self, precision: str) -> None:
        """Note the precision of (this part of) training."""
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision '{precision}'; use one of {PRECISIONS}")
        if precision not in self.train_precisions:
            self.train_precisions.append(precision)

    def resumed(self, *, after_epoch: int, source: str, data_order: str) -> None:
        """Note a resume after ``after_epoch`` finished epochs, from ``source`` (see RESUME_SOURCES)."""
        self.resumes.append({"after_epoch": int(after_epoch), "source": source, "exact": RESUME_SOURCES[source],
                             "data_order": data_order})

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps so that a later resume still knows the earlier ones."""
        return {"train_precisions": list(self.train_precisions), "resumes": [dict(r) for r in self.resumes],
                "weight_decay": self.weight_decay}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back :meth:`state` from a checkpoint (before noting this resume)."""
        self.train_precisions = list(state.get("train_precisions", []))
        self.resumes = [dict(r) for r in state.get("resumes", [])]
        self.weight_decay = state.get("weight_decay") or self.weight_decay

    def to_dict(self, init: str) -> dict[str, Any]:
        """The record's ``provenance`` section (``init``: the cell's spatial init)."""
        return {
            "precision": {"train": "+".join(self.train_precisions) or None, "eval": self.eval_precision},
            "init": init,
            "resume": {"resumed": bool(self.resumes),
                       "exact": all(r["exact"] for r in self.resumes) if self.resumes else None,
                       "resumes": [dict(r) for r in self.resumes]},
            "primary_weights": self.primary_weights,
            "frozen_digests": dict(self.frozen_digests),
            "weight_decay": self.weight_decay,
        }


__all__ = ["PRECISIONS", "RESUME_SOURCES", "Provenance", "autocast_precision"]
