"""Run a grid over E (and width, depth, kernel size or init where the task supports them) as one resumable run.

Example: ``lcdense sweep --task classification --E 1,8,64 --seeds 2``
"""
from __future__ import annotations

import argparse
from typing import Any

import yaml

from ..errors import LcdenseError
from . import run as run_command

AXES = ("width", "depth", "kernel_size", "init")


def add_arguments(p: argparse.ArgumentParser) -> None:
    run_command.add_arguments(p)
    p.add_argument("--width", help="comma-separated widths (task-dependent, e.g. 16,32,64)")
    p.add_argument("--depth", help="comma-separated depths (e.g. 20,56)")
    p.add_argument("--kernel-size", help="comma-separated kernel sizes (e.g. 3,5,7)")
    p.add_argument("--init", help="comma-separated spatial inits (e.g. kaiming_uniform,orthogonal)")


def _values(text: str, axis: str) -> list[Any]:
    values = [yaml.safe_load(v.strip()) for v in text.split(",") if v.strip()]
    if not values:
        raise LcdenseError(f"--{axis.replace('_', '-')} needs at least one value")
    return values


def run(args: argparse.Namespace) -> int:
    axes = {axis: _values(getattr(args, axis), axis) for axis in AXES if getattr(args, axis, None)}
    return run_command.launch(args, axes)
