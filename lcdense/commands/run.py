"""Train baseline, frozen and LC variants of a task and report the frozen-vs-learnable gap.

Example: ``lcdense run --task classification --E 8 --seeds 0,1,2``
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..config import load_yaml, resolve
from ..distributed import launched_by_torchrun, torchrun_command, visible_gpus
from ..errors import LcdenseError
from ..runner import (cell_record, check_global_batch, execute, gpu_list, load_run, new_run_dir, plan_cells,
                      refuse_existing_run, save_run_config, setup_world)
from ..summary import write_report
from ..task import Task, get_task, list_tasks
from ..variants import CellSpec, parse_expansions, parse_seeds, parse_variants
from .common import positive_int

# CLI flag → dotted config key
FLAG_KEYS = {"E": "run.E", "variants": "run.variants", "seeds": "run.seeds", "device": "run.device",
             "out": "run.out", "name": "run.name", "epochs": "train.epochs", "batch_size": "train.batch_size",
             "data": "data.root", "dataset": "data.dataset", "model": "model.name", "workers": "data.workers",
             "memory": "run.max_memory"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", help=f"task name (built in: {', '.join(list_tasks())})")
    p.add_argument("--config", help="YAML config (e.g. configs/classification/cifar10_resnet_lc_20_16.yaml)")
    p.add_argument("--E", help="LC expansion(s), e.g. 8 or 1,8,64")
    p.add_argument("--variants", help="subset of learnable,frozen,lc-learnable,lc-frozen (or lc-frozen@E)")
    p.add_argument("--seeds", help="seeds, e.g. 0,1,2, or a count such as 3")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--data", help="dataset root on disk (default: the task's embedded dataset)")
    p.add_argument("--dataset", help="dataset name, where the task has several")
    p.add_argument("--model", help="model name, where the task has several")
    p.add_argument("--workers", type=int, help="data loader worker processes")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, or a GPU list 0,1,2,3 (data-parallel, like --ddp 4)")
    p.add_argument("--ddp", type=positive_int, metavar="N",
                   help="train each cell data-parallel on N GPUs (with --device cpu: N gloo ranks) via torchrun; "
                        "detection uses ultralytics' own DDP launcher")
    p.add_argument("--out", help="output root (default: runs); the run goes to OUT/TASK/NAME")
    p.add_argument("--name", help="run name (default: a timestamp); an existing name is refused")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config value, e.g. train.lr=0.05")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (other settings come from it)")
    p.add_argument("--no-analysis", action="store_true", help="skip the filter analysis at the end")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--dry-run", action="store_true",
                   help="predict each cell's memory and FLOPs (fake tensors, nothing allocated or trained)")
    p.add_argument("--memory", help="memory to plan for and refuse above, e.g. 80GiB (run.max_memory; "
                                    "default: the device's)")


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    for attr, key in FLAG_KEYS.items():
        value = getattr(args, attr, None)
        if value is not None:
            section, name = key.split(".")
            flags.setdefault(section, {})[name] = value
    if args.quiet:
        flags.setdefault("run", {})["quiet"] = True
    if args.no_analysis:
        flags.setdefault("run", {})["analysis"] = False
    return flags


def _axes(task: Task, config: dict[str, Any], requested: dict[str, list[Any]]) -> tuple[dict[str, list[Any]], dict[str, str]]:
    axis_keys = {"init": "conversion.init", **task.sweep_axes}
    for axis in requested:
        if axis not in axis_keys:
            raise LcdenseError(f"task '{task.name}' cannot sweep '{axis}'; it can sweep: E, {', '.join(sorted(axis_keys))}")
    return requested, {a: axis_keys[a] for a in requested}


def _new_run(args: argparse.Namespace, sweep: dict[str, list[Any]]) -> tuple[dict[str, Any], Task, list[CellSpec], dict[str, str]]:
    file_config = load_yaml(args.config) if args.config else {}
    name = args.task or file_config.get("task")
    if not name:
        raise LcdenseError(f"say which task to run: --task NAME (one of: {', '.join(list_tasks())})")
    if args.task and file_config.get("task") not in (None, args.task):
        raise LcdenseError(f"--task {args.task} conflicts with task '{file_config['task']}' in {args.config}")
    task = get_task(name)
    config = resolve(task.default_config(), file_config, _flags(args), args.set, where=args.config or "config")
    config["task"] = name
    expansions = parse_expansions(config["run"]["E"])
    variants = parse_variants(config["run"]["variants"], expansions)
    seeds = parse_seeds(config["run"]["seeds"])
    axes, axis_keys = _axes(task, config, sweep)
    return config, task, plan_cells(variants, seeds, axes), axis_keys


def _gpus_requested(args: argparse.Namespace) -> tuple[int, ...]:
    """GPUs asked for with ``--ddp N`` (0..N-1) or ``--device 0,1,...`` (empty if neither)."""
    listed = gpu_list(args.device or "")
    if args.ddp and listed and args.ddp != len(listed):
        raise LcdenseError(f"--ddp {args.ddp} conflicts with the {len(listed)} GPUs of --device {args.device}")
    return listed or (tuple(range(args.ddp)) if args.ddp and args.ddp > 1 else ())


def _check_before_relaunch(args: argparse.Namespace, config: dict[str, Any], task: Task, gpus: tuple[int, ...]) -> None:
    """Errors the ranks would each print (with torchrun's traceback after them), said once here."""
    count = visible_gpus()
    device = args.device or "auto"
    if (gpu_list(device) or device.startswith("cuda") or (device == "auto" and count)) and max(gpus) >= count:
        raise LcdenseError(f"{len(gpus)} GPUs asked for, {count} visible; use fewer, or --device cpu for gloo ranks")
    if not args.resume and config["run"]["name"]:
        refuse_existing_run(config["run"]["out"], task.name, config["run"]["name"])


def _relaunch_under_torchrun(args: argparse.Namespace, ranks: int) -> int:
    """Run this same command as ``ranks`` data-parallel processes through torchrun."""
    argv, env, skip = [], dict(os.environ), False
    for item in args.argv:
        if skip:
            skip = False
        elif item in ("--ddp", "--device"):
            skip = True
        elif not item.startswith(("--ddp=", "--device=")):
            argv.append(item)
    if gpus := gpu_list(args.device or ""):
        visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[i] if visible else str(i) for i in gpus)  # indices as torch sees them
        argv += ["--device", "cuda"]
    elif args.device:
        argv += ["--device", args.device]
    return subprocess.run(torchrun_command(ranks, argv), env=env).returncode


def launch(args: argparse.Namespace, sweep: dict[str, list[Any]]) -> int:
    """Start (or resume) a run whose grid is the variants × seeds × ``sweep`` axes.

    ``--ddp N`` re-runs the command under torchrun; under torchrun rank 0 creates the run
    directory and every rank trains each cell on its shard of the data. ``--executor`` hands the
    cells to submitit jobs instead of running them here.
    """
    if args.resume:
        run_dir: Path | None = Path(args.resume)
        config, task, cells, axis_keys = load_run(run_dir)
        config["run"]["quiet"] = bool(args.quiet or config["run"].get("quiet"))
    else:
        run_dir = None
        config, task, cells, axis_keys = _new_run(args, sweep)
    gpus = _gpus_requested(args)
    if getattr(args, "dry_run", False):
        return _dry_run(task, config, cells, axis_keys, ranks=len(gpus) or 1)
    if gpus and not launched_by_torchrun():
        if task.data_parallel is None:
            raise LcdenseError(f"task '{task.name}' does not support data-parallel training; drop --ddp/--device list")
        if getattr(args, "executor", None):
            raise LcdenseError("--ddp runs one machine's GPUs; with --executor use --gpus-per-job instead")
        check_global_batch(config, len(gpus))
        if task.data_parallel == "torchrun":
            _check_before_relaunch(args, config, task, gpus)
            return _relaunch_under_torchrun(args, len(gpus))
        if args.device == "cpu" or not visible_gpus():
            raise LcdenseError(f"task '{task.name}' trains data-parallel through its framework's own launcher, "
                               "which needs CUDA GPUs; none is visible here")
        config["run"]["device"] = ",".join(map(str, gpus))  # the task's framework launches its own workers
    cache_dir = Path(config["run"]["cache_dir"] or Path(config["run"]["out"]) / ".cache").resolve()
    if getattr(args, "executor", None):  # the jobs pick their devices; this machine may have no GPU
        if run_dir is None:
            run_dir = new_run_dir(config["run"]["out"], task.name, config["run"]["name"])
            save_run_config(run_dir, config, cells, axis_keys, task)
        cache_dir.mkdir(parents=True, exist_ok=True)
        return _submit(args, task, config, run_dir, cells, cache_dir)
    world, device = setup_world(config)
    if run_dir is None:
        run_dir = world.on_main(lambda: new_run_dir(config["run"]["out"], task.name, config["run"]["name"]))
        if world.is_main:
            save_run_config(run_dir, config, cells, axis_keys, task)
    if world.is_main:
        cache_dir.mkdir(parents=True, exist_ok=True)
    if world.is_main and not config["run"]["quiet"]:
        print(f"lcdense: {task.name}: {len(cells)} cell(s) -> {run_dir}" + (f", {world.size} ranks each" if world.active else ""))
    execute(task, config, run_dir, cells, axis_keys, cache_dir, world, device)
    if world.is_main:
        finish(run_dir, task, config)
    return 0


def _dry_run(task: Task, config: dict[str, Any], cells: list[CellSpec], axis_keys: dict[str, str], ranks: int) -> int:
    """``--dry-run``: print and save the cells' estimates (lcdense.dry_run); trains nothing."""
    from ..dry_run import dry_run, report

    cache_dir = Path(config["run"]["cache_dir"] or Path(config["run"]["out"]) / ".cache").resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    report(dry_run(task, config, cells, axis_keys, cache_dir, ranks), config["run"]["out"], task.name)
    return 0


def finish(run_dir: Path, task: Task, config: dict[str, Any]) -> None:
    """Filter analysis (unless disabled), then results.csv, summary and figures; prints the table."""
    sections = []
    if config["run"].get("analysis", True):
        from ..analysis import analyze_run

        sections.append(analyze_run(run_dir))
    table = write_report(run_dir, task.primary_metric, task.higher_is_better, sections)
    print(table)
    print(f"results: {run_dir}/summary.md, results.csv, summary.json, figures/")


def _submit(args: argparse.Namespace, task: Task, config: dict[str, Any], run_dir: Path, cells: list[CellSpec],
            cache_dir: Path) -> int:
    """Hand the unfinished cells to submitit; wait (local, debug, or --wait) and report."""
    from .. import executors

    name = args.executor
    settings = executors.executor_settings(name, args.executor_config, {
        "partition": args.partition, "gpus_per_job": args.gpus_per_job, "timeout_min": args.time_limit,
        "array_parallelism": args.array_parallelism})
    if int(settings["gpus_per_job"]) > 1 and task.data_parallel is None:
        raise LcdenseError(f"task '{task.name}' trains on one device; use --gpus-per-job 1")
    task.prepare_data(config, cache_dir)  # the embedded dataset is generated once, before any job starts
    pending = [c for c in cells if cell_record(run_dir / "cells" / c.id) is None]
    todo, notes = executors.cells_to_submit(run_dir, pending, name)
    for note in notes:
        print(f"lcdense: {note}")
    print(f"lcdense: {task.name}: {len(cells)} cell(s), {len(cells) - len(pending)} finished, "
          f"{len(todo)} to run on '{name}' -> {run_dir}")
    submitted = executors.submit(run_dir, todo, cache_dir, name, settings,
                                 task_per_gpu=task.data_parallel != "own") if todo else []
    print(executors.describe(submitted))
    if name == "slurm" and not args.wait:
        print(f"lcdense: jobs write into {run_dir}/cells; when they finish: lcdense report {run_dir}\n"
              f"         re-submit missing or failed cells: lcdense sweep --resume {run_dir} --executor slurm")
        return 0
    failures = executors.wait(submitted)
    for line in failures:
        print(f"lcdense: job failed: {line}", file=sys.stderr)
    if any(cell_record(run_dir / "cells" / c.id) for c in cells):
        finish(run_dir, task, config)
    if failures:
        raise LcdenseError(f"{len(failures)} job(s) failed; finished cells are kept. Run the missing ones again: "
                           f"lcdense sweep --resume {run_dir} --executor {name}")
    return 0


def run(args: argparse.Namespace) -> int:
    return launch(args, {})
