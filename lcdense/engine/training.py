"""A compact supervised training loop that tasks share: optimizer, per-batch cosine schedule,
bf16 autocast on GPU, per-epoch resume points, data-wait accounting and reproducible epochs.

A task supplies ``batches(epoch)`` (an iterable of batches, ordered by :func:`epoch_generator`) and
``loss(model, batch)``; the loop does the rest.

>>> import torch
>>> from torch import nn
>>> settings = TrainSettings(epochs=2, lr=0.1, optimizer="sgd")
>>> model = nn.Linear(4, 1)
>>> opt = make_optimizer(model, settings)
>>> type(opt).__name__
'SGD'
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from ..base.errors import LcdenseError
from ..core.precondition import PreconditionedConv, check_preconditioned_optimizer
from .provenance import autocast_precision
from .task import Cell

OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
SCHEDULES: tuple[str, ...] = ("cosine", "constant")


@dataclass
class TrainSettings:
    """The ``train`` config section as the loop reads it (extra keys are the task's own)."""

    epochs: int
    lr: float
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    amp: bool = True
    sync_bn: bool = False
    grad_clip: float | None = None
    eval_every: int = 1

    @classmethod
    def from_config(cls, train: dict[str, Any]) -> TrainSettings:
        known = {f.name for f in fields(cls)}
        settings = cls(**{k: v for k, v in train.items() if k in known})
        if settings.epochs < 1:
            raise LcdenseError(f"train.epochs must be >= 1, got {settings.epochs}")
        if settings.optimizer not in OPTIMIZERS:
            raise LcdenseError(f"unknown train.optimizer '{settings.optimizer}'; use one of: {', '.join(OPTIMIZERS)}")
        if settings.schedule not in SCHEDULES:
            raise LcdenseError(f"unknown train.schedule '{settings.schedule}'; use one of: {', '.join(SCHEDULES)}")
        return settings


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over the trainable parameters only (weight decay on all of them)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                               nesterov=settings.nesterov and settings.momentum > 0,
                               weight_decay=settings.weight_decay)
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning-rate multiplier at ``step``: linear warmup, then cosine to 0 (or constant)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_seed(data_seed: int, epoch: int) -> int:
    """The seed of everything random in ``epoch`` (order, augmentation, dropout)."""
    return (data_seed * 1_000_003 + epoch) % (2**63)


def epoch_generator(data_seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for the data order and augmentation of ``epoch``."""
    return torch.Generator().manual_seed(epoch_seed(data_seed, epoch))


def preconditioned_inexact(settings: TrainSettings) -> str | None:
    """Why this loop would not train ``conversion.impl: preconditioned`` exactly, or None (plain SGD,
    no gradient clipping).

    >>> preconditioned_inexact(TrainSettings(epochs=1, lr=0.1, optimizer="adamw"))
    "train.optimizer 'adamw' (the preconditioned form is exact only under SGD)"
    """
    if settings.optimizer != "sgd":
        return f"train.optimizer '{settings.optimizer}' (the preconditioned form is exact only under SGD)"
    if settings.grad_clip:
        return f"train.grad_clip {settings.grad_clip} (clipping breaks the preconditioned form's exactness)"
    return None


def autocast(device: torch.device, amp: bool):
    """The loop's autocast: bf16 on CUDA when ``amp``, nothing on CPU (see
    :func:`lcdense.engine.provenance.autocast_precision`, which names the precision it gives)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=autocast_precision(amp, device) == "bf16")


def train_loop(
    model: nn.Module,
    *,
    batches: Callable[[int], Iterable[Any]],
    steps_per_epoch: int,
    loss: Callable[[nn.Module, Any], torch.Tensor],
    settings: TrainSettings,
    cell: Cell,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` for ``settings.epochs`` epochs; returns one metrics dict per epoch.

    Each epoch reseeds torch from (data_seed, epoch), so an epoch resumed from the cell's
    checkpoint replays exactly; the checkpoint holds model, optimizer, schedule and history.
    Preconditioned LC layers are refused unless the optimizer is SGD without gradient clipping
    (the only setting in which they are exact). The training precision and any resume (an exact
    ``fp32_state`` one, data order replayed) go to ``cell.provenance``; the checkpoint keeps them.

    Data-parallel (``cell.world`` of several ranks): ``batches`` yields this rank's shard, the
    model is wrapped in DDP (``sync_bn`` turns BatchNorm into SyncBatchNorm, CUDA only), random
    augmentation and dropout are seeded with ``data_seed + rank``, normalisation statistics are
    averaged over the ranks after every epoch, the logged loss is the mean over ranks, and only
    rank 0 writes the checkpoint.
    """
    world = cell.world
    if settings.sync_bn and world.active:
        if cell.device.type != "cuda":
            raise LcdenseError("train.sync_bn needs CUDA (torch's SyncBatchNorm); set train.sync_bn=false on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = make_optimizer(model, settings)
    check_preconditioned_optimizer(optimizer, model)
    if any(isinstance(m, PreconditionedConv) for m in model.modules()) and (why := preconditioned_inexact(settings)):
        raise LcdenseError(f"conversion.impl 'preconditioned' would not train exactly here: {why}; use impl 'auto'")
    total_steps = settings.epochs * steps_per_epoch
    warmup = int(settings.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, settings.schedule)
    )
    history: list[dict[str, float]] = []
    start = 0
    if (state := cell.load_checkpoint()) is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start = list(state["history"]), int(state["epoch"]) + 1
        cell.provenance.restore(state.get("provenance", {}))
        cell.provenance.resumed(after_epoch=start, source="fp32_state", data_order="replayed")
        cell.log(f"resumed {cell.variant} seed {cell.seed} after epoch {start}")
    if start < settings.epochs:
        cell.provenance.trained_in(autocast_precision(settings.amp, cell.device))
    net = world.data_parallel(model, cell.device)
    for epoch in range(start, settings.epochs):
        torch.manual_seed(epoch_seed(cell.data_seed + world.rank, epoch))
        model.train()
        total, count, waited = 0.0, 0, 0.0
        began = tick = time.perf_counter()
        for batch in batches(epoch):
            waited += time.perf_counter() - tick
            with autocast(cell.device, settings.amp):
                value = loss(net, batch)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            if settings.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            scheduler.step()
            total += float(value.detach())
            count += 1
            tick = time.perf_counter()
        if count == 0:
            raise LcdenseError("the training set yields no batch; lower train.batch_size or add data")
        world.average_running_stats(model)
        elapsed = time.perf_counter() - began
        record = {"epoch": epoch + 1, "train_loss": world.mean(total / count), "lr": scheduler.get_last_lr()[0],
                  "epoch_time_s": elapsed, "data_wait_share": waited / elapsed}
        if evaluate is not None and ((epoch + 1) % settings.eval_every == 0 or epoch + 1 == settings.epochs):
            record.update(evaluate(model))
        history.append(record)
        if world.is_main:
            cell.save_checkpoint({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                  "scheduler": scheduler.state_dict(), "history": history,
                                  "provenance": cell.provenance.state()})
        cell.epoch_end(record, settings.epochs)
    return history
