"""The task adapter protocol: what a downstream task implements so the runner can benchmark it.

A task prepares its data, builds its model and trains/evaluates it; the runner owns variants,
seeds, conversion, frozen-filter digests, costs, resume and reporting. Register a task in code
with ``@register_task("name")`` or, from another package, through the ``lcdense.tasks``
entry-point group (``[project.entry-points."lcdense.tasks"] mytask = "mypkg:MyTask"``).

>>> sorted(set(list_tasks()) & {"classification"})
['classification']
"""
from __future__ import annotations

import contextlib
import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..base.errors import LcdenseError
from ..base.files import write_bytes
from ..base.registry import Registry
from ..core.convert import ConversionReport
from ..cost.estimate import Footprint
from .capture import framework_output
from .distributed import World
from .events import EpochEnd, Events
from .provenance import Provenance
from .rundir import CellDir
from .trained import save_weights

TASKS: Registry[type[Task]] = Registry("task", group="lcdense.tasks")


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator registering a :class:`Task` subclass under ``name``.

    Args:
        name: The task's name (``lcdense run --task NAME``).

    Returns:
        The decorator; it registers the class and returns it unchanged.

    Raises:
        LcdenseError: When decorating, ``name`` is already registered for another class.
    """
    return TASKS.register(name)


def list_tasks() -> list[str]:
    """Names of every task: registered in code or through the ``lcdense.tasks`` entry points.

    Returns:
        The task names.
    """
    return TASKS.names()


def get_task(name: str) -> Task:
    """An instance of the task registered as ``name`` (unknown names list the known ones).

    Args:
        name: A name of :func:`list_tasks`.

    Returns:
        A new instance of the task's class.

    Raises:
        LcdenseError: ``name`` is unknown, or its entry point fails to load.
    """
    return TASKS.get(name)()


@dataclass(frozen=True)
class Scope:
    """A named conversion scope of a task: which of its model's spatial convs a variant converts
    (``conversion.scope``, the sweep axis ``scope``); the convs outside it stay learnable.

    >>> Scope("encoder+decoder", "the segmentation head stays learnable", exclude=("segmentation_head.*",)).exclude
    ('segmentation_head.*',)

    Attributes:
        name: The scope's name, e.g. ``"backbone+neck"``.
        description: What it converts and what stays learnable, in words (the conversion report shows it).
        exclude: Module-name globs of the convs it leaves learnable (added to ``conversion.exclude``).
        stem: :func:`lcdense.convert`'s ``stem``: True (with the rest), False (the whole stem stays
            learnable) or ``"only"`` (the stem alone is converted).
    """

    name: str
    description: str
    exclude: tuple[str, ...] = ()
    stem: bool | str = True

    def label(self) -> str:
        """``name: description``, as the conversion report and the cell record show it.

        Returns:
            The label.
        """
        return f"{self.name}: {self.description}"


@dataclass
class Cell:
    """One (variant, seed) of a run, as a task sees it while training and evaluating.

    Under data-parallel training ``world`` says which rank this is: a task takes its share of each
    global batch with ``cell.world.shard(indices)``; ``train.batch_size`` stays the global batch.
    ``init`` is the init of the cell's converted spatial filters. A task notes what it actually did
    (precision, resume, which weights it evaluated) in ``provenance``. A task reports every finished
    epoch with :meth:`epoch_end` (the shared :func:`lcdense.train_loop` does it), which delivers it to
    the run's callbacks. :meth:`framework_output` sends what libraries print to the cell's
    ``train.log`` (the runner wraps ``fit`` and ``evaluate`` in it; a worker process that a task's
    framework launches enters it too); ``verbose`` (``--verbose``) shows that output as well.

    Attributes:
        variant: The variant's name (e.g. ``"lc-frozen"``).
        seed: The cell's seed.
        init_seed: The seed of the model's initialisation.
        data_seed: The seed of data order and augmentation.
        dir: The cell's folder.
        device: The device to train on.
        convert: Converts a model to the cell's variant; its report's ``model`` is the converted model.
        quiet: Suppress the task's own progress messages.
        log: Prints the task's progress messages to the console (a no-op when quiet).
        world: This process's rank in data-parallel training.
        init: The init of the converted spatial filters.
        provenance: What the task records of its precision, resume and evaluated weights.
        id: The cell's id (empty: ``<variant>__seed<seed>``).
        events: The run's callbacks, which :meth:`epoch_end` reports to.
        verbose: Show the framework output on the console too.
        tf32: ``train.tf32``: the fp32 math mode the runner set (:func:`lcdense.set_fp32_math`).
        model_info: What rebuilds the cell's model (task, variant, seed, config, model facts),
            written into every weights file the cell keeps (:meth:`save_weights`).
    """

    variant: str
    seed: int
    init_seed: int
    data_seed: int
    dir: Path
    device: torch.device
    convert: Callable[[nn.Module], ConversionReport]
    quiet: bool = False
    log: Callable[[str], None] = print
    world: World = field(default_factory=World)
    init: str = "kaiming_uniform"
    provenance: Provenance = field(default_factory=Provenance)
    id: str = ""
    events: Events = field(default_factory=Events)
    verbose: bool = False
    tf32: bool = False
    model_info: dict[str, Any] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        """The cell's ``train.log``: the framework output of its training and evaluation."""
        return CellDir(self.dir).train_log

    def framework_output(self, main: bool = True) -> contextlib.AbstractContextManager[None]:
        """Inside the block, library output goes to :attr:`log_path` (see :func:`lcdense.framework_output`);
        on the console too when :attr:`verbose` and ``main`` (the process of rank 0)."""
        return framework_output(self.log_path, show=self.verbose and main)

    def epoch_end(self, metrics: dict[str, Any], epochs: int | None = None) -> None:
        """Report a finished epoch (its history entry, with ``epoch`` counted from 1) to the callbacks."""
        if self.world.is_main:
            self.events.emit(EpochEnd(cell_id=self.id or f"{self.variant}__seed{self.seed}", epoch=int(metrics["epoch"]),
                                      metrics=dict(metrics), variant=self.variant, seed=self.seed, epochs=epochs))

    def save_weights(self, weights: str, model: nn.Module, **facts: Any) -> None:
        """Keep ``model``'s learned tensors as the cell's ``weights`` (e.g. ``"best"`` at a new best
        epoch, ``"ema"``), atomically, on rank 0; the runner keeps the final ones as ``"model"`` and
        lists every kept file in the cell's record (:mod:`lcdense.engine.trained`).

        Args:
            weights: The weights' name (a file ``<weights>.safetensors`` in the cell's folder).
            model: The module (not a DDP wrapper) whose weights to keep.
            **facts: JSON-able facts about these weights (e.g. ``epoch=7``), stored with them.
        """
        if self.world.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            save_weights(CellDir(self.dir).weights_file(weights), model, {**self.model_info, "weights": weights, **facts})

    @property
    def checkpoint_path(self) -> Path:
        """The cell's resume point (``checkpoint.pt``)."""
        return CellDir(self.dir).checkpoint_pt

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Atomically write ``state`` (tensors, numbers, strings, lists, dicts) as the resume point
        (serialised first, so that a full disk says how much space it needs)."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with buffer.getbuffer() as data:  # the serialised bytes, not a second copy of them
            write_bytes(self.checkpoint_path, data)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last resume point of this cell, or None (loaded with ``weights_only=True``)."""
        if not self.checkpoint_path.exists():
            return None
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)


class Task(ABC):
    """Base class of a task adapter.

    Config sections a task owns: ``data``, ``model`` and ``train``; the runner owns ``run`` and
    ``conversion``. ``default_config()`` must give every key the task reads.
    """

    name: ClassVar[str]
    primary_metric: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    #: Sweepable model settings: sweep axis name → dotted config key (e.g. "width": "model.width").
    sweep_axes: ClassVar[dict[str, str]] = {}
    #: The named conversion scopes (``conversion.scope``, sweep axis ``scope``): name → what it converts.
    scopes: ClassVar[dict[str, str]] = {"all": "every spatial conv"}
    #: The scope a run converts when ``conversion.scope`` is null.
    default_scope: ClassVar[str] = "all"
    #: How one cell trains on several GPUs (``lcdense run --ddp N`` or ``--device 0,1,...``):
    #: ``"torchrun"``: lcdense starts N ranks with torchrun and ``fit`` trains on
    #: ``cell.world.shard(...)`` of each global batch (a framework's trainer may run in each rank
    #: as one of its own DDP workers, as ultralytics' does); ``None``: one device only.
    data_parallel: ClassVar[str | None] = None

    def scope(self, name: str, model: nn.Module) -> Scope:
        """The conversion scope ``name`` (a key of :attr:`scopes`) for ``model``, whose layout its
        globs may depend on. The default: the whole model, every spatial conv."""
        return Scope(name, self.scopes[name])

    @abstractmethod
    def default_config(self) -> dict[str, Any]:
        """The task's defaults: a dict with ``data``, ``model`` and ``train`` sections."""

    @abstractmethod
    def prepare_data(self, config: dict[str, Any], cache_dir: Path) -> Any:
        """Load (or generate the embedded default into ``cache_dir``) and return a data handle."""

    @abstractmethod
    def build_model(self, config: dict[str, Any], data: Any) -> nn.Module:
        """A freshly initialised model (the runner seeds torch before calling)."""

    def model_facts(self, config: dict[str, Any], data: Any) -> dict[str, Any]:
        """What :meth:`build_model` reads of ``data`` (e.g. the number of classes), JSON-able: kept
        with the trained model, so that :meth:`model_from_facts` rebuilds it without the data.
        The default: nothing (``build_model`` does not read its data).

        Args:
            config: The cell's config.
            data: What :meth:`prepare_data` returned.

        Returns:
            JSON-able facts, e.g. ``{"classes": 10, "channels": 3}``.
        """
        return {}

    def model_from_facts(self, config: dict[str, Any], facts: dict[str, Any]) -> nn.Module:
        """The model :meth:`build_model` builds, from :meth:`model_facts` instead of the data (how
        ``lcdense.load(run).model(cell)`` rebuilds a trained cell). The default calls
        ``build_model(config, None)``; a task whose ``build_model`` reads its data overrides both.

        Args:
            config: The cell's config.
            facts: What :meth:`model_facts` returned for the cell's data.

        Returns:
            A freshly built (unconverted) model.

        Raises:
            LcdenseError: The default ``build_model`` needs the data.
        """
        try:
            return self.build_model(config, None)
        except (AttributeError, TypeError, KeyError, IndexError) as exc:
            raise LcdenseError(f"task '{self.name}' cannot rebuild its model without its data ({type(exc).__name__}); "
                               "it needs model_facts() and model_from_facts()") from None

    def export(self, model: nn.Module, config: dict[str, Any], facts: dict[str, Any], folder: Path) -> dict[str, Path]:
        """Write a trained, folded ``model`` into ``folder`` as a plain checkpoint of the library
        its architecture comes from (loadable without lcdense), with what that library needs to
        build it (``lcdense export``). The default: the task has no such export.

        Args:
            model: The trained model, every LC-Block folded (plain convs only).
            config: The cell's config.
            facts: The cell's :meth:`model_facts`.
            folder: An existing, empty folder.

        Returns:
            What was written: a short name (e.g. ``"timm"``) → the file or folder to load.
        """
        raise LcdenseError(f"task '{self.name}' cannot export its models to a library's own format")

    @abstractmethod
    def input_size(self, config: dict[str, Any]) -> tuple[int, ...]:
        """One sample's input shape (C, H, W) used for MAC counts."""

    def footprint(self, config: dict[str, Any]) -> Footprint:
        """How a cell of ``config`` trains, for :func:`lcdense.cost.estimate.estimate` (batch, input,
        optimizer, autocast). The default describes :func:`lcdense.engine.training.train_loop` reading the
        ``train`` section; a task with its own training loop overrides it."""
        train = config["train"]
        optimizer = str(train.get("optimizer", "sgd")).lower()
        return Footprint(batch_size=int(train.get("batch_size", 1)), input_size=tuple(self.input_size(config)),
                         optimizer=optimizer, lr=float(train.get("lr") or 0.01),
                         momentum=float(train.get("momentum", 0.9)) if optimizer == "sgd" else 0.0,
                         nesterov=bool(train.get("nesterov", True)), weight_decay=float(train.get("weight_decay") or 0.0),
                         amp=bool(train.get("amp", True)), grads_during_forward=True)

    @abstractmethod
    def fit(self, model: nn.Module, data: Any, config: dict[str, Any], cell: Cell) -> tuple[nn.Module, list[dict[str, float]]]:
        """Train the converted ``model``; return the trained model and per-epoch metrics.

        Resume from ``cell.load_checkpoint()`` if present and save one per epoch; note the training
        precision and any resume in ``cell.provenance`` (:func:`lcdense.engine.training.train_loop` does both).
        """

    def preconditioned_inexact(self, config: dict[str, Any]) -> str | None:
        """Why ``conversion.impl: preconditioned`` would not train exactly under ``config``, or None
        if the task verifies that it does (plain SGD, no gradient clipping). The default: not verified."""
        return f"task '{self.name}' does not verify that its optimizer is plain SGD without gradient clipping"

    @abstractmethod
    def evaluate(self, model: nn.Module, data: Any, config: dict[str, Any], cell: Cell) -> dict[str, float]:
        """Final metrics of the trained model; must include ``primary_metric``. Note the precision
        evaluated in as ``cell.provenance.eval_precision``."""

    def evaluate_images(self, model: nn.Module, data: Any, config: dict[str, Any], cell: Cell,
                        transform: Callable[[np.ndarray, int], np.ndarray] | None = None,
                        limit: int | None = None) -> dict[str, float]:
        """Metrics (``primary_metric`` among them) of ``model`` on the validation split, each image passed
        through ``transform(image, index)`` first (RGB uint8 H×W×3 as read from disk, or as the model's
        input size where the task crops first, and its index in the split); the first ``limit`` images
        only, if given. The corruptions suite calls it; ``transform`` may carry a ``key`` naming it,
        for caches of transformed copies. The default: the task does not support it."""
        raise LcdenseError(f"task '{self.name}' does not evaluate transformed images")

    def published_corruptions(self, root: Path, data: Any, config: dict[str, Any], *, names: list[str],
                              severities: list[int]) -> Iterator[tuple[str, int, Any]]:
        """The published corrupted validation sets under ``root`` (e.g. CIFAR-10-C) as
        ``(corruption, severity, data)``, each ``data`` a handle :meth:`evaluate_images` reads; only
        ``names`` × ``severities``. The default: the task reads none."""
        raise LcdenseError(f"task '{self.name}' reads no published corruption files; drop --data to generate them")
