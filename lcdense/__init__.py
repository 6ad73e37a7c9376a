"""lcdense: how much do CNNs lose (or gain) when their spatial filters are never learned?

The conversion core:

>>> import torch, torchvision
>>> from lcdense import convert, fold, frozen_digest
>>> model = torchvision.models.resnet18(num_classes=10)
>>> report = convert(model, "lc", E=8, spatial="frozen")
>>> digest = frozen_digest(model)
>>> folded = fold(model)          # a copy with plain convs of the combined filters W' = P·W

The benchmark: :func:`run`, :func:`sweep`, :func:`report`, :func:`analyze` and :func:`load`
(:mod:`lcdense.api`), their records (:mod:`lcdense.engine.records`) and events (:mod:`lcdense.engine.events`).
What a task adapter builds on is exported here too: :class:`Task`, :class:`Cell`, :class:`Scope` (a named conversion scope),
:func:`train_loop` with :class:`TrainSettings` / :class:`Recipe`, :func:`epoch_seed` / :func:`epoch_generator`,
:func:`autocast` / :func:`autocast_precision`, :func:`set_fp32_math` / :func:`fp32_math` (the fp32 math
mode, ``train.tf32``) and :class:`Provenance` (what a cell records of its precision and resumes), :func:`preconditioned_inexact`, :class:`Footprint` (how a task trains, for the memory estimate),
:class:`World` (``world.shard``, ``world.data_parallel``), :func:`create_model` / :func:`cifar_resnet`,
:func:`bench` (time and memory of the LC-Block forms against the baseline), the errors.
"""
from .api import Evaluation, RunResult, analyze, dry_run, evaluate, load, report, run, sweep
from .base.errors import LcdenseError, MissingExtra, require_extra, unknown_name
from .base.registry import Registry
from .core.accounting import count_parameters, forward_macs
from .core.blocks import LCConv, combine_filters, prefold
from .core.convert import ConversionReport, LayerRecord, convert, is_spatial_conv, is_trained, stem_convs
from .core.digest import frozen_digest, frozen_tensors
from .core.fold import combined_weight, fold, fold_block
from .core.inits import INITS, seeded_filters
from .core.models import cifar_resnet, create_model
from .core.precondition import PreconditionedConv, check_preconditioned_optimizer
from .cost.bench import bench
from .cost.estimate import Footprint
from .engine.capture import framework_output
from .engine.distributed import World
from .engine.events import Callback, CellEnd, CellStart, EpochEnd, RunEnd, RunStart, SuiteEnd
from .engine.provenance import Provenance, autocast_precision, fp32_math, set_fp32_math
from .engine.records import CellRecord, PlanRecord, RecordFormatError, SummaryRecord
from .engine.suites import Progress, Suite, SuiteContext, SuiteResult, get_suite, list_suites, register_suite
from .engine.task import Cell, Scope, Task, get_task, list_tasks, register_task
from .engine.training import (
    Recipe,
    TrainSettings,
    autocast,
    epoch_generator,
    epoch_seed,
    preconditioned_inexact,
    train_loop,
)

__version__ = "0.1.0"

__all__ = [
    "framework_output",
    "LCConv", "combine_filters", "prefold", "ConversionReport", "LayerRecord", "convert", "is_spatial_conv", "is_trained", "stem_convs", "frozen_digest",
    "frozen_tensors", "LcdenseError", "MissingExtra", "require_extra", "unknown_name", "combined_weight", "fold",
    "fold_block", "INITS", "seeded_filters", "Registry", "Cell", "Scope", "Task", "get_task", "list_tasks",
    "register_task", "count_parameters", "forward_macs", "PreconditionedConv", "check_preconditioned_optimizer",
    "World", "cifar_resnet", "create_model", "TrainSettings", "Recipe", "epoch_generator", "epoch_seed", "train_loop",
    "dry_run", "autocast", "autocast_precision", "set_fp32_math", "fp32_math", "preconditioned_inexact", "Provenance", "Footprint", "bench", "run",
    "sweep", "report", "analyze", "evaluate", "Evaluation", "load", "RunResult", "CellRecord", "PlanRecord", "SummaryRecord",
    "RecordFormatError", "Suite", "SuiteContext", "SuiteResult", "Progress", "register_suite", "get_suite",
    "list_suites", "Callback", "RunStart", "CellStart", "EpochEnd", "CellEnd", "RunEnd", "SuiteEnd", "__version__",
]
