"""Run a grid over E (and width, depth, kernel size, init or the op inside the LC-Block, where the task supports them) as one resumable run.

Example: ``lcdense sweep --task classification --E 1,8,64 --seeds 2``

With ``--executor slurm|local`` every cell becomes a submitit job writing into the same run
directory; ``lcdense sweep --resume RUN_DIR --executor slurm`` submits only the cells that are
missing or failed, and ``lcdense report RUN_DIR`` assembles whatever has finished.
This command only turns its arguments into the settings of :func:`lcdense.sweep` and calls it.
"""
from __future__ import annotations

import argparse
from typing import Any

import yaml

from ..api import dry_run
from ..api import sweep as sweep_api
from ..base.errors import LcdenseError
from ..engine.executors import EXECUTORS
from . import run as run_command
from .common import positive_int

AXES = ("width", "depth", "kernel_size", "init", "mid")


def add_arguments(p: argparse.ArgumentParser) -> None:
    run_command.add_arguments(p)
    p.add_argument("--width", help="comma-separated widths (task-dependent, e.g. 16,32,64)")
    p.add_argument("--depth", help="comma-separated depths (e.g. 20,56)")
    p.add_argument("--kernel-size", help="comma-separated kernel sizes (e.g. 3,5,7)")
    p.add_argument("--init", help="comma-separated spatial inits (e.g. kaiming_uniform,orthogonal)")
    p.add_argument("--mid", help="comma-separated ops inside the LC-Block: none,relu,bn,bn_relu (appendix C)")
    jobs = p.add_argument_group("cluster jobs (submitit)")
    jobs.add_argument("--executor", choices=EXECUTORS,
                      help="run each cell as a job: slurm (a job array), local (one job per visible GPU; one on CPU), "
                           "debug (in-process)")
    jobs.add_argument("--executor-config", metavar="YAML", help="executor settings, e.g. configs/executors/slurm.yaml")
    jobs.add_argument("--partition", help="Slurm partition")
    jobs.add_argument("--gpus-per-job", type=positive_int, help="GPUs per cell job (> 1: data-parallel within the cell)")
    jobs.add_argument("--time-limit", type=positive_int, metavar="MIN", help="time limit per job, in minutes")
    jobs.add_argument("--array-parallelism", type=positive_int, help="Slurm array jobs running at once")
    jobs.add_argument("--wait", action="store_true", help="slurm: wait for the jobs, then write the report")


def _values(text: str, axis: str) -> list[Any]:
    values = [None if axis == "mid" and v.strip() == "none" else yaml.safe_load(v.strip())
              for v in text.split(",") if v.strip()]
    if not values:
        raise LcdenseError(f"--{axis.replace('_', '-')} needs at least one value")
    return values


def run(args: argparse.Namespace) -> int:
    axes = {axis: _values(getattr(args, axis), axis) for axis in AXES if getattr(args, axis, None)}
    if args.dry_run:
        dry_run(args.task, config=args.config, axes=axes, ddp=args.ddp, **run_command.settings(args))
        return 0
    executor_settings = {"partition": args.partition, "gpus_per_job": args.gpus_per_job,
                         "timeout_min": args.time_limit, "array_parallelism": args.array_parallelism}
    sweep_api(args.task, axes=axes, config=args.config, resume=args.resume, ddp=args.ddp, executor=args.executor,
              executor_config=args.executor_config, executor_settings=executor_settings, wait=args.wait,
              **run_command.settings(args))
    return 0
