"""``train.recipe: timm``: classification trained on timm's own training stack, the way timm's
``train.py`` assembles it (the "ResNet strikes back" recipes of the paper's Table 2).

timm provides every component: ``create_loader`` (its RandAugment/RRC transforms, the prefetcher,
its distributed and repeated-augmentation samplers), ``FastCollateMixup`` (Mixup/CutMix),
``create_optimizer_v2`` (LAMB; no weight decay on biases and norms), ``create_scheduler_v2``
(cosine with warmup, stepped per update and per epoch as timm steps it), ``BinaryCrossEntropy`` /
``SoftTargetCrossEntropy`` / ``LabelSmoothingCrossEntropy`` and ``ModelEmaV3``. lcdense keeps
what is its own: conversion, frozen digests (of the EMA too), and the shared training loop
(:func:`lcdense.train_loop`: resume points, the per-epoch record and its events), into which timm's
optimizer, scheduler and EMA plug as a :class:`TimmRecipe`.

Per epoch the model (and the EMA) is evaluated; the cell reports the **best** epoch's top-1 as
``top1`` (primary: the paper reports the best top-1 of Table 2, as timm's ``model_best`` does)
and the last epoch's as ``top1_last``; ``per_class`` top-1 is that same best epoch's. The cell
keeps the best epoch's weights as ``best`` (its primary weights), the last as ``model`` and the
EMA, if any, as ``ema``.

>>> sorted(TIMM_DEFAULTS)[:4]
['aug_repeats', 'auto_augment', 'bce_target_thresh', 'channels_last']
>>> loss_for({"loss": "bce", "mixup": 0.1, "cutmix": 1.0, "bce_target_thresh": None}, 0.0).__class__.__name__
'BinaryCrossEntropy'
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lcdense import (Cell, LcdenseError, Recipe, TrainSettings, autocast, autocast_precision, epoch_seed, frozen_digest,
                     train_loop)

from .scoring import SUMS, batch_sums, class_hits, fgsm, metrics_from_sums, per_class_top1

#: ``train.timm`` keys and their defaults (timm's train.py defaults where it has one).
TIMM_DEFAULTS: dict[str, Any] = {
    "opt": "lamb", "opt_eps": None, "sched": "cosine", "warmup_lr": 1e-5, "min_lr": 0.0, "cooldown_epochs": 0,
    "loss": "bce", "bce_target_thresh": None, "mixup": 0.0, "cutmix": 0.0, "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5, "mixup_mode": "batch", "auto_augment": None, "aug_repeats": 0,
    "scale": [0.08, 1.0], "ratio": [0.75, 4 / 3], "hflip": 0.5, "color_jitter": 0.4, "reprob": 0.0,
    "train_interpolation": "random", "crop_pct": None, "drop_path": 0.0, "ema": False, "ema_decay": 0.9998,
    "ema_warmup": False, "channels_last": True,
}
LOSSES = ("bce", "ce")


@dataclass
class Fitted:
    """What ``fit`` hands to ``evaluate`` for one cell: the per-epoch history, the EMA, the facts
    and the best epoch's per-class top-1."""

    history: list[dict[str, float]]
    ema: nn.Module | None
    facts: dict[str, Any]
    per_class: dict[str, dict[str, float]]


def loss_for(opts: dict[str, Any], smoothing: float) -> nn.Module:
    """timm's training loss, chosen as timm's train.py chooses it."""
    from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if opts["loss"] not in LOSSES:
        raise LcdenseError(f"unknown train.timm.loss '{opts['loss']}'; use one of: {', '.join(LOSSES)}")
    mixing = opts["mixup"] > 0 or opts["cutmix"] > 0
    if opts["loss"] == "bce":  # mixup's targets already carry the smoothing
        return BinaryCrossEntropy(smoothing=0.0 if mixing else smoothing, target_threshold=opts["bce_target_thresh"])
    if mixing:
        return SoftTargetCrossEntropy()
    return LabelSmoothingCrossEntropy(smoothing) if smoothing else nn.CrossEntropyLoss()


def optimizer_and_schedule(model: nn.Module, train: dict[str, Any], steps: int) -> tuple[Any, Any, int]:
    """timm's optimizer over the trainable parameters (frozen banks are buffers, out of its reach),
    its scheduler and the number of epochs it schedules (cooldown included)."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    opts = train["timm"]
    extra = {"eps": float(opts["opt_eps"])} if opts["opt_eps"] is not None else {}
    optimizer = create_optimizer_v2(model, opt=opts["opt"], lr=float(train["lr"]),
                                    weight_decay=float(train["weight_decay"]), **extra)
    scheduler, epochs = create_scheduler_v2(
        optimizer, sched=opts["sched"], num_epochs=int(train["epochs"]), warmup_epochs=int(train["warmup_epochs"]),
        warmup_lr=float(opts["warmup_lr"]), min_lr=float(opts["min_lr"]), cooldown_epochs=int(opts["cooldown_epochs"]),
        updates_per_epoch=steps)
    return optimizer, scheduler, epochs


def _data_config(config: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """timm's data config for the model at ``data.image_size`` (the model's own mean/std)."""
    from timm.data import resolve_data_config

    size, crop_pct = int(config["data"]["image_size"]), config["train"]["timm"]["crop_pct"]
    args = {"input_size": (3, size, size), "mean": tuple(model.mean.flatten().tolist()),
            "std": tuple(model.std.flatten().tolist()), **({"crop_pct": float(crop_pct)} if crop_pct else {})}
    return resolve_data_config(args, model=getattr(model, "net", model))


def _common(config: dict[str, Any], data_config: dict[str, Any], cell: Cell) -> dict[str, Any]:
    return {"input_size": data_config["input_size"], "mean": data_config["mean"], "std": data_config["std"],
            "num_workers": int(config["data"]["workers"]), "distributed": cell.world.active,
            "pin_memory": cell.device.type == "cuda", "device": cell.device}


def _train_loader(data: dict[str, Any], config: dict[str, Any], data_config: dict[str, Any], cell: Cell) -> Any:
    """timm's training loader for this rank: its transforms, Mixup/CutMix collate and samplers."""
    from timm.data import FastCollateMixup, create_loader

    train, opts, world = config["train"], config["train"]["timm"], cell.world
    per_rank = int(train["batch_size"]) // world.size
    mixing = opts["mixup"] > 0 or opts["cutmix"] > 0
    if mixing and per_rank % 2:
        raise LcdenseError(f"Mixup/CutMix needs an even batch per rank; train.batch_size {train['batch_size']} "
                           f"gives {per_rank} on each of {world.size} rank(s)")
    collate = FastCollateMixup(mixup_alpha=opts["mixup"], cutmix_alpha=opts["cutmix"], prob=opts["mixup_prob"],
                               switch_prob=opts["mixup_switch_prob"], mode=opts["mixup_mode"],
                               label_smoothing=float(train["label_smoothing"]),
                               num_classes=len(data["classes"])) if mixing else None
    loader = create_loader(
        data["train"], batch_size=per_rank, is_training=True, scale=tuple(opts["scale"]), ratio=tuple(opts["ratio"]),
        hflip=opts["hflip"], color_jitter=opts["color_jitter"], auto_augment=opts["auto_augment"],
        re_prob=opts["reprob"], interpolation=opts["train_interpolation"],
        num_aug_repeats=int(opts["aug_repeats"]) if world.active else 0, collate_fn=collate,
        persistent_workers=False,  # workers restart each epoch from its seed, so a resumed epoch replays
        **_common(config, data_config, cell))
    return loader


def _val_loader(data: dict[str, Any], config: dict[str, Any], data_config: dict[str, Any], cell: Cell) -> Any:
    """timm's evaluation loader (resize, centre crop at ``crop_pct``), sharded over the ranks."""
    from timm.data import create_loader

    return create_loader(data["val"], batch_size=int(config["eval"]["batch_size"]),
                         interpolation=data_config["interpolation"], crop_pct=data_config["crop_pct"],
                         crop_mode=data_config.get("crop_mode"), **_common(config, data_config, cell))


class _Pixels:
    """timm's prefetcher normalises batches; lcdense models take [0, 1] pixels (their normalisation
    is inside the model, so FGSM works in pixel space): this maps a batch back."""

    def __init__(self, data_config: dict[str, Any], device: torch.device, channels_last: bool) -> None:
        self.mean = torch.tensor(data_config["mean"], device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(data_config["std"], device=device).view(1, -1, 1, 1)
        self.format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.mean, x, self.std).contiguous(memory_format=self.format)


def _rank_batches(loader: Any, pixels: _Pixels, cell: Cell) -> Any:
    """This rank's val batches as [0, 1] pixels; timm's ordered sampler pads the last shards with
    repeats to equal length, and those are dropped so every image counts once."""
    world = cell.world
    mine, seen = len(range(world.rank, len(loader.dataset), world.size)), 0
    for x, y in loader:
        keep = max(0, min(len(y), mine - seen))
        seen += len(y)
        if keep:
            yield pixels(x[:keep]), y[:keep]


@torch.no_grad()
def _scores(model: nn.Module, loader: Any, pixels: _Pixels, cell: Cell, amp: bool,
            classes: list[str]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Top-1/top-5/loss and per-class top-1 over the whole val set (each rank scores its shard; the
    sums are gathered)."""
    model.eval()
    sums, hits = torch.zeros(len(SUMS), dtype=torch.float64), torch.zeros(2, len(classes), dtype=torch.float64)
    for x, y in _rank_batches(loader, pixels, cell):
        with autocast(cell.device, amp):
            logits = model(x)
        sums += batch_sums(logits, y)
        hits += class_hits(logits, y, len(classes))
    metrics = metrics_from_sums(sum(cell.world.gather(sums)), len(classes))
    return metrics, per_class_top1(sum(cell.world.gather(hits)), classes)


class TimmRecipe(Recipe):
    """timm's side of :func:`lcdense.train_loop`: its optimizer and scheduler (stepped per update and
    per epoch, as timm's train.py steps them), its EMA (updated after every optimizer step; the
    checkpoint keeps it) and the per-class top-1 of the best epoch so far (kept too)."""

    def __init__(self, train: dict[str, Any], steps: int, cell: Cell | None = None) -> None:
        self.train, self.steps, self.cell = train, steps, cell
        self.per_class: dict[str, dict[str, float]] = {}
        self.best_top1 = -math.inf
        self.new_best = False  # this epoch's top-1 beat the earlier ones: its weights are the cell's "best"

    def setup(self, model: nn.Module) -> None:
        from timm.utils import ModelEmaV3

        opts = self.train["timm"]
        self.model = model
        self.optimizer, self.scheduler, self.epochs = optimizer_and_schedule(model, self.train, self.steps)
        self.ema = ModelEmaV3(model, decay=float(opts["ema_decay"]), use_warmup=bool(opts["ema_warmup"])) \
            if opts["ema"] else None

    def update(self, updates: int) -> None:
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model, step=updates)
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=updates)

    def after_epoch(self, record: dict[str, Any]) -> None:
        """Step the epoch schedule; at a new best epoch keep its weights as the cell's ``best``
        (before the checkpoint, so a resumed cell has them)."""
        if self.scheduler is not None:
            self.scheduler.step(record["epoch"], record.get("top1"))
        if self.new_best and self.cell is not None:
            self.cell.save_weights("best", self.model, epoch=int(record["epoch"]))
        self.new_best = False

    def note_scores(self, top1: float, per_class: dict[str, dict[str, float]]) -> None:
        """Keep ``per_class`` if ``top1`` beats every earlier epoch's (the first of equal maxima, as timm keeps it)."""
        if top1 > self.best_top1:
            self.best_top1, self.per_class, self.new_best = top1, per_class, True

    def state(self) -> dict[str, Any]:
        return {**super().state(), "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "per_class": self.per_class}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.per_class = dict(state["per_class"])
        self.best_top1 = max((h["top1"] for h in state["history"] if "top1" in h), default=-math.inf)
        if self.scheduler is not None:
            self.scheduler.step(int(state["epoch"]) + 1)  # timm's schedules are functions of the epoch: the lr again


def fit(model: nn.Module, data: dict[str, Any], config: dict[str, Any], cell: Cell) -> tuple[nn.Module, Fitted]:
    """Train ``model`` with the timm recipe of ``config['train']`` in :func:`lcdense.train_loop`
    (which resumes from the cell's checkpoint and reports every epoch).

    Args:
        model: the converted model, on ``cell.device``.
        data: the image folders (``train``, ``val``, ``classes``).
        config: the cell's config.
        cell: the cell trained.

    Returns:
        The trained model and what :func:`summarize` needs of the training.
    """
    import timm

    train, opts = config["train"], config["train"]["timm"]
    amp, channels_last = bool(train["amp"]), bool(opts["channels_last"])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    data_config = _data_config(config, model)
    train_loader, val_loader = _train_loader(data, config, data_config, cell), _val_loader(data, config, data_config, cell)
    loss_fn = loss_for(opts, float(train["label_smoothing"]))
    pixels = _Pixels(data_config, cell.device, channels_last)
    classes = list(data["classes"])
    recipe = TimmRecipe(train, len(train_loader), cell)
    cell.provenance.eval_precision = autocast_precision(amp, cell.device)  # top-1/top-5: the training's autocast
    cell.provenance.primary_weights = "best"  # top1 is the best epoch's, whose weights the cell keeps as "best"

    def batches(epoch: int) -> Any:
        if hasattr(train_loader.sampler, "set_epoch"):  # one shared order for all ranks, from the data seed
            train_loader.sampler.set_epoch(epoch_seed(cell.data_seed, epoch))
        return train_loader

    def loss(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return loss_fn(net(pixels(x)), y)

    def evaluate(trained: nn.Module) -> dict[str, float]:
        scores, per_class = _scores(trained, val_loader, pixels, cell, amp, classes)
        recipe.note_scores(scores["top1"], per_class)
        if recipe.ema is not None:
            ema_scores, _ = _scores(recipe.ema.module, val_loader, pixels, cell, amp, classes)
            scores.update({f"ema_{k}": v for k, v in ema_scores.items()})
        return scores

    settings = TrainSettings.from_config({k: train[k] for k in ("epochs", "lr", "amp", "sync_bn", "eval_every")})
    history = train_loop(model, batches=batches, steps_per_epoch=len(train_loader), loss=loss, settings=settings,
                         cell=cell, evaluate=evaluate, recipe=recipe)
    ema, world = recipe.ema, cell.world
    facts = {
        "recipe": "timm", "timm": timm.__version__, "channels_last": channels_last,
        "optimizer": type(recipe.optimizer).__name__,
        "scheduler": type(recipe.scheduler).__name__ if recipe.scheduler is not None else None,
        "loss": type(loss_fn).__name__,
        "mixup": {"mixup": opts["mixup"], "cutmix": opts["cutmix"]} if opts["mixup"] > 0 or opts["cutmix"] > 0 else None,
        "auto_augment": opts["auto_augment"],
        "aug_repeats": int(opts["aug_repeats"]) if world.active else 0,  # timm repeats across ranks only
        "ema": {"decay": float(opts["ema_decay"]), "warmup": bool(opts["ema_warmup"])} if ema is not None else None,
        "global_batch": int(train["batch_size"]), "batch_per_rank": int(train["batch_size"]) // world.size,
        "updates_per_epoch": recipe.steps, "epochs": recipe.epochs,
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
        "primary": "top1 is the best epoch's top-1 (the paper reports the best, as timm's model_best); "
                   "top1_last is the last epoch's",
    }
    if ema is not None:  # the runner fails the cell unless this equals the trained model's digest
        cell.provenance.frozen_digests["ema"] = frozen_digest(ema.module)
        cell.save_weights("ema", ema.module)
    return model, Fitted(history, ema.module if ema is not None else None, facts, recipe.per_class)


def summarize(fitted: Fitted, model: nn.Module, data: dict[str, Any], config: dict[str, Any],
              cell: Cell) -> dict[str, Any]:
    """The cell's final metrics: best and last epoch, the EMA's, FGSM on the last model, and the facts."""
    evaluated = [h for h in fitted.history if "top1" in h]
    best = max(evaluated, key=lambda h: h["top1"])  # the first of equal maxima, as timm keeps it
    last = evaluated[-1]
    metrics: dict[str, Any] = {"top1": best["top1"], "top1_best": best["top1"], "best_epoch": best["epoch"],
                               "top1_last": last["top1"], "val_loss_last": last["val_loss"]}
    if "top5" in best:
        metrics.update(top5=best["top5"], top5_last=last["top5"])
    if fitted.ema is not None:
        metrics.update(ema_top1_best=max(h["ema_top1"] for h in evaluated), ema_top1_last=last["ema_top1"])
    metrics["per_class"] = fitted.per_class
    metrics["fgsm_top1"] = _fgsm_top1(model, data, config, cell)
    metrics["training"] = fitted.facts
    return metrics


def _fgsm_top1(model: nn.Module, data: dict[str, Any], config: dict[str, Any], cell: Cell) -> float:
    """Top-1 under ℓ∞ FGSM (ε = ``eval.fgsm_eps`` in [0, 1] pixels) over the whole val set, in fp32."""
    data_config = _data_config(config, model)
    pixels = _Pixels(data_config, cell.device, bool(config["train"]["timm"]["channels_last"]))
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64)
    for x, y in _rank_batches(_val_loader(data, config, data_config, cell), pixels, cell):
        adv = fgsm(model, x, y, float(config["eval"]["fgsm_eps"]))
        with torch.no_grad():
            counts += torch.tensor([int((model(adv).argmax(1) == y).sum()), len(y)], dtype=torch.float64)
    correct, total = sum(cell.world.gather(counts)).tolist()
    return correct / total
