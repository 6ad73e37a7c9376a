"""The entrances: everything the command line does is one of these Python calls first.

:mod:`~lcdense.api.benchmark` runs, sweeps, re-reports and reads back runs; :mod:`~lcdense.api.paper`
runs a paper experiment from the registry (:mod:`lcdense.paper`). The top of the layer order:
only the command line (:mod:`lcdense.commands`) sits above it.
"""
from .benchmark import (
                        AXIS_FLAGS,
                        SHORT_KEYS,
                        RunResult,
                        analyze,
                        default_callbacks,
                        dry_run,
                        expand_settings,
                        load,
                        report,
                        run,
                        sweep,
)
from .evaluate import Evaluation, evaluate
from .paper import experiment_settings, run_experiment, sweep_arguments

__all__ = ["AXIS_FLAGS", "SHORT_KEYS", "Evaluation", "RunResult", "analyze", "evaluate", "default_callbacks", "dry_run", "expand_settings", "experiment_settings",
           "load", "report", "run", "run_experiment", "sweep", "sweep_arguments"]
