"""Every built-in task reports its epochs the same way: one ``EpochEnd`` per epoch and cell, in
order, delivered to the run's callbacks while the cell trains, and a ``history.csv`` row for each.

The runs are as small as each task's own tests make them (tests/test_classification.py,
tests/test_timm_recipe.py, tests/test_detection_fit.py, tests/test_segmentation_task.py); the
shared loop's run has two cells, to show that each cell gets its own epochs.
"""
from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import lcdense

EPOCHS = 2
A2 = Path(__file__).parents[1] / "configs" / "classification" / "imagenet_resnet18d_rsb_a2.yaml"


def _history_epochs(path: Path) -> list[int]:
    with path.open() as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


class EpochRecorder(lcdense.Callback):
    """Keeps every ``EpochEnd`` with the epochs that the cell's ``history.csv`` held when it came
    (the built-in callbacks, which write that file, run first)."""

    def __init__(self) -> None:
        self.run_dir = Path()
        self.events: list[tuple[lcdense.EpochEnd, list[int]]] = []

    def on_run_start(self, event: lcdense.RunStart) -> None:
        self.run_dir = event.run_dir

    def on_epoch_end(self, event: lcdense.EpochEnd) -> None:
        self.events.append((event, _history_epochs(self.run_dir / "cells" / event.cell_id / "history.csv")))


def _classification(tmp: Path) -> dict[str, Any]:
    return {"task": "classification", "variants": "learnable,lc-frozen",
            "data.train_limit": 256, "data.val_limit": 100, "batch_size": 64}


def _timm(tmp: Path) -> dict[str, Any]:
    pytest.importorskip("timm")
    from lcdense_tasks.classification.imagenet import ensure_embedded_imagefolder

    root = ensure_embedded_imagefolder(tmp / "imagenet", train_per_class=2, val_per_class=1)
    return {"config": A2, "model": "timm:test_resnet", "dataset": "imagefolder", "data": str(root),
            "variants": "lc-frozen", "batch_size": 4, "data.image_size": 32, "train.warmup_epochs": 1,
            "eval.batch_size": 50, "train.timm.ema": True, "train.timm.cooldown_epochs": 0}


def _detection(tmp: Path) -> dict[str, Any]:
    pytest.importorskip("ultralytics")
    return {"task": "detection", "variants": "lc-frozen", "batch_size": 4, "train.warmup_epochs": 0.0,
            "data.shapes": {"n_trainval": 8, "n_test": 4, "size": 64, "max_objects": 2, "seed": 0}}


def _segmentation(tmp: Path) -> dict[str, Any]:
    pytest.importorskip("segmentation_models_pytorch")
    from lcdense_tasks.segmentation.embedded import generate_carvana

    generate_carvana(tmp / "carvana", cars=4, size=(48, 32))
    return {"task": "segmentation", "variants": "lc-frozen", "data": str(tmp / "carvana"),
            "data.image_size": [32, 48], "data.val_fraction": 0.25, "model.name": "resnet18",
            "model.encoder_depth": 3, "model.decoder_channels": [16, 8, 4], "batch_size": 8, "train.lr": 3e-3}


@pytest.mark.parametrize("settings", [_classification, _timm, _detection, _segmentation],
                         ids=["classification", "classification-timm", "detection", "segmentation"])
def test_every_task_emits_one_epoch_end_per_epoch(settings: Callable[[Path], dict[str, Any]], tmp_path: Path) -> None:
    overrides = settings(tmp_path)
    recorder = EpochRecorder()
    result = lcdense.run(**overrides, E=2, epochs=EPOCHS, device="cpu", workers=0, quiet=True, analysis=False,
                         out=str(tmp_path / "runs"), callbacks=[recorder])
    assert result.complete and len(result.cells) == len(overrides["variants"].split(","))
    for cell in result.cells:
        events = [(e, live) for e, live in recorder.events if e.cell_id == cell.id]
        assert [e.epoch for e, _ in events] == list(range(1, EPOCHS + 1)), cell.id
        assert all(e.epochs == EPOCHS and e.variant == cell.variant and e.seed == cell.seed for e, _ in events)
        assert [e.metrics for e, _ in events] == cell.history  # the epoch's history entry, as the cell recorded it
        assert [live for _, live in events] == [list(range(1, e + 1)) for e in range(1, EPOCHS + 1)]  # written live
        assert _history_epochs(result.run_dir / "cells" / cell.id / "history.csv") == list(range(1, EPOCHS + 1))
    assert len(recorder.events) == EPOCHS * len(result.cells)  # nothing for any other cell
