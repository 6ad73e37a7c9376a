"""Classification scores shared by both training recipes: top-1/top-5/loss sums over batches
(summable across data-parallel ranks) and the ℓ∞ FGSM attack in [0, 1] pixel space.

>>> logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
>>> sums = batch_sums(logits, torch.tensor([0, 1]))
>>> metrics_from_sums(sums)["top1"]
0.5
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: What :func:`batch_sums` counts, in order.
SUMS = ("count", "correct1", "correct5", "loss")


def batch_sums(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Count, top-1 hits, top-5 hits and summed cross-entropy of one batch (float64, on CPU)."""
    logits = logits.float()
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return torch.tensor([len(y), int((top[:, 0] == y).sum()), int((top == y[:, None]).any(dim=1).sum()),
                         float(F.cross_entropy(logits, y, reduction="sum"))], dtype=torch.float64)


def class_hits(logits: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """Per class: validation images (row 0) and top-1 hits (row 1) of one batch (float64, on CPU).

    >>> class_hits(torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0]]), torch.tensor([0, 0, 1]), 2).tolist()
    [[2.0, 1.0], [1.0, 0.0]]
    """
    y = y.cpu()
    hit = (logits.argmax(1).cpu() == y).double()
    return torch.stack([torch.bincount(y, minlength=classes).double(), torch.bincount(y, hit, minlength=classes)])


def per_class_top1(hits: torch.Tensor, names: list[str]) -> dict[str, dict[str, float]]:
    """Class name → ``top1`` and ``images`` from summed :func:`class_hits` (classes without a
    validation image are left out).

    >>> per_class_top1(torch.tensor([[2.0, 0.0], [1.0, 0.0]]), ["cat", "dog"])
    {'cat': {'top1': 0.5, 'images': 2}}
    """
    count, correct = hits.tolist()
    return {name: {"top1": c / n, "images": int(n)} for name, n, c in zip(names, count, correct) if n}


def metrics_from_sums(sums: torch.Tensor, classes: int | None = None) -> dict[str, float]:
    """``top1``, ``val_loss`` and, with at least 5 classes, ``top5`` from summed :func:`batch_sums`."""
    count, correct1, correct5, loss = sums.tolist()
    metrics = {"top1": correct1 / count, "val_loss": loss / count}
    if classes is None or classes >= 5:
        metrics["top5"] = correct5 / count
    return metrics


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One ℓ∞ FGSM step of size ``eps`` in [0, 1] pixel space (model in eval mode)."""
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x).float(), y)
    (grad,) = torch.autograd.grad(loss, x)
    return (x + eps * grad.sign()).clamp_(0, 1).detach()
