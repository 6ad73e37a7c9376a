"""List the registered tasks: built-in ones and those installed through the ``lcdense.tasks`` entry points."""
from __future__ import annotations

import argparse

from ..engine.runner import sweep_axes
from ..engine.task import get_task, list_tasks


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", "-v", action="store_true",
                   help="also load each task and show its primary metric, sweep axes and conversion scopes")


def run(args: argparse.Namespace) -> int:
    for name in list_tasks():
        if args.verbose:
            task = get_task(name)
            direction = "higher" if task.higher_is_better else "lower"
            print(f"{name:16s} primary metric: {task.primary_metric} ({direction} is better); "
                  f"sweep axes: E, {', '.join(sweep_axes(task))}")
            for scope, text in task.scopes.items():
                default = " (default)" if scope == task.default_scope else ""
                print(f"{'':16s}   scope {scope}{default}: {text}")
        else:
            print(name)
    return 0
