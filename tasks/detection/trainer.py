"""The ultralytics side of the detection task: an LC-aware DetectionModel and DetectionTrainer.

Import this module only after :func:`lcdense_tasks.detection.offline.load_ultralytics` (it imports
ultralytics). Checkpoints pickle :class:`LCDetectionModel`, so it lives here, importable.

Frozen filters through the ultralytics training loop:

- ``get_model`` builds from yaml, applies ``cell.convert`` (seeded, so its frozen tensors equal
  those of the model handed to ``fit``), loads that model's weights and checks the digest;
- ultralytics' ModelEMA averages every floating state entry, frozen buffers included. Its
  ``torch._foreach_lerp_`` path leaves two equal values bitwise equal, but its fallback path
  (``d·ema + (1 − d)·model``, used where ``_foreach_lerp_`` is unavailable) rounds them. So after
  every EMA update the trainer copies the model's frozen tensors into the EMA: equal on every path
  (``tests/test_detection_fit.py`` checks both);
- ``last.pt`` stores the EMA and the optimizer state in fp16, which would round them on resume.
  Each epoch the fp32 model, optimizer state and EMA are saved first to ``cell.checkpoint_path``;
  a resume loads them when their epoch matches ``last.pt`` (``fp32_state``: the state is exact;
  ultralytics restarts its data order), otherwise it continues from ultralytics' fp16 EMA weights
  and restores the frozen tensors from the seeded conversion (``ultralytics_fp16_ema``:
  approximate). ``cell.provenance`` records which. The digest is verified either way, and the
  resumed EMA copy gets the model's exact frozen tensors back as well.

Under data parallelism (``lcdense run --ddp N``) lcdense's torchrun starts the ranks and joins their
process group (NCCL, or gloo on CPU); in each rank ultralytics' trainer runs as one of its own DDP
workers (``LOCAL_RANK`` is set, so it never launches workers of its own and never pickles the
trainer): it shards each global batch over the ranks, wraps the model in DDP and trains on the
rank's device. Every rank builds its model, its callbacks and its run's trackers itself.

>>> LCDetectionModel.__mro__[1].__name__
'DetectionModel'
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn
from ultralytics.models.yolo.detect import DetectionTrainer, DetectionValidator
from ultralytics.nn.tasks import DetectionModel, yaml_model_load
from ultralytics.utils import DEFAULT_CFG
from ultralytics.utils.torch_utils import unwrap_model

from lcdense import Cell, LcdenseError, fold, frozen_digest, frozen_tensors

from .evaluation import Predictions


class LCDetectionModel(DetectionModel):
    """A DetectionModel whose ``fuse()`` folds LC-Blocks into plain convs before BN fusion.

    ultralytics' fusion assigns ``conv.weight``; an LC-Block's weight is the product P·W and
    cannot be assigned, so folding (exact) comes first. Fusion is only applied to copies
    (validation, export), never to the model being trained.
    """

    def fuse(self, verbose: bool = True, imgsz: int = 640) -> LCDetectionModel:
        fold(self, inplace=True)
        return super().fuse(verbose=verbose, imgsz=imgsz)


def model_yaml(name: str, depth: float | None = None, width: float | None = None) -> dict[str, Any]:
    """The ultralytics model dict for ``name`` ("yolov5n" → yolov5nu.yaml), with optional scale overrides."""
    stem = name.removesuffix(".yaml")
    if stem[:-1] in ("yolov5", "yolov3") and stem[-1] in "nsmlx":
        stem += "u"  # ultralytics' anchor-free "u" variants: the v5 backbone with the v8 head
    try:
        cfg = yaml_model_load(f"{stem}.yaml")
    except FileNotFoundError:
        raise LcdenseError(f"unknown model '{name}'; use an ultralytics detection yaml name such as "
                           "yolov5n, yolov5s, yolov8n") from None
    scale = cfg.get("scale") or ""
    if (depth is not None or width is not None) and scale not in cfg.get("scales", {}):
        raise LcdenseError(f"model '{name}' has no scale letter (n/s/m/l/x), so model.depth/width cannot apply")
    if scale in cfg.get("scales", {}):
        base_depth, base_width, max_channels = cfg["scales"][scale]
        cfg["scales"] = {scale: [depth or base_depth, width or base_width, max_channels]}
    return cfg


def build_detection_model(cfg: dict[str, Any], names: dict[int, str], verbose: bool = False) -> LCDetectionModel:
    """A randomly initialised detection model for ``len(names)`` classes (uses the torch RNG)."""
    model = LCDetectionModel({**cfg, "nc": len(names)}, ch=3, nc=len(names), verbose=verbose)
    model.names = dict(names)
    return model


def export_yolo(model: nn.Module, cfg: dict[str, Any], names: dict[int, str], imgsz: int, path: Path) -> Path:
    """Write the folded detection ``model`` as an ultralytics checkpoint that ``YOLO(path)`` loads
    without lcdense: a plain ``DetectionModel`` of the same yaml holding its weights (fp32).

    Args:
        model: The trained, folded model (plain convs only).
        cfg: The ultralytics model dict it was built from (:func:`model_yaml`).
        names: Class index → name.
        imgsz: The image size it was trained at.
        path: The ``.pt`` file to write.

    Returns:
        ``path``.
    """
    import ultralytics

    plain = DetectionModel({**cfg, "nc": len(names)}, ch=3, nc=len(names), verbose=False)
    plain.load_state_dict(model.state_dict())
    plain.names = dict(names)
    plain.args = {"task": "detect", "imgsz": imgsz}
    torch.save({"model": plain.eval(), "train_args": {"task": "detect", "imgsz": imgsz}, "version": ultralytics.__version__,
                "date": None, "license": "AGPL-3.0 (ultralytics)"}, path)
    return path


def ultralytics_device(device: torch.device) -> str:
    """torch device → ultralytics' device string ("cpu", "0", "mps")."""
    if device.type == "cuda":
        return str(device.index or 0)
    return device.type


def ultralytics_precision(amp: bool | str, enabled: bool) -> str:
    """The precision ultralytics trains in: its ``amp`` argument, once the trainer has set it up.

    >>> ultralytics_precision("bf16", True), ultralytics_precision(True, True), ultralytics_precision(False, False)
    ('bf16', 'fp16', 'fp32')
    """
    if not enabled:
        return "fp32"
    return "bf16" if amp == "bf16" else "fp16"  # True: fp16 autocast with a GradScaler


def copy_frozen(source: nn.Module, target: nn.Module) -> None:
    """Copy ``source``'s frozen tensors into ``target``'s (bit for bit)."""
    current = frozen_tensors(target)
    with torch.no_grad():
        for name, tensor in frozen_tensors(source).items():
            current[name].copy_(tensor)


def _epoch_record(epoch: int, metrics: dict[str, float]) -> dict[str, float]:
    """ultralytics' per-epoch keys ("train/box_loss", "metrics/mAP50(B)", "lr/pg0") → flat names."""
    record: dict[str, float] = {"epoch": float(epoch)}
    for key, value in metrics.items():
        name = key.replace("metrics/", "val_").replace("/", "_").replace("(B)", "").replace("-", "_").lower()
        record[name] = float(value)
    return record


@dataclass
class CellContext:
    """What :class:`LcdenseDetectionTrainer` needs besides ultralytics' arguments.

    It is registered as the trainer's ``on_train_epoch_end`` callback: under data parallelism it
    checks after every epoch that every rank holds the same frozen filters.
    """

    cell: Cell
    model_cfg: dict[str, Any]
    source_state: dict[str, torch.Tensor]
    expected_digest: str
    threads: int

    def __call__(self, trainer: DetectionTrainer) -> None:
        if not self.cell.world.active:
            return
        digests = self.cell.world.gather(frozen_digest(unwrap_model(trainer.model)))
        if len(set(digests)) > 1 or digests[0] != self.expected_digest:
            raise LcdenseError(f"frozen filters differ between DDP ranks or moved (cell {self.cell.variant}, "
                               f"seed {self.cell.seed}): {', '.join(d[:12] for d in digests)}")


class _CpuDistributedDataParallel(nn.parallel.DistributedDataParallel):
    """DDP of a CPU module, as ultralytics builds it: ultralytics passes ``device_ids=[device.index]``
    (``[None]`` on the CPU), which DDP refuses for a CPU module; gloo ranks need none."""

    def __init__(self, module: nn.Module, device_ids: Any = None, **kwargs: Any) -> None:
        super().__init__(module, device_ids=None, **kwargs)


class LcdenseDetectionTrainer(DetectionTrainer):
    """DetectionTrainer that trains an lcdense-converted model and keeps its frozen filters exact.

    Constructed like any ultralytics trainer plus ``context=``. In a rank of a data-parallel cell
    (``context.cell.world`` of several ranks) it trains as one of ultralytics' DDP workers, in the
    process group and on the device lcdense's rank joined.
    """

    def __init__(self, cfg: Any = DEFAULT_CFG, overrides: dict[str, Any] | None = None,
                 _callbacks: dict | None = None, *, context: CellContext) -> None:
        self.context, self.cell = context, context.cell
        self.history: list[dict[str, float]] = []
        self.exact_state: dict[str, Any] | None = None  # the fp32 state an exact resume restores
        super().__init__(cfg, overrides, _callbacks)
        self.add_callback("on_train_epoch_end", context)
        if self.cell.world.active:  # ultralytics counts the devices of its device string: one per rank here
            self.world_size = self.cell.world.size
        torch.set_num_threads(context.threads)  # ultralytics' select_device set (cores - 1)

    def _setup_ddp(self) -> None:
        """lcdense's rank has joined the process group already: ultralytics trains on its device."""
        self.device = self.cell.device

    def _setup_train(self) -> None:
        """ultralytics' setup (DDP on the CPU without device ids), then, noted in the cell's provenance:
        the precision its amp setting gives, that of its per-epoch validation (under amp, ultralytics
        validates while training in fp16 autocast, whatever the training dtype) and what its optimizer
        decays (weights only: it never decays norms and biases)."""
        cpu_ddp = self.world_size > 1 and self.device.type == "cpu"
        with mock.patch.object(nn.parallel, "DistributedDataParallel", _CpuDistributedDataParallel) if cpu_ddp \
                else contextlib.nullcontext():
            super()._setup_train()
        self.cell.provenance.trained_in(ultralytics_precision(self.args.amp, self.amp))
        if self.amp:
            self.cell.provenance.epoch_eval_precision = "fp16"
        self.cell.provenance.note_weight_decay(self.optimizer, unwrap_model(self.model))  # no decay on norms, biases

    def _check_digest(self, model: nn.Module, when: str) -> None:
        if frozen_digest(model) != self.context.expected_digest:
            raise LcdenseError(f"frozen filters changed {when} (cell {self.cell.variant}, seed {self.cell.seed}); "
                               f"delete {self.cell.dir} to restart the cell")

    def get_model(self, cfg: Any = None, weights: nn.Module | None = None, verbose: bool = True) -> nn.Module:
        """Build from yaml, convert, then load the weights handed to ``fit`` (or, on resume, the EMA)."""
        model = self.cell.convert(build_detection_model(self.context.model_cfg, self.data["names"])).model
        seeded = {name: tensor.clone() for name, tensor in frozen_tensors(model).items()}
        if weights is None:
            model.load_state_dict(self.context.source_state)
        else:
            model.load_state_dict(weights.float().state_dict())
            current = frozen_tensors(model)
            with torch.no_grad():
                for name, tensor in seeded.items():  # fp16 EMA rounded them: restore the seeded originals
                    current[name].copy_(tensor)
        self._check_digest(model, "while rebuilding the model")
        return model

    def setup_model(self) -> dict | None:
        """ultralytics' setup; on resume, prefer the exact fp32 state saved for the same epoch."""
        ckpt = super().setup_model()
        if self.resume and ckpt is not None:
            state = self.cell.load_checkpoint()
            done = ckpt.get("epoch", -1) + 1
            self.cell.provenance.restore((state or {}).get("provenance", {}))
            if state is not None and state["epoch"] == ckpt.get("epoch"):
                self.model.load_state_dict(state["model"])
                self.history = list(state["history"])
                self.exact_state = state
                self.cell.provenance.resumed(after_epoch=done, source="fp32_state", data_order="restarted")
            else:
                self.history = [h for h in (state or {}).get("history", []) if h["epoch"] <= done]
                self.cell.provenance.resumed(after_epoch=done, source="ultralytics_fp16_ema", data_order="restarted")
            self._check_digest(self.model, "on resume")
        return ckpt

    def _load_checkpoint_state(self, ckpt: dict) -> None:
        """ultralytics' restore from its fp16 ``last.pt``; then, for an exact resume, the fp32 optimizer
        state and EMA saved with the model; the EMA's frozen tensors are reset to the model's either way."""
        super()._load_checkpoint_state(ckpt)
        if self.exact_state is not None:
            saved = self.exact_state["optimizer"]
            for group, current in zip(saved["param_groups"], self.optimizer.param_groups):
                group["fused"] = current.get("fused")  # as ultralytics does: the device picks the kernel
            self.optimizer.load_state_dict(saved)
            self.ema.ema.load_state_dict(self.exact_state["ema"])
            self.ema.updates = int(self.exact_state["ema_updates"])
        copy_frozen(unwrap_model(self.model), self.ema.ema)

    def optimizer_step(self) -> None:
        """ultralytics' step (clipping, optimizer, EMA update); then the EMA's frozen tensors are set
        to the model's, so that no EMA arithmetic can round them."""
        super().optimizer_step()
        if self.ema:
            copy_frozen(unwrap_model(self.model), self.ema.ema)

    def save_metrics(self, metrics: dict[str, float]) -> None:
        super().save_metrics(metrics)
        self.history.append(_epoch_record(self.epoch + 1, metrics))
        self.cell.epoch_end(self.history[-1], self.epochs)

    def save_model(self) -> bool:
        """Save the fp32 model, optimizer state and EMA (the cell's exact resume point, and the EMA the
        task evaluates) before ultralytics writes its fp16 last.pt."""
        self.cell.save_checkpoint({
            "epoch": self.epoch, "model": _cpu_state(unwrap_model(self.model)),  # no "module." prefix
            "optimizer": _cpu_tree(self.optimizer.state_dict()), "ema": _cpu_state(self.ema.ema),
            "ema_updates": int(self.ema.updates), "history": self.history, "provenance": self.cell.provenance.state(),
        })
        return super().save_model()

    def final_eval(self) -> None:
        """Skipped: the task evaluates the fp32 EMA and model itself (ultralytics would re-validate fp16 best.pt)."""


@contextlib.contextmanager
def outside_ddp() -> Iterator[None]:
    """Inside the block ultralytics' validator runs as in a single process, also in a rank of a
    data-parallel cell. ultralytics reads the rank from the environment when imported, and takes a
    validator created in a rank for its share of a DDP validation: it would gather every rank's
    results (counting each image once per rank here, where every rank evaluates the whole set, as
    in the other tasks), wait for the other ranks, and ask CUDA for the rank's device on a CPU."""
    from ultralytics.engine import validator
    from ultralytics.models.yolo.detect import val

    with mock.patch.multiple(validator, RANK=-1, LOCAL_RANK=-1), mock.patch.multiple(val, RANK=-1, LOCAL_RANK=-1):
        yield


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state on the CPU, not copied where it already is (the checkpoint is written at once)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _cpu_tree(value: Any) -> Any:
    """An optimizer state dict with every tensor on the CPU (dtypes kept: fp32 stays fp32; not copied
    where it already is, the checkpoint is written at once)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _cpu_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_tree(v) for v in value)
    return value


def finished_state(cell: Cell, epochs: int) -> dict | None:
    """The cell's saved fp32 state if it already completed ``epochs`` epochs, else None."""
    state = cell.load_checkpoint()
    return state if state is not None and state["epoch"] + 1 >= epochs else None


def last_checkpoint(save_dir: Path) -> Path | None:
    """ultralytics' ``last.pt`` of an interrupted run in ``save_dir``, if any."""
    last = save_dir / "weights" / "last.pt"
    return last if last.is_file() else None


class CollectingValidator(DetectionValidator):
    """DetectionValidator that records the final detections of every image in ``self.predictions``."""

    def init_metrics(self, model: Any) -> None:
        super().init_metrics(model)
        self.predictions: Predictions = {}

    def update_metrics(self, preds: list[dict], batch: dict) -> None:
        super().update_metrics(preds, batch)
        for si, pred in enumerate(preds):
            pbatch = self._prepare_batch(si, batch)
            scaled = self.scale_preds(self._prepare_pred(pred), pbatch)
            self.predictions[Path(pbatch["im_file"]).name] = (
                scaled["bboxes"].cpu().tolist(), scaled["conf"].cpu().tolist(), scaled["cls"].cpu().int().tolist())


__all__ = [
    "CellContext",
    "CollectingValidator",
    "LCDetectionModel",
    "LcdenseDetectionTrainer",
    "build_detection_model",
    "copy_frozen",
    "export_yolo",
    "finished_state",
    "last_checkpoint",
    "model_yaml",
    "outside_ddp",
    "ultralytics_device",
    "ultralytics_precision",
]
