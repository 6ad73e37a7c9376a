"""The detection task: YOLOv5 (ultralytics "u" variant) on PASCAL VOC or the embedded shapes set.

Config (``default_config()`` is the embedded tiny setting; ``configs/detection/*.yaml`` override it):

- ``data.dataset``: ``"shapes"`` (generated into the cache dir, a real VOCdevkit tree) or ``"voc"``
  (``data.root`` = your VOCdevkit directory); null picks voc when ``data.root`` is set; ``data.splits``: ultralytics split → VOC
  ``year/ImageSets name`` list; ``data.difficult``: ``"exclude"`` | ``"include"`` (see
  :mod:`lcdense_tasks.detection.voc`); ``data.classes``: null = the dataset's own classes.
- ``model.name``: yolov5n, yolov5s, … (built from ultralytics' yaml, random init, no weights);
  ``model.depth`` / ``model.width``: optional overrides of the scale's multipliers.
- ``train``: ultralytics hyper-parameters, pinned (``optimizer``, ``lr0``, ``nbs`` = batch when
  null, ``mosaic``, ``amp`` false or "bf16" — ``true`` would run a check that downloads weights).
- ``conversion.scope`` (sweep axis ``scope``): which parts of the model are converted, named in
  :data:`SCOPES`; the layers come from the model's own yaml (``backbone`` layers, then the
  ``head`` section's layers, whose last is the Detect layer): for YOLOv5u backbone = ``model.0-9``
  (the 6×6 stem included), neck = ``model.10-23``, head = ``model.24``. The default,
  ``backbone+neck``, keeps the Detect head learnable: its 3×3 convs (two per branch and scale)
  are not in YOLOv5's 1×1-only head, and the paper's classifier stays learnable too.

Metrics, of the EMA weights as ultralytics and YOLOv5 report them (``provenance.primary_weights:
ema`` in ``cell.json``; evaluated in fp32): ``map50_95`` (primary), ``map50``, ``precision``,
``recall`` from ultralytics' validator, ``coco_map50_95`` / ``coco_map50`` from pycocotools on the
same detections, and ``per_class`` (class → AP50-95 and AP50, ultralytics' per-class numbers;
classes without a validation instance are left out); ``raw_map50_95`` / ``raw_map50``
of the trained (non-averaged) weights. ``conversion.impl: preconditioned`` is refused: ultralytics
clips gradients.

>>> list(DetectionTask.scopes), DetectionTask.default_scope
(['backbone', 'backbone+neck', 'all'], 'backbone+neck')
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from lcdense import Cell, Footprint, LcdenseError, Scope, Task, frozen_digest

from .evaluation import coco_metrics
from .offline import load_ultralytics
from .shapes import SHAPE_CLASSES, generate_shapes_voc
from .transformed import transformed_split
from .voc import VOC_CLASSES, YoloDataset, build_yolo_dataset

#: The conversion scopes: name → (what it converts, the parts it leaves learnable).
SCOPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "backbone": ("the backbone (its 6x6 stem included); the neck and the Detect head stay learnable", ("neck", "head")),
    "backbone+neck": ("backbone and neck; the Detect head (its 3x3 and 1x1 convs) stays learnable", ("head",)),
    "all": ("every spatial conv, the Detect head's 3x3 convs included", ()),
}
DATASETS: dict[str, tuple[str, ...]] = {"shapes": SHAPE_CLASSES, "voc": VOC_CLASSES}
_TRAIN_KEYS = ("epochs", "optimizer", "lr0", "lrf", "momentum", "weight_decay", "warmup_epochs",
               "cos_lr", "mosaic", "close_mosaic", "scale", "translate", "fliplr", "hsv_h", "hsv_s", "hsv_v", "deterministic")


def layer_parts(model: nn.Module) -> dict[str, list[str]]:
    """The module-name globs of the backbone, neck and head of an ultralytics detection model, from its
    yaml: the ``backbone`` section's layers, then the ``head`` section's, whose last is the Detect layer.

    Args:
        model: an ultralytics ``DetectionModel`` (``model.model`` its layers, ``model.yaml`` its config).

    Returns:
        ``{"backbone": ["model.0.*", ...], "neck": [...], "head": ["model.<last>.*"]}``.
    """
    backbone, layers = len(model.yaml["backbone"]), len(model.model)
    globs = [f"model.{i}.*" for i in range(layers)]
    return {"backbone": globs[:backbone], "neck": globs[backbone:-1], "head": globs[-1:]}


@dataclass
class DetectionData:
    """What ``prepare_data`` hands to the other steps."""

    dataset: YoloDataset
    cache_dir: Path

    @property
    def names(self) -> dict[int, str]:
        return dict(enumerate(self.dataset.names))


class DetectionTask(Task):
    """Object detection with ultralytics YOLOv5u; see the module docstring for the config."""

    name: ClassVar[str] = "detection"
    primary_metric: ClassVar[str] = "map50_95"
    higher_is_better: ClassVar[bool] = True
    sweep_axes: ClassVar[dict[str, str]] = {"width": "model.width", "depth": "model.depth"}
    scopes: ClassVar[dict[str, str]] = {name: text for name, (text, _) in SCOPES.items()}
    default_scope: ClassVar[str] = "backbone+neck"
    data_parallel: ClassVar[str] = "torchrun"  # ultralytics' trainer runs in each rank as one of its DDP workers

    def default_config(self) -> dict[str, Any]:
        return {
            "data": {
                "dataset": None, "root": None, "classes": None, "difficult": "exclude", "imgsz": 64,
                "workers": 0, "splits": {"train": ["VOC2007/trainval"], "val": ["VOC2007/test"]},
                "shapes": {"n_trainval": 128, "n_test": 32, "size": 64, "max_objects": 2, "seed": 0},
            },
            "model": {"name": "yolov5n", "depth": None, "width": 0.125},
            "train": {
                "epochs": 15, "batch_size": 16, "nbs": None, "optimizer": "AdamW", "lr0": 0.002, "lrf": 0.1,
                "momentum": 0.937, "weight_decay": 0.0005, "warmup_epochs": 1.0, "cos_lr": False, "mosaic": 0.0, "close_mosaic": 0,
                "scale": 0.25, "translate": 0.1, "fliplr": 0.5, "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4,
                "amp": False, "val_every_epoch": False, "deterministic": True, "conf": 0.001, "iou": 0.7,
                "max_det": 300,
            },
        }

    def scope(self, name: str, model: nn.Module) -> Scope:
        """The scope ``name`` of :data:`SCOPES`: the parts it leaves learnable, as globs of ``model``'s layers."""
        text, learnable = SCOPES[name]
        parts = layer_parts(model)
        return Scope(name, text, exclude=tuple(glob for part in learnable for glob in parts[part]))

    def prepare_data(self, config: dict[str, Any], cache_dir: Path) -> DetectionData:
        data = config["data"]
        cache_dir = Path(cache_dir)
        load_ultralytics(cache_dir)
        name = data["dataset"] or ("voc" if data["root"] else "shapes")
        if name not in DATASETS:
            raise LcdenseError(f"unknown detection dataset '{name}'; use one of: {', '.join(DATASETS)}")
        if name == "shapes":
            devkit = generate_shapes_voc(cache_dir, **data["shapes"])
        elif data.get("root"):
            devkit = Path(data["root"]).expanduser()
        else:
            raise LcdenseError("data.dataset 'voc' needs data.root (--data /path/to/VOCdevkit)")
        classes = tuple(data["classes"] or DATASETS[name])
        dataset = build_yolo_dataset(devkit, dict(data["splits"]), cache_dir, classes=classes,
                                     difficult=data["difficult"])
        return DetectionData(dataset, cache_dir)

    def build_model(self, config: dict[str, Any], data: DetectionData) -> nn.Module:
        return self.model_from_facts(config, self.model_facts(config, data))

    def model_facts(self, config: dict[str, Any], data: DetectionData) -> dict[str, Any]:
        """The class names and the cache dir that holds ultralytics' settings."""
        return {"names": list(data.dataset.names), "cache_dir": str(Path(data.cache_dir).resolve())}

    def model_from_facts(self, config: dict[str, Any], facts: dict[str, Any]) -> nn.Module:
        load_ultralytics(Path(facts["cache_dir"]))
        from .trainer import build_detection_model, model_yaml

        model = config["model"]
        return build_detection_model(model_yaml(model["name"], model.get("depth"), model.get("width")),
                                     dict(enumerate(facts["names"])))

    def export(self, model: nn.Module, config: dict[str, Any], facts: dict[str, Any], folder: Path) -> dict[str, Path]:
        """The folded model as an ultralytics ``.pt`` (``YOLO(path)`` loads it without lcdense)."""
        load_ultralytics(Path(facts["cache_dir"]))
        from .trainer import export_yolo, model_yaml

        m = config["model"]
        return {"ultralytics": export_yolo(model, model_yaml(m["name"], m.get("depth"), m.get("width")),
                                           dict(enumerate(facts["names"])), int(config["data"]["imgsz"]),
                                           folder / f"{m['name']}.pt")}

    def input_size(self, config: dict[str, Any]) -> tuple[int, ...]:
        return (3, int(config["data"]["imgsz"]), int(config["data"]["imgsz"]))

    def footprint(self, config: dict[str, Any]) -> Footprint:
        """ultralytics' loop: gradients are zeroed after each step; besides the model handed to
        ``fit`` it holds a copy of its state (``source_state``), its own converted model and the EMA."""
        train = config["train"]
        optimizer = str(train["optimizer"]).lower()
        if optimizer not in ("sgd", "adamw"):
            raise LcdenseError(f"the cost estimate knows train.optimizer SGD and AdamW, got '{train['optimizer']}'")
        return Footprint(batch_size=int(train["batch_size"]), input_size=self.input_size(config), optimizer=optimizer,
                         lr=float(train["lr0"]), momentum=float(train["momentum"]) if optimizer == "sgd" else 0.0,
                         nesterov=True, weight_decay=float(train["weight_decay"]), amp=train["amp"] == "bf16",
                         grads_during_forward=False, model_copies=3,
                         eval_batch_size=2 * int(train["batch_size"]))

    def _common_args(self, config: dict[str, Any], data: DetectionData, cell: Cell, device: str) -> dict[str, Any]:
        amp = config["train"]["amp"]
        if amp not in (False, "bf16"):
            raise LcdenseError(f"train.amp must be false or bf16, got {amp!r} (ultralytics' fp16 AMP check downloads weights)")
        return {"data": str(data.dataset.yaml_path), "imgsz": int(config["data"]["imgsz"]),
                "device": device, "workers": int(config["data"]["workers"]),
                "plots": False, "verbose": not cell.quiet, "amp": amp, "save_json": False}

    def fit(self, model: nn.Module, data: DetectionData, config: dict[str, Any], cell: Cell) -> tuple[nn.Module, list[dict[str, float]]]:
        from ultralytics.utils.torch_utils import unwrap_model

        from .trainer import (
            CellContext,
            LcdenseDetectionTrainer,
            finished_state,
            last_checkpoint,
            model_yaml,
            ultralytics_device,
        )

        train, expected = config["train"], frozen_digest(model)
        done = finished_state(cell, int(train["epochs"]))
        if done is not None:  # trained to the end before an interruption: the exact fp32 state, nothing left to train
            model.load_state_dict(done["model"])
            cell.provenance.restore(done.get("provenance", {}))
            cell.provenance.resumed(after_epoch=done["epoch"] + 1, source="fp32_state", data_order="replayed")
            return model, list(done["history"])
        save_dir = cell.dir / "train"
        last = last_checkpoint(save_dir)
        model_cfg = model_yaml(config["model"]["name"], config["model"].get("depth"), config["model"].get("width"))
        overrides = {
            **self._common_args(config, data, cell, ultralytics_device(cell.device)),
            **{k: train[k] for k in _TRAIN_KEYS},
            "model": model_cfg["yaml_file"], "save_dir": str(save_dir), "batch": int(train["batch_size"]),
            "nbs": train["nbs"] or int(train["batch_size"]),
            "seed": cell.data_seed, "pretrained": False, "val": bool(train["val_every_epoch"]),
            "conf": train["conf"], "iou": train["iou"], "max_det": train["max_det"], "exist_ok": True,
            "resume": str(last) if last else False,
        }
        threads = torch.get_num_threads()
        source_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        context = CellContext(cell, model_cfg, source_state, expected, threads)
        trainer = LcdenseDetectionTrainer(overrides=overrides, context=context)
        try:
            trainer.train()
        finally:
            torch.set_num_threads(threads)
        cell.world.barrier()  # rank 0's last checkpoint (the fp32 EMA that evaluate reads) is written
        if cell.provenance.resumes:
            cell.log(f"resumed from {last} ({cell.provenance.resumes[-1]['source']})")
        return unwrap_model(trainer.model), trainer.history

    def preconditioned_inexact(self, config: dict[str, Any]) -> str | None:
        optimizer = config["train"]["optimizer"]
        return ("ultralytics' trainer clips gradients (max norm 10)"
                + (f" and train.optimizer is {optimizer}" if optimizer != "SGD" else ""))

    def evaluate(self, model: nn.Module, data: DetectionData, config: dict[str, Any], cell: Cell) -> dict[str, Any]:
        """Metrics of the fp32 EMA weights (primary, as ultralytics and YOLOv5 report them), and
        ``raw_map50_95``/``raw_map50`` of the trained weights themselves; both evaluated in fp32."""
        state = cell.load_checkpoint()
        if state is None or "ema" not in state:
            raise LcdenseError(f"cell {cell.variant} seed {cell.seed} has no saved fp32 EMA in {cell.checkpoint_path}; "
                               f"delete {cell.dir} to train it again")
        ema = copy.deepcopy(model)
        ema.load_state_dict(state["ema"])
        cell.provenance.primary_weights = "ema"
        cell.provenance.frozen_digests["ema"] = frozen_digest(ema)  # the runner fails the cell unless it is the model's
        cell.save_weights("ema", ema)  # the primary weights; ultralytics' own best.pt/last.pt stay in train/weights
        validator, stats = self._validate(ema, data, config, cell, "val")
        box = validator.metrics.box
        metrics: dict[str, Any] = {
            "map50_95": float(stats["metrics/mAP50-95(B)"]), "map50": float(stats["metrics/mAP50(B)"]),
            "precision": float(stats["metrics/precision(B)"]), "recall": float(stats["metrics/recall(B)"]),
        }
        metrics.update(coco_metrics(data.dataset.ground_truth["val"], validator.predictions, num_classes=len(data.names),
                                    max_det=int(config["train"]["max_det"]), quiet=False))
        metrics["per_class"] = {data.names[int(c)]: {"ap50_95": float(ap), "ap50": float(ap50)}
                                for c, ap, ap50 in zip(box.ap_class_index, box.ap, box.ap50)}
        cell.provenance.eval_precision = "fp16" if getattr(validator.args, "quantize", None) == 16 else "fp32"
        _, raw = self._validate(model, data, config, cell, "val_raw")
        metrics["raw_map50_95"], metrics["raw_map50"] = float(raw["metrics/mAP50-95(B)"]), float(raw["metrics/mAP50(B)"])
        return metrics

    def evaluate_images(self, model: nn.Module, data: DetectionData, config: dict[str, Any], cell: Cell,
                        transform: Any = None, limit: int | None = None) -> dict[str, float]:
        """``map50_95``, ``map50``, ``precision`` and ``recall`` (ultralytics' validator, fp32) of ``model``
        with each validation image passed through ``transform`` as read from disk; boxes unchanged
        (see :mod:`lcdense_tasks.detection.transformed`)."""
        changed = DetectionData(transformed_split(data.dataset, transform, limit), data.cache_dir)
        with tempfile.TemporaryDirectory(dir=cell.dir, prefix=".val-") as scratch:
            _, stats = self._validate(model, changed, config, cell, Path(scratch).name)
        cell.provenance.eval_precision = "fp32"
        return {"map50_95": float(stats["metrics/mAP50-95(B)"]), "map50": float(stats["metrics/mAP50(B)"]),
                "precision": float(stats["metrics/precision(B)"]), "recall": float(stats["metrics/recall(B)"])}

    def _validate(self, model: nn.Module, data: DetectionData, config: dict[str, Any], cell: Cell,
                  name: str) -> tuple[Any, dict[str, float]]:
        """ultralytics' validator on a fused deep copy of ``model``, in fp32 (no ``quantize``); under data
        parallelism every rank evaluates every image (:func:`~lcdense_tasks.detection.trainer.outside_ddp`)."""
        from .trainer import CollectingValidator, outside_ddp, ultralytics_device

        train = config["train"]
        args = {**self._common_args(config, data, cell, ultralytics_device(cell.device)),
                "batch": 2 * int(train["batch_size"]), "split": "val", "conf": train["conf"], "iou": train["iou"],
                "max_det": train["max_det"], "rect": True}
        threads = torch.get_num_threads()
        validator = CollectingValidator(args=args, save_dir=cell.dir / name)
        validator.add_callback("on_val_start", lambda _: torch.set_num_threads(threads))
        try:
            with outside_ddp():
                stats = validator(model=model)
        finally:
            torch.set_num_threads(threads)
        return validator, stats
