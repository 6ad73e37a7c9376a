"""Dice and IoU over a validation set, the standard way (smp.metrics confusion counts).

- ``dice`` / ``iou``: micro-averaged over the whole validation set, i.e. true/false
  positives and false negatives of every pixel of every image are summed first:
  Dice = 2TP / (2TP + FP + FN), IoU = TP / (TP + FP + FN). Empty-mask images add no TP or
  FN, so they count only through their false-positive pixels. If the whole set has neither a
  mask pixel nor a predicted one, both scores are 1.
- ``patient_dice`` (brain MRI): the same Dice per patient volume (all its slices summed),
  then the mean over patients. A patient with an empty mask volume scores 1 if nothing is
  predicted anywhere in the volume and 0 otherwise (smp's ``zero_division=1``).

>>> import torch
>>> counts = ConfusionCounts()
>>> counts.add(torch.tensor([[[[3.0, -1.0], [2.0, -4.0]]]]), torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]]), ["p1"])
>>> scores = counts.scores()
>>> round(scores["dice"], 4), round(scores["iou"], 4)
(0.5, 0.3333)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import segmentation_models_pytorch as smp
import torch


@dataclass
class ConfusionCounts:
    """Running pixel counts (TP, FP, FN, TN) per image, with each image's group (patient)."""

    stats: list[torch.Tensor] = field(default_factory=list)  # (N, 4) per added batch
    groups: list[str] = field(default_factory=list)

    def add(self, logits: torch.Tensor, target: torch.Tensor, groups: Sequence[str], threshold: float = 0.0) -> None:
        """Count a batch: ``logits`` and 0/1 ``target`` of shape (N, 1, H, W); logit > ``threshold`` is foreground."""
        tp, fp, fn, tn = smp.metrics.get_stats((logits.float() > threshold).long(), target.long(), mode="binary")
        self.stats.append(torch.cat([tp, fp, fn, tn], dim=1).cpu())
        self.groups.extend(groups)

    def scores(self, *, per_group: bool = False) -> dict[str, float]:
        """``dice`` and ``iou`` (micro over all images); ``patient_dice`` too if ``per_group``."""
        stats = torch.cat(self.stats)
        tp, fp, fn, tn = (stats[:, i:i + 1] for i in range(4))
        if int(tp.sum() + fp.sum() + fn.sum()) == 0:
            out = {"dice": 1.0, "iou": 1.0}
        else:
            out = {"dice": float(smp.metrics.f1_score(tp, fp, fn, tn, reduction="micro")),
                   "iou": float(smp.metrics.iou_score(tp, fp, fn, tn, reduction="micro"))}
        if per_group:
            _, volume = self._volumes()
            vtp, vfp, vfn, vtn = (volume[:, i:i + 1] for i in range(4))
            out["patient_dice"] = float(smp.metrics.f1_score(vtp, vfp, vfn, vtn, reduction="micro-imagewise",
                                                             zero_division=1.0))
        return out

    def per_group(self) -> dict[str, dict[str, float]]:
        """Group (car, patient) → ``dice`` and ``iou`` of all its images' pixels summed (a group
        with neither a mask nor a predicted pixel scores 1, as smp's ``zero_division=1``).

        >>> counts = ConfusionCounts()
        >>> counts.add(torch.tensor([[[[3.0, -1.0]]], [[[-1.0, -1.0]]]]), torch.tensor([[[[1.0, 1.0]]], [[[0.0, 0.0]]]]), ["a", "b"])
        >>> {g: round(v["dice"], 4) for g, v in counts.per_group().items()}
        {'a': 0.6667, 'b': 1.0}
        """
        names, volume = self._volumes()
        counts = [volume[:, i:i + 1] for i in range(4)]
        dice = smp.metrics.f1_score(*counts, reduction="none", zero_division=1.0)[:, 0].tolist()
        iou = smp.metrics.iou_score(*counts, reduction="none", zero_division=1.0)[:, 0].tolist()
        return {name: {"dice": d, "iou": i} for name, d, i in zip(names, dice, iou)}

    def _volumes(self) -> tuple[list[str], torch.Tensor]:
        """The groups, sorted, and their summed pixel counts (groups, 4)."""
        stats = torch.cat(self.stats)
        names = sorted(set(self.groups))
        position = {name: i for i, name in enumerate(names)}
        index = torch.tensor([position[g] for g in self.groups])
        return names, torch.zeros(len(names), 4, dtype=stats.dtype).index_add_(0, index, stats)
