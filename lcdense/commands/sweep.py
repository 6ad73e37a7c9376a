"""Run a grid over E and the task's sweep axes (width, depth, kernel size, init, the op inside the LC-Block, or any axis a task declares) as one resumable run.

Example: ``lcdense sweep --task classification --E 1,8,64 --seeds 2 --width 16,32``

``--axis NAME=V1,V2`` sweeps any axis of the task (its ``sweep_axes``, and the runner's ``init``
and ``mid``); ``--width 16,32`` and the other flags of :data:`lcdense.api.AXIS_FLAGS` are short
for it. With ``--executor slurm|local`` every cell becomes a submitit job writing into the same
run directory; ``lcdense sweep --resume RUN_DIR --executor slurm`` submits only the cells that
are missing or failed, and ``lcdense report RUN_DIR`` assembles whatever has finished.
This command only turns its arguments into the settings of :func:`lcdense.sweep` and calls it.
"""
from __future__ import annotations

import argparse
from typing import Any

import yaml

from ..api import AXIS_FLAGS, dry_run
from ..api import sweep as sweep_api
from ..base.errors import LcdenseError
from ..engine.executors import EXECUTORS
from . import run as run_command
from .common import nonnegative_int, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    run_command.add_arguments(p)
    p.add_argument("--axis", action="append", default=[], metavar="NAME=V1,V2",
                   help="sweep any axis of the task (lcdense tasks -v lists them), e.g. --axis width=16,32; repeatable")
    for axis, text in AXIS_FLAGS.items():
        p.add_argument(f"--{axis.replace('_', '-')}", help=f"{text}; short for --axis {axis}=...")
    jobs = p.add_argument_group("cluster jobs (submitit)")
    jobs.add_argument("--executor", choices=EXECUTORS.names(),
                      help="run each cell as a job: " + ", ".join(EXECUTORS.get(n).summary for n in EXECUTORS.names()))
    jobs.add_argument("--executor-config", metavar="YAML", help="executor settings, e.g. configs/executors/slurm.yaml")
    jobs.add_argument("--partition", help="Slurm partition")
    jobs.add_argument("--gpus-per-job", type=nonnegative_int,
                      help="GPUs per cell job (> 1: data-parallel within the cell; 0: CPU-only jobs)")
    jobs.add_argument("--time-limit", type=positive_int, metavar="MIN", help="time limit per job, in minutes")
    jobs.add_argument("--array-parallelism", type=positive_int, help="Slurm array jobs running at once")
    jobs.add_argument("--wait", action="store_true", help="slurm: wait for the jobs, then write the report")


def values(text: str, axis: str) -> list[Any]:
    """The values of one axis: comma-separated YAML scalars (``none`` is no op for ``mid``).

    Args:
        text: e.g. ``16,32``.
        axis: the axis' name.

    Returns:
        e.g. ``[16, 32]``.
    """
    parsed = [None if axis == "mid" and v.strip() == "none" else yaml.safe_load(v.strip())
              for v in text.split(",") if v.strip()]
    if not parsed:
        raise LcdenseError(f"sweep axis '{axis}' needs at least one value")
    return parsed


def axes(args: argparse.Namespace) -> dict[str, list[Any]]:
    """The sweep axes of the parsed flags: every ``--axis NAME=...`` and the short flags given.

    Args:
        args: the parsed arguments.

    Returns:
        Axis → its values (the task checks the names when the run is planned).
    """
    given = [(axis, getattr(args, axis)) for axis in AXIS_FLAGS if getattr(args, axis, None) is not None]
    for item in args.axis:
        axis, equals, text = item.partition("=")
        if not equals or not axis.strip():
            raise LcdenseError(f"--axis takes NAME=V1,V2 (e.g. --axis width=16,32), got '{item}'")
        given.append((axis.strip(), text))
    out: dict[str, list[Any]] = {}
    for axis, text in given:
        if axis in out:
            raise LcdenseError(f"sweep axis '{axis}' is given twice")
        out[axis] = values(text, axis)
    return out


def run(args: argparse.Namespace) -> int:
    grid = axes(args)
    if args.dry_run:
        dry_run(args.task, config=args.config, axes=grid, ddp=args.ddp, **run_command.settings(args))
        return 0
    executor_settings = {"partition": args.partition, "gpus_per_job": args.gpus_per_job,
                         "timeout_min": args.time_limit, "array_parallelism": args.array_parallelism}
    sweep_api(args.task, axes=grid, config=args.config, resume=args.resume, ddp=args.ddp, executor=args.executor,
              executor_config=args.executor_config, executor_settings=executor_settings, wait=args.wait,
              **run_command.settings(args))
    return 0
