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
