"""A compact supervised training loop that tasks share: optimizer, per-batch cosine schedule,
bf16 autocast on GPU (fp16 with a gradient scaler when asked, or on GPUs without bf16), no host synchronisation per step, per-epoch resume points, data-wait accounting and reproducible epochs.

A task supplies ``batches(epoch)`` (an iterable of batches, ordered by :func:`epoch_generator`) and
``loss(model, batch)``; the loop does the rest: resume, sync-BN, the per-epoch record, the
checkpoint and :meth:`Cell.epoch_end <lcdense.Cell.epoch_end>`. A task with a training stack of
its own (timm's optimizer, schedule and EMA) hands it in as a :class:`Recipe`.

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
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from ..base.errors import LcdenseError
from ..core.precondition import PreconditionedConv, check_preconditioned_optimizer
from .distributed import convert_sync_batchnorm
from .provenance import autocast_precision
from .task import Cell

OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
SCHEDULES: tuple[str, ...] = ("cosine", "constant")


@dataclass
class TrainSettings:
    """The ``train`` config section as the loop reads it (extra keys are the task's own).

    Attributes:
        epochs: Epochs to train (at least 1).
        lr: The peak learning rate.
        optimizer: ``"sgd"`` or ``"adamw"``.
        momentum: SGD's momentum.
        nesterov: Nesterov momentum for SGD (when ``momentum`` > 0).
        weight_decay: The weight decay rate.
        wd_norm_bias: Whether ``weight_decay`` applies to norm parameters and biases too. True (the
            default, the paper's recipes): every trainable parameter is decayed; False: only
            parameters of two or more dimensions (conv and linear weights, LC-Block banks and
            combinations), as ultralytics and timm do — norm scales and shifts and biases are not.
        schedule: ``"cosine"`` (to 0, per update) or ``"constant"``, after the warmup.
        warmup_epochs: Epochs of linear warmup (may be fractional).
        amp: Mixed precision on CUDA: true (bf16 autocast; fp16 with a gradient scaler on a GPU
            without bf16), ``"bf16"``, ``"fp16"`` (fp16 autocast with a gradient scaler), false
            (fp32); see :func:`lcdense.autocast_precision`.
        sync_bn: Under data parallel, turn BatchNorm into SyncBatchNorm (CUDA only).
        grad_clip: The gradient-norm clip, or None for no clipping.
        eval_every: Evaluate every this many epochs (and after the last).
    """

    epochs: int
    lr: float
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    wd_norm_bias: bool = True
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    amp: bool | str = True
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
        autocast_precision(settings.amp, torch.device("cpu"))  # an unknown train.amp is one line
        return settings


def decay_groups(model: nn.Module, weight_decay: float, norm_bias: bool = True) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: the trainable parameters with their weight decay.

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    >>> [(len(g["params"]), g["weight_decay"]) for g in decay_groups(net, 0.05, norm_bias=False)]
    [(1, 0.05), (3, 0.0)]

    Args:
        model: The model; its parameters without ``requires_grad`` (none, in lcdense: frozen
            filters are buffers) are left out.
        weight_decay: The rate.
        norm_bias: True: one group, every parameter decayed; False: parameters of one dimension
            (norm scales and shifts, biases) in a second group without decay.

    Returns:
        One group, or two (decayed, not decayed), in parameter order.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over the trainable parameters only, with weight decay on all of them
    or, with ``settings.wd_norm_bias`` False, not on norms and biases (:func:`decay_groups`)."""
    groups = decay_groups(model, settings.weight_decay, settings.wd_norm_bias)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum,
                               nesterov=settings.nesterov and settings.momentum > 0)
    return torch.optim.AdamW(groups, lr=settings.lr)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning-rate multiplier at ``step``: linear warmup, then cosine to 0 (or constant)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_seed(data_seed: int, epoch: int) -> int:
    """The seed of everything random in ``epoch`` (order, augmentation, dropout).

    Args:
        data_seed: The cell's data seed.
        epoch: The epoch, counted from 0.

    Returns:
        A seed in [0, 2**63), the same for the same arguments.
    """
    return (data_seed * 1_000_003 + epoch) % (2**63)


def epoch_generator(data_seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for the data order and augmentation of ``epoch``.

    Args:
        data_seed: The cell's data seed.
        epoch: The epoch, counted from 0.

    Returns:
        A new ``torch.Generator`` seeded with :func:`epoch_seed`.
    """
    return torch.Generator().manual_seed(epoch_seed(data_seed, epoch))


def preconditioned_inexact(settings: TrainSettings) -> str | None:
    """Why this loop would not train ``conversion.impl: preconditioned`` exactly, or None (plain SGD,
    no gradient clipping).

    Args:
        settings: The loop's training settings.

    Returns:
        The reason (the offending ``train`` setting), or None when it trains exactly.

    >>> preconditioned_inexact(TrainSettings(epochs=1, lr=0.1, optimizer="adamw"))
    "train.optimizer 'adamw' (the preconditioned form is exact only under SGD)"
    """
    if settings.optimizer != "sgd":
        return f"train.optimizer '{settings.optimizer}' (the preconditioned form is exact only under SGD)"
    if settings.grad_clip:
        return f"train.grad_clip {settings.grad_clip} (clipping breaks the preconditioned form's exactness)"
    return None


def autocast(device: torch.device, amp: bool | str):
    """The loop's autocast: bf16 or fp16 on CUDA as ``amp`` asks, nothing on CPU (see
    :func:`lcdense.engine.provenance.autocast_precision`, which names the precision it gives).

    Args:
        device: The device the model runs on.
        amp: ``train.amp`` (true/``"bf16"``, ``"fp16"`` or false).

    Returns:
        A ``torch.autocast`` context manager, enabled only for bf16 and fp16.
    """
    precision = autocast_precision(amp, device)
    return torch.autocast(device_type=device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16,
                          enabled=precision != "fp32")


def grad_scaler(amp: bool | str, device: torch.device) -> torch.amp.GradScaler | None:
    """The gradient scaler fp16 autocast needs (as timm's ``NativeScaler``), or None for bf16/fp32.

    Args:
        amp: ``train.amp``.
        device: The device the model runs on.

    Returns:
        A ``torch.amp.GradScaler`` for fp16 training, else None.
    """
    return torch.amp.GradScaler(device.type) if autocast_precision(amp, device) == "fp16" else None


def _seed_rngs(seed: int) -> None:
    """Seed torch, numpy and Python's ``random`` (timm's transforms and Mixup draw from the latter two)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class Recipe(ABC):
    """How :func:`train_loop` updates the model: its optimizer, what each update and each epoch end
    do, and what a checkpoint keeps of them. :class:`LoopRecipe` is the loop's own; a task with a
    training stack of its own (timm's optimizer, schedule and EMA) subclasses this.

    The loop calls :meth:`setup` once the model is ready (sync-BN converted), :meth:`update` after
    every backward, :meth:`after_epoch` with every epoch's complete record, and saves
    :meth:`state`'s entries in the checkpoint beside the model, which :meth:`restore` reads back.
    """

    optimizer: torch.optim.Optimizer
    epochs: int  # how many epochs the schedule runs
    scaler: torch.amp.GradScaler | None = None  # fp16 training: set by the loop before setup

    def step_optimizer(self) -> None:
        """One optimizer step on the current gradients: through the gradient scaler under fp16
        (it unscales them, skips the step on inf/NaN and updates its scale), else plainly."""
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def unscale(self) -> None:
        """Bring scaled fp16 gradients back to their true values (before clipping them); else nothing."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)

    @abstractmethod
    def setup(self, model: nn.Module) -> None:
        """Build the optimizer (and whatever else follows ``model``) and set :attr:`epochs`.

        Args:
            model: the model as the loop trains it (not wrapped in DDP).
        """

    @abstractmethod
    def update(self, updates: int) -> None:
        """Step the optimizer on the gradients of one batch (and what follows each update).

        Args:
            updates: the number of updates since training began, this one included.
        """

    def after_epoch(self, record: dict[str, Any]) -> None:
        """Called with each epoch's history entry, evaluation included, before the checkpoint (nothing here).

        Args:
            record: the epoch's metrics; ``epoch`` counts from 1.
        """

    def state(self) -> dict[str, Any]:
        """What the checkpoint keeps of the recipe besides the model.

        Returns:
            Checkpoint entries by name (the optimizer's state under ``optimizer``, the fp16
            gradient scaler's under ``scaler``).
        """
        return {"optimizer": self.optimizer.state_dict(),
                **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {})}

    def restore(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state` saved, on resume.

        Args:
            state: the whole checkpoint (``epoch`` is the last finished epoch, from 0; ``history`` its records).
        """
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


class LoopRecipe(Recipe):
    """The loop's own recipe: :func:`make_optimizer`, the per-update :func:`lr_factor` schedule and
    gradient clipping (``train.grad_clip``). It refuses preconditioned LC layers unless they train
    exactly (:func:`preconditioned_inexact`).

    >>> recipe = LoopRecipe(TrainSettings(epochs=2, lr=0.1), steps_per_epoch=3)
    >>> recipe.setup(nn.Linear(4, 1))
    >>> recipe.epochs, type(recipe.optimizer).__name__, sorted(recipe.state())
    (2, 'SGD', ['optimizer', 'scheduler'])
    """

    def __init__(self, settings: TrainSettings, steps_per_epoch: int) -> None:
        self.settings, self.steps_per_epoch, self.epochs = settings, steps_per_epoch, settings.epochs

    def setup(self, model: nn.Module) -> None:
        settings = self.settings
        preconditioned = any(isinstance(m, PreconditionedConv) for m in model.modules())
        if preconditioned and (why := preconditioned_inexact(settings)):
            raise LcdenseError(f"conversion.impl 'preconditioned' would not train exactly here: {why}; use impl 'auto'")
        self.model, self.optimizer = model, make_optimizer(model, settings)
        total_steps = settings.epochs * self.steps_per_epoch
        warmup = int(settings.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, total_steps, warmup, settings.schedule))

    def update(self, updates: int) -> None:
        if self.settings.grad_clip:
            self.unscale()
            nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.step_optimizer()
        self.scheduler.step()

    def state(self) -> dict[str, Any]:
        return {**super().state(), "scheduler": self.scheduler.state_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.scheduler.load_state_dict(state["scheduler"])


def train_loop(
    model: nn.Module,
    *,
    batches: Callable[[int], Iterable[Any]],
    steps_per_epoch: int,
    loss: Callable[[nn.Module, Any], torch.Tensor],
    settings: TrainSettings,
    cell: Cell,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    recipe: Recipe | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` for the recipe's epochs, reporting each to ``cell.epoch_end``.

    Each epoch reseeds torch, numpy and ``random`` from (data_seed + rank, epoch), so an epoch
    resumed from the cell's checkpoint replays exactly; the checkpoint holds the model, the
    recipe's state (optimizer, schedule, EMA) and the history, in fp32. The training precision
    and any resume (an exact ``fp32_state`` one, data order replayed) go to ``cell.provenance``;
    the checkpoint keeps them, and so does what the optimizer decays (:meth:`Provenance.note_weight_decay
    <lcdense.Provenance.note_weight_decay>`). An optimizer outside the SGD family is refused for preconditioned
    LC layers (:func:`lcdense.check_preconditioned_optimizer`).

    Data-parallel (``cell.world`` of several ranks): ``batches`` yields this rank's shard, the
    model is wrapped in DDP (``sync_bn`` turns BatchNorm into SyncBatchNorm, CUDA only, with
    :func:`lcdense.engine.distributed.convert_sync_batchnorm`), random
    augmentation and dropout are seeded with ``data_seed + rank``, normalisation statistics are
    averaged over the ranks after every epoch, the logged loss is the mean over ranks, and only
    rank 0 writes the checkpoint.

    Args:
        model: the converted model, on ``cell.device``.
        batches: ``batches(epoch)`` iterates over this rank's batches of ``epoch`` (from 0).
        steps_per_epoch: batches per epoch (the schedule's unit; updates are counted with it).
        loss: ``loss(net, batch)``, the training loss of a batch (run under :func:`autocast`).
        settings: the ``train`` section (``amp``, ``sync_bn``, ``eval_every``; and :class:`LoopRecipe`'s).
        cell: the cell trained (device, world, checkpoint, provenance, callbacks).
        evaluate: metrics of the model after an epoch (every ``eval_every`` epochs and the last).
        recipe: how to update the model; None: ``LoopRecipe(settings, steps_per_epoch)``.

    Returns:
        One record per epoch: ``epoch`` (from 1), ``train_loss``, ``lr``, ``epoch_time_s``,
        ``data_wait_share`` and what ``evaluate`` returned.
    """
    world = cell.world
    if settings.sync_bn and world.active:
        if cell.device.type != "cuda":
            raise LcdenseError("train.sync_bn needs CUDA (torch's SyncBatchNorm); set train.sync_bn=false on CPU")
        model = convert_sync_batchnorm(model)
    recipe = recipe or LoopRecipe(settings, steps_per_epoch)
    recipe.scaler = grad_scaler(settings.amp, cell.device)
    recipe.setup(model)
    check_preconditioned_optimizer(recipe.optimizer, model)
    cell.provenance.note_weight_decay(recipe.optimizer, model)
    history: list[dict[str, float]] = []
    start = 0
    if (state := cell.load_checkpoint()) is not None:
        model.load_state_dict(state["model"])
        recipe.restore(state)
        history, start = list(state["history"]), int(state["epoch"]) + 1
        cell.provenance.restore(state.get("provenance", {}))
        cell.provenance.resumed(after_epoch=start, source="fp32_state", data_order="replayed")
        cell.log(f"resumed {cell.variant} seed {cell.seed} after epoch {start}")
    if start < recipe.epochs:
        cell.provenance.trained_in(autocast_precision(settings.amp, cell.device))
    net = world.data_parallel(model, cell.device)
    for epoch in range(start, recipe.epochs):
        _seed_rngs(epoch_seed(cell.data_seed + world.rank, epoch))
        model.train()
        # summed on the device in float64: no sync per step, and the same additions as a Python float sum
        total, count, waited = torch.zeros((), dtype=torch.float64, device=cell.device), 0, 0.0
        began = tick = time.perf_counter()
        for batch in batches(epoch):
            waited += time.perf_counter() - tick
            with autocast(cell.device, settings.amp):
                value = loss(net, batch)
            recipe.optimizer.zero_grad(set_to_none=True)
            (value if recipe.scaler is None else recipe.scaler.scale(value)).backward()
            count += 1
            recipe.update(epoch * steps_per_epoch + count)
            total += value.detach().double()
            tick = time.perf_counter()
        if count == 0:
            raise LcdenseError("the training set yields no batch; lower train.batch_size or add data")
        world.average_running_stats(model)
        elapsed = time.perf_counter() - began
        record = {"epoch": epoch + 1, "train_loss": world.mean(float(total) / count),
                  "lr": recipe.optimizer.param_groups[0]["lr"], "epoch_time_s": elapsed,
                  "data_wait_share": waited / elapsed}
        if evaluate is not None and ((epoch + 1) % settings.eval_every == 0 or epoch + 1 == recipe.epochs):
            record.update(evaluate(model))
        recipe.after_epoch(record)
        history.append(record)
        if world.is_main:
            cell.save_checkpoint({"epoch": epoch, "model": model.state_dict(), **recipe.state(), "history": history,
                                  "provenance": cell.provenance.state()})
        cell.epoch_end(record, recipe.epochs)
    return history
