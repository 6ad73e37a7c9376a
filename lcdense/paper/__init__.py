"""The paper's tables and figures as data: list them, run one, read measured next to published.

``experiments.yaml`` (shipped in this package) lists every experiment of arXiv 2301.11360 that
lcdense reproduces: its source, task, dataset, model, grid, recipe and the published numbers.
:func:`lcdense.api.paper.run_experiment` (the API layer) runs one through the sweep runner; the
run's report then adds the paper column (:func:`compare`). This package is data and comparison only.

>>> "table1-cifar10" in experiments() and "fig7a-kernel-size" in experiments()
True
>>> agreement(92.50, 92.55, 0.28, scale="full")
'yes'
"""
from .comparison import WITHIN, agreement, compare
from .listing import as_dict, describe, format_list
from .registry import (
           SCALES,
           Experiment,
           Published,
           PublishedValue,
           experiments,
           get_experiment,
)

__all__ = ["WITHIN", "SCALES", "Experiment", "Published", "PublishedValue", "agreement", "as_dict", "compare",
           "describe", "experiments", "format_list", "get_experiment"]
