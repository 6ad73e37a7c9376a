"""The segmentation task adapter: a binary U-Net on Carvana or LGG brain MRI.

Config keys that are ``null`` by default take a per-dataset value from :data:`PROFILES`:
``embedded`` when ``data.root`` is null (the small generated datasets, sized to train on CPU)
and ``real`` when it points at the official data (the values of
``configs/segmentation/{carvana,brain_mri}_unet.yaml``). Set a key to override it.

>>> task = SegmentationTask()
>>> cfg = task.resolve_config({**task.default_config(), "data": {**task.default_config()["data"], "dataset": "brain-mri"}})
>>> cfg["data"]["image_size"], cfg["model"]["name"]
([64, 64], 'resnet18')
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import segmentation_models_pytorch as smp
import torch
from torch import nn

from lcdense import (Cell, Footprint, LcdenseError, Scope, Task, TrainSettings, autocast, autocast_precision, epoch_generator,
                     preconditioned_inexact, train_loop)

from .data import PairDataset, eval_batches, train_batches
from .embedded import ensure_embedded
from .layouts import (
    DATASETS,
    Sample,
    carvana_samples,
    check_sizes,
    lgg_samples,
    split_by_group,
)
from .metrics import ConfusionCounts
from .model import PARTS, build_unet, export_unet, init_sources

_TINY_UNET = {"model.name": "resnet18", "model.encoder_depth": 3, "model.decoder_channels": [32, 16, 8],
              "train.lr": 3e-3}
_FULL_UNET = {"model.name": "resnet34", "model.encoder_depth": 5, "model.decoder_channels": [256, 128, 64, 32, 16],
              "train.lr": 1e-3}

#: Values for the keys left null, by (dataset, "embedded" | "real").
PROFILES: dict[tuple[str, str], dict[str, Any]] = {
    ("carvana", "embedded"): {**_TINY_UNET, "data.image_size": [48, 72], "train.epochs": 15},
    ("brain-mri", "embedded"): {**_TINY_UNET, "data.image_size": [64, 64], "train.epochs": 12},
    ("carvana", "real"): {**_FULL_UNET, "data.image_size": [640, 960], "train.epochs": 20},
    ("brain-mri", "real"): {**_FULL_UNET, "data.image_size": [256, 256], "train.epochs": 50},
}


#: The conversion scopes: name → (what it converts, the parts of :data:`PARTS` it leaves learnable).
SCOPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "encoder": ("the encoder (its stem included); the decoder and the segmentation head stay learnable",
                ("decoder", "head")),
    "encoder+decoder": ("encoder and decoder; the segmentation head's 3x3 conv stays learnable (the classic "
                        "U-Net's output layer is a learnable 1x1)", ("head",)),
    "all": ("every spatial conv, the segmentation head's 3x3 conv included", ()),
}


@dataclass
class SegmentationData:
    """The split samples of one dataset and the network input size (H, W)."""

    dataset: str
    root: Path
    train: list[Sample]
    val: list[Sample]
    size: tuple[int, int]


class SegmentationTask(Task):
    """Binary segmentation with smp's U-Net: Dice + BCE loss, AdamW, cosine schedule.

    Metrics: ``dice`` (primary) and ``iou``, micro-averaged over the validation pixels, and for
    brain MRI ``patient_dice``, the mean per-patient volume Dice (empty masks: see
    :mod:`lcdense_tasks.segmentation.metrics`). Conversion scopes: :data:`SCOPES` (default
    ``encoder+decoder``: the prediction head stays learnable, as the paper's classifier does).
    """

    name: ClassVar[str] = "segmentation"
    primary_metric: ClassVar[str] = "dice"
    higher_is_better: ClassVar[bool] = True
    data_parallel: ClassVar[str] = "torchrun"
    scopes: ClassVar[dict[str, str]] = {name: text for name, (text, _) in SCOPES.items()}
    default_scope: ClassVar[str] = "encoder+decoder"

    def scope(self, name: str, model: nn.Module) -> Scope:
        """The scope ``name`` of :data:`SCOPES`, its learnable parts as globs of :data:`PARTS`."""
        text, learnable = SCOPES[name]
        return Scope(name, text, exclude=tuple(glob for part in learnable for glob in PARTS[part]))

    def default_config(self) -> dict[str, Any]:
        return {
            "data": {
                "dataset": "carvana",  # carvana | brain-mri
                "root": None,  # null: the embedded dataset, generated into the cache dir
                "image_size": None,  # [H, W], multiples of 2**encoder_depth; images are scaled to fit and zero-padded
                "masks": "gif",  # Carvana only: gif (train_masks/) or csv (train_masks.csv RLE)
                "val_fraction": 0.2,  # share of cars / patients held out
                "split_seed": 0,
                "augment": True,
                "workers": 0,
            },
            "model": {
                "name": None,  # the U-Net's smp encoder, e.g. resnet34
                "encoder_from": None,  # RUN_DIR/cells/ID: a trained timm classifier as the encoder (transfer)
                "encoder_depth": None,
                "decoder_channels": None,
            },
            "train": {
                "epochs": None, "batch_size": 16, "lr": None, "optimizer": "adamw", "weight_decay": 1e-4,
                "wd_norm_bias": True,
                "schedule": "cosine", "warmup_epochs": 0.0, "amp": True, "sync_bn": False, "grad_clip": None,
                "eval_every": 1,
            },
        }

    def resolve_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``config`` with every null profile key filled in (see :data:`PROFILES`)."""
        out = copy.deepcopy(config)
        dataset = out["data"]["dataset"]
        if dataset not in DATASETS:
            raise LcdenseError(f"unknown data.dataset '{dataset}'; use one of: {', '.join(DATASETS)}")
        profile = PROFILES[(dataset, "embedded" if out["data"]["root"] is None else "real")]
        for key, value in profile.items():
            section, name = key.split(".")
            if out[section].get(name) is None:
                out[section][name] = copy.deepcopy(value)
        size, stride = out["data"]["image_size"], 2 ** out["model"]["encoder_depth"]
        if len(size) != 2 or any(int(s) != s or s <= 0 or s % stride for s in size):
            raise LcdenseError(f"data.image_size must be [H, W] with multiples of {stride} "
                               f"(2**model.encoder_depth), got {size}")
        return out

    def input_size(self, config: dict[str, Any]) -> tuple[int, ...]:
        return (3, *self.resolve_config(config)["data"]["image_size"])

    def footprint(self, config: dict[str, Any]) -> Footprint:
        fp = super().footprint(self.resolve_config(config))
        fp.eval_batch_size = fp.batch_size  # validation: no-grad forward at the training batch
        return fp

    def prepare_data(self, config: dict[str, Any], cache_dir: Path) -> SegmentationData:
        data = self.resolve_config(config)["data"]
        root = ensure_embedded(data["dataset"], cache_dir) if data["root"] is None else Path(data["root"]).expanduser()
        samples = carvana_samples(root, data["masks"]) if data["dataset"] == "carvana" else lgg_samples(root)
        check_sizes(samples)
        train, val = split_by_group(samples, val_fraction=data["val_fraction"], seed=data["split_seed"])
        return SegmentationData(data["dataset"], root, train, val, tuple(data["image_size"]))

    def build_model(self, config: dict[str, Any], data: SegmentationData) -> nn.Module:
        model = self.resolve_config(config)["model"]
        return build_unet(model["name"], depth=model["encoder_depth"], decoder_channels=model["decoder_channels"],
                          encoder_from=model.get("encoder_from"))

    def export(self, model: nn.Module, config: dict[str, Any], facts: dict[str, Any], folder: Path) -> dict[str, Path]:
        """The folded U-Net through smp's ``save_pretrained``; ``smp.from_pretrained(folder)`` loads it."""
        return {"smp": export_unet(model, self.resolve_config(config)["model"], folder)}

    def fit(self, model: nn.Module, data: SegmentationData, config: dict[str, Any],
            cell: Cell) -> tuple[nn.Module, list[dict[str, float]]]:
        cfg = self.resolve_config(config)
        settings = TrainSettings.from_config(cfg["train"])
        batch_size, workers = cfg["train"]["batch_size"], cfg["data"]["workers"]
        _write_init_sources(model, cell)
        model.to(cell.device)
        train_set = PairDataset(data.train, data.size, augment=cfg["data"]["augment"])
        pin = cell.device.type == "cuda"
        dice_loss, bce_loss = smp.losses.DiceLoss("binary", from_logits=True), nn.BCEWithLogitsLoss()

        def loss(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            images, masks = (t.to(cell.device, non_blocking=True) for t in batch)
            logits = net(images).float()
            return dice_loss(logits, masks) + bce_loss(logits, masks)

        def batches(epoch: int):
            return train_batches(train_set, epoch_generator(cell.data_seed, epoch), batch_size=batch_size,
                                 workers=workers, pin_memory=pin, world=cell.world)

        history = train_loop(model, batches=batches, steps_per_epoch=len(train_set) // batch_size, loss=loss,
                             settings=settings, cell=cell,
                             evaluate=lambda net: self._scores(net, data, config, cell).scores(
                                 per_group=data.dataset == "brain-mri"))
        return model, history

    def preconditioned_inexact(self, config: dict[str, Any]) -> str | None:
        return preconditioned_inexact(TrainSettings.from_config(self.resolve_config(config)["train"]))

    def evaluate(self, model: nn.Module, data: SegmentationData, config: dict[str, Any], cell: Cell) -> dict[str, Any]:
        """The scores (module docstring), and per car (Carvana: ``per_car``) or per patient (brain
        MRI: ``per_patient``) the Dice and IoU of its images."""
        counts = self._scores(model, data, config, cell)
        unit = "per_patient" if data.dataset == "brain-mri" else "per_car"
        return {**counts.scores(per_group=data.dataset == "brain-mri"), unit: counts.per_group()}

    def evaluate_images(self, model: nn.Module, data: SegmentationData, config: dict[str, Any], cell: Cell,
                        transform: Any = None, limit: int | None = None) -> dict[str, float]:
        """``dice`` and ``iou`` (and brain MRI's ``patient_dice``) with each validation image passed through
        ``transform`` as read from disk (RGB uint8, before scaling to the network size); masks unchanged."""
        samples = data.val if limit is None else data.val[:limit]
        val_set = PairDataset(samples, data.size, augment=False, transform=transform)
        counts = self._scores(model, data, config, cell, val_set)
        return counts.scores(per_group=data.dataset == "brain-mri")

    def _scores(self, model: nn.Module, data: SegmentationData, config: dict[str, Any], cell: Cell,
                val_set: PairDataset | None = None) -> ConfusionCounts:
        cfg = self.resolve_config(config)
        model.to(cell.device).eval()
        val_set = PairDataset(data.val, data.size, augment=False) if val_set is None else val_set
        samples = val_set.samples
        counts, start = ConfusionCounts(), 0
        cell.provenance.eval_precision = autocast_precision(cfg["train"]["amp"], cell.device)
        with torch.no_grad(), autocast(cell.device, cfg["train"]["amp"]):
            for images, masks in eval_batches(val_set, batch_size=cfg["train"]["batch_size"],
                                              workers=cfg["data"]["workers"], pin_memory=cell.device.type == "cuda"):
                logits = model(images.to(cell.device, non_blocking=True))
                counts.add(logits, masks.to(cell.device), [s.group for s in samples[start:start + len(images)]])
                start += len(images)
        return counts


def _write_init_sources(model: nn.Module, cell: Cell) -> None:
    """Record where each spatial conv's starting filters came from (``init_sources.json``)."""
    sources = init_sources(model, cell.init)
    tally: dict[str, int] = {}
    for source in sources.values():
        tally[source] = tally.get(source, 0) + 1
    if not cell.world.is_main:
        return
    cell.dir.mkdir(parents=True, exist_ok=True)
    tmp = cell.dir / "init_sources.json.tmp"
    tmp.write_text(json.dumps({"summary": tally, "layers": sources}, indent=1))
    os.replace(tmp, cell.dir / "init_sources.json")
    if not cell.quiet:
        cell.log(f"  {cell.variant} s{cell.seed} initial spatial filters: "
                 + "; ".join(f"{n} x {source}" for source, n in tally.items()))
