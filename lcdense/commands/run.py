"""Train baseline, frozen and LC variants of a task and report the frozen-vs-learnable gap.

Example: ``lcdense run --task classification --E 8 --seeds 0,1,2``
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import load_yaml, resolve
from ..errors import LcdenseError
from ..runner import execute, load_plan, new_run_dir, plan_cells, save_run_config
from ..summary import write_report
from ..task import Task, get_task, list_tasks
from ..variants import parse_expansions, parse_seeds, parse_variants
from .common import positive_int

# CLI flag → dotted config key
FLAG_KEYS = {"E": "run.E", "variants": "run.variants", "seeds": "run.seeds", "device": "run.device",
             "out": "run.out", "name": "run.name", "epochs": "train.epochs", "batch_size": "train.batch_size",
             "data": "data.root", "dataset": "data.dataset", "model": "model.name", "workers": "data.workers"}


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
    p.add_argument("--download", action="store_true",
                   help="fetch the official dataset archive into --data first (tasks that support it); "
                        "without it nothing is ever downloaded")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    p.add_argument("--out", help="output root (default: runs); the run goes to OUT/TASK/NAME")
    p.add_argument("--name", help="run name (default: a timestamp); an existing name is refused")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config value, e.g. train.lr=0.05")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (other settings come from it)")
    p.add_argument("--no-analysis", action="store_true", help="skip the filter analysis at the end")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-epoch lines")


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    for attr, key in FLAG_KEYS.items():
        value = getattr(args, attr, None)
        if value is not None:
            section, name = key.split(".")
            flags.setdefault(section, {})[name] = value
    if args.quiet:
        flags.setdefault("run", {})["quiet"] = True
    if args.download:
        flags.setdefault("data", {})["download"] = True
    if args.no_analysis:
        flags.setdefault("run", {})["analysis"] = False
    return flags


def _axes(task: Task, config: dict[str, Any], requested: dict[str, list[Any]]) -> tuple[dict[str, list[Any]], dict[str, str]]:
    axis_keys = {"init": "conversion.init", **task.sweep_axes}
    for axis in requested:
        if axis not in axis_keys:
            raise LcdenseError(f"task '{task.name}' cannot sweep '{axis}'; it can sweep: E, {', '.join(sorted(axis_keys))}")
    return requested, {a: axis_keys[a] for a in requested}


def launch(args: argparse.Namespace, sweep: dict[str, list[Any]]) -> int:
    """Start (or resume) a run whose grid is the variants × seeds × ``sweep`` axes."""
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise LcdenseError(f"{run_dir} is not an lcdense run directory (no config.yaml); check the path")
        config = load_yaml(run_dir / "config.yaml")
        config["run"]["quiet"] = bool(args.quiet or config["run"].get("quiet"))
        task = get_task(config["task"])
        cells, axis_keys = load_plan(run_dir)
    else:
        file_config = load_yaml(args.config) if args.config else {}
        name = args.task or file_config.get("task")
        if not name:
            raise LcdenseError(f"say which task to run: --task NAME (one of: {', '.join(list_tasks())})")
        if args.task and file_config.get("task") not in (None, args.task):
            raise LcdenseError(f"--task {args.task} conflicts with task '{file_config['task']}' in {args.config}")
        task = get_task(name)
        config = resolve(task.default_config(), file_config, _flags(args), args.set,
                         where=args.config or "config")
        config["task"] = name
        expansions = parse_expansions(config["run"]["E"])
        variants = parse_variants(config["run"]["variants"], expansions)
        seeds = parse_seeds(config["run"]["seeds"])
        axes, axis_keys = _axes(task, config, sweep)
        cells = plan_cells(variants, seeds, axes)
        run_dir = new_run_dir(config["run"]["out"], name, config["run"]["name"])
        save_run_config(run_dir, config, cells, axis_keys, task)
    cache_dir = Path(config["run"]["cache_dir"] or Path(config["run"]["out"]) / ".cache")
    cache_dir.mkdir(parents=True, exist_ok=True)
    if not config["run"]["quiet"]:
        print(f"lcdense: {task.name}: {len(cells)} cell(s) -> {run_dir}")
    execute(task, config, run_dir, cells, axis_keys, cache_dir)
    sections = []
    if config["run"].get("analysis", True):
        from ..analysis import analyze_run

        sections.append(analyze_run(run_dir))
    table = write_report(run_dir, task.primary_metric, task.higher_is_better, sections)
    print(table)
    print(f"results: {run_dir}/summary.md, results.csv, summary.json, figures/")
    return 0


def run(args: argparse.Namespace) -> int:
    return launch(args, {})
