"""lcdense: how much do CNNs lose (or gain) when their spatial filters are never learned?

>>> import torch, torchvision
>>> from lcdense import convert, fold, frozen_digest
>>> model = torchvision.models.resnet18(num_classes=10)
>>> report = convert(model, "lc", E=8, spatial="frozen")
>>> digest = frozen_digest(model)
>>> folded = fold(model)          # plain convs with the combined filters W' = P·W
"""
from .accounting import count_parameters, forward_macs
from .blocks import LCConv, combine_filters
from .convert import ConversionReport, LayerRecord, convert, is_spatial_conv
from .digest import frozen_digest, frozen_tensors
from .errors import LcdenseError
from .fold import combined_weight, fold, fold_block
from .inits import INITS, seeded_filters
from .precondition import PreconditionedConv, check_preconditioned_optimizer
from .registry import Registry
from .task import Cell, Task, get_task, list_tasks, register_task

__version__ = "0.1.0"

__all__ = [
    "LCConv", "combine_filters", "ConversionReport", "LayerRecord", "convert", "is_spatial_conv",
    "frozen_digest", "frozen_tensors", "LcdenseError", "combined_weight", "fold", "fold_block",
    "INITS", "seeded_filters", "Registry", "Cell", "Task", "get_task", "list_tasks", "register_task",
    "count_parameters", "forward_macs", "PreconditionedConv", "check_preconditioned_optimizer", "__version__",
]
