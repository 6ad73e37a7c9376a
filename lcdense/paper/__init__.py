"""The paper's tables and figures as data: list them, run one, read measured next to published.

``experiments.yaml`` (shipped in this package) lists every experiment of arXiv 2301.11360 that
lcdense reproduces: its source, task, dataset, model, grid, recipe and the published numbers.
:func:`lcdense.api.paper.run_experiment` (the API layer) runs one through the sweep runner; the
run's report then adds the paper column (:func:`compare`). This package is data and comparison only.

>>> "table1-cifar10" in experiments() and "fig7a-kernel-size" in experiments()
True
>>> verdict(welch(92.50, 0.20, 4, 92.55, 0.28, 4), scale="full")
'consistent'
"""
from .comparison import DEFINITIONS, compare, equivalence, verdict
from .listing import as_dict, describe, format_list
from .registry import (
           SCALES,
           Experiment,
           Published,
           PublishedGap,
           PublishedValue,
           experiments,
           get_experiment,
           version_label,
           versions,
)
from .statistics import combine, satterthwaite, tost, welch

__all__ = ["DEFINITIONS", "SCALES", "Experiment", "Published", "PublishedGap", "PublishedValue", "as_dict", "combine",
           "compare", "describe", "equivalence", "experiments", "format_list", "get_experiment", "satterthwaite",
           "tost", "verdict", "version_label", "versions", "welch"]
