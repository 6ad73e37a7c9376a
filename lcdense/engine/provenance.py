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

The fp32 math mode (``train.tf32``): with this torch, cuDNN convolutions on CUDA run in TF32
unless told otherwise, so a cell that claims fp32 may not have run it. The runner sets the mode
explicitly for every cell (:func:`set_fp32_math`) before training, keeps it through evaluation
and FGSM, and records what was in force (``precision.fp32_math``: ``ieee`` or ``tf32``); with
``tf32`` the record names the fp32 parts ``tf32``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..base.errors import LcdenseError

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: the fp32 math modes: true IEEE fp32, or TF32 tensor cores for fp32 matmuls and convolutions (CUDA)
FP32_MATH: tuple[str, ...] = ("ieee", "tf32")
#: resume source → whether it restores the training state exactly
RESUME_SOURCES: dict[str, bool] = {"fp32_state": True, "ultralytics_fp16_ema": False}


AMP_SETTINGS: tuple[Any, ...] = (True, False, "bf16", "fp16")
"""What ``train.amp`` takes: true (bf16, or fp16 on a GPU without bf16), false (fp32), ``bf16``, or
``fp16`` (autocast with a gradient scaler, as the AMP of 2021–22 timm, i.e. of the paper's ImageNet runs)."""


def autocast_precision(amp: bool | str, device: torch.device, bf16: bool | None = None) -> str:
    """The precision the shared training loop runs in: on CUDA, fp16 autocast (with a gradient
    scaler) when ``amp`` is ``"fp16"``, bf16 autocast when it is ``"bf16"``, and when it is true bf16
    on a GPU that computes in bf16 (compute capability 8 or later), fp16 on an older one; else fp32
    (on CPU ``amp`` does nothing).

    Args:
        amp: ``train.amp``, one of :data:`AMP_SETTINGS`.
        device: The device the model runs on.
        bf16: Whether the GPU computes in bf16; None: ask torch about ``device`` (a plan made on a
            machine without CUDA assumes a bf16 GPU).

    Returns:
        ``"bf16"``, ``"fp16"`` or ``"fp32"``.

    >>> autocast_precision("fp16", torch.device("cuda")), autocast_precision(True, torch.device("cuda"), bf16=True)
    ('fp16', 'bf16')
    >>> autocast_precision(True, torch.device("cuda"), bf16=False)
    'fp16'
    """
    if amp not in AMP_SETTINGS:
        raise LcdenseError(f"train.amp must be one of true, false, bf16, fp16; got {amp!r}")
    if not amp or device.type != "cuda":
        return "fp32"
    if amp in ("fp16", "bf16"):
        return amp
    if bf16 is None:
        bf16 = not torch.cuda.is_available() or bf16_capable(torch.cuda.get_device_capability(device))
    return "bf16" if bf16 else "fp16"


def bf16_capable(capability: tuple[int, int]) -> bool:
    """Whether a CUDA GPU of compute ``capability`` computes in bf16 natively (Ampere, 8.0, and later).

    Args:
        capability: ``torch.cuda.get_device_capability()``, e.g. (7, 0) for a V100.

    Returns:
        True from (8, 0) on.

    >>> bf16_capable((7, 0)), bf16_capable((9, 0))
    (False, True)
    """
    return tuple(capability) >= (8, 0)


def set_fp32_math(device: torch.device, tf32: bool) -> str:
    """Set the fp32 math mode of this process explicitly (torch's ``fp32_precision`` API, which
    replaces the deprecated ``allow_tf32`` flags): fp32 matmuls (cuBLAS) and cuDNN convolutions and
    RNNs in TF32 when ``tf32``, else in IEEE fp32 (torch's own default leaves cuDNN convolutions on
    TF32).

    Args:
        device: The device the cell runs on.
        tf32: Allow TF32 (``train.tf32``).

    Returns:
        What fp32 work on ``device`` now runs as (:func:`fp32_math`).

    >>> set_fp32_math(torch.device("cpu"), False)
    'ieee'
    >>> torch.backends.cudnn.conv.fp32_precision
    'ieee'
    """
    value = "tf32" if tf32 else "ieee"
    torch.backends.cuda.matmul.fp32_precision = value
    torch.backends.cudnn.conv.fp32_precision = value
    torch.backends.cudnn.rnn.fp32_precision = value
    return fp32_math(device)


def fp32_math(device: torch.device) -> str:
    """What fp32 matmuls and convolutions on ``device`` run as, read back from torch: ``tf32`` on a
    CUDA GPU with TF32 units (compute capability 8 or later) where either is allowed, else ``ieee``.

    Args:
        device: The device the cell runs on.

    Returns:
        One of :data:`FP32_MATH`.
    """
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8:
        return "ieee"
    allowed = {torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision}
    return "tf32" if "tf32" in allowed else "ieee"


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
        fp32_math: The fp32 math mode training and evaluation ran in (:data:`FP32_MATH`), or None
            if not noted; several joined by ``+`` if it changed (e.g. across a resume).
        epoch_eval_precision: The precision of the per-epoch evaluations during training where it
            differs from ``eval_precision`` (e.g. ultralytics validates in fp16 autocast while it
            trains in mixed precision), else None.
    """

    #: precisions used for training, in order (several only if a resume changed it)
    train_precisions: list[str] = field(default_factory=list)
    eval_precision: str | None = None
    resumes: list[dict[str, Any]] = field(default_factory=list)
    primary_weights: str = "model"
    #: frozen digests of evaluated copies other than the trained model, e.g. {"ema": ...}
    frozen_digests: dict[str, str] = field(default_factory=dict)
    weight_decay: dict[str, Any] | None = None
    fp32_math: str | None = None
    epoch_eval_precision: str | None = None

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
    def ran_in(self, mode: str) -> None:
        """Note the fp32 math mode (of :data:`FP32_MATH`) in force for (this part of) the cell."""
        if mode not in FP32_MATH:
            raise ValueError(f"unknown fp32 math mode '{mode}'; use one of {FP32_MATH}")
        modes = self.fp32_math.split("+") if self.fp32_math else []
        if mode not in modes:
            self.fp32_math = "+".join([*modes, mode])

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
                "weight_decay": self.weight_decay,
                "fp32_math": self.fp32_math, "epoch_eval_precision": self.epoch_eval_precision}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back :meth:`state` from a checkpoint (before noting this resume)."""
        self.train_precisions = list(state.get("train_precisions", []))
        self.resumes = [dict(r) for r in state.get("resumes", [])]
        self.weight_decay = state.get("weight_decay") or self.weight_decay
        if state.get("fp32_math"):
            for mode in state["fp32_math"].split("+"):
                self.ran_in(mode)
        self.epoch_eval_precision = state.get("epoch_eval_precision", self.epoch_eval_precision)

    def to_dict(self, init: str) -> dict[str, Any]:
        """The record's ``provenance`` section (``init``: the cell's spatial init)."""
        tf32 = self.fp32_math == "tf32"  # the fp32 parts ran on TF32 units: say so

        def named(precision: str | None) -> str | None:
            return "tf32" if tf32 and precision == "fp32" else precision

        return {
            "precision": {"train": "+".join(named(p) for p in self.train_precisions) or None,
                          "eval": named(self.eval_precision), "fp32_math": self.fp32_math,
                          "epoch_eval": named(self.epoch_eval_precision)},
            "init": init,
            "resume": {"resumed": bool(self.resumes),
                       "exact": all(r["exact"] for r in self.resumes) if self.resumes else None,
                       "resumes": [dict(r) for r in self.resumes]},
            "primary_weights": self.primary_weights,
            "frozen_digests": dict(self.frozen_digests),
            "weight_decay": self.weight_decay,
        }


__all__ = ["PRECISIONS", "FP32_MATH", "RESUME_SOURCES", "Provenance", "autocast_precision", "bf16_capable", "set_fp32_math", "fp32_math"]
