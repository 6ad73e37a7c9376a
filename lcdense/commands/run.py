"""Train baseline, frozen and LC variants of a task and report the frozen-vs-learnable gap.

Example: ``lcdense run --task classification --E 8 --seeds 0,1,2``

This command only turns its arguments into the settings of :func:`lcdense.run` and calls it.
"""
from __future__ import annotations

import argparse
from typing import Any

from ..api import SHORT_KEYS, dry_run
from ..api import run as run_api
from ..core.convert import variant_kinds
from ..engine.config import parse_assignment
from ..engine.task import list_tasks
from ..engine.trackers import TRACKERS, logger_names
from .common import positive_int

#: Flags that become settings (their names are the API's short names, :data:`lcdense.api.SHORT_KEYS`).
SETTING_FLAGS: tuple[str, ...] = ("E", "variants", "seeds", "epochs", "batch_size", "data", "dataset", "model",
                                  "workers", "device", "out", "name", "memory")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", help=f"task name (built in: {', '.join(list_tasks())})")
    p.add_argument("--config", help="YAML config (e.g. configs/classification/cifar10_resnet_lc_20_16.yaml)")
    p.add_argument("--E", help="LC expansion(s), e.g. 8 or 1,8,64")
    p.add_argument("--variants", help=f"subset of {','.join(variant_kinds())} (or lc-frozen@E)")
    p.add_argument("--seeds", help="seeds, e.g. 0,1,2, or a count such as 3")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--data", help="dataset root on disk (default: the task's embedded dataset)")
    p.add_argument("--dataset", help="dataset name, where the task has several")
    p.add_argument("--model", help="model name, where the task has several")
    p.add_argument("--workers", type=int, help="data loader worker processes")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, or a GPU list 0,1,2,3 (data-parallel, like --ddp 4)")
    p.add_argument("--ddp", type=positive_int, metavar="N",
                   help="train each cell data-parallel on N GPUs (with --device cpu: N gloo ranks) via torchrun")
    p.add_argument("--out", help="output root (default: runs); the run goes to OUT/TASK/NAME")
    p.add_argument("--name", help="run name (default: a timestamp); an existing name is refused")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config value, e.g. train.lr=0.05")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (other settings come from it)")
    p.add_argument("--no-analysis", action="store_true", help="skip the filter analysis at the end")
    p.add_argument("--allow-diverged", action="store_true",
                   help="exit 0 even if a cell's loss or metrics went non-finite (it is still marked 'diverged' "
                        "and left out of the gaps; run.allow_diverged)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-cell lines")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="per-epoch lines and the task framework's own output (ultralytics, pycocotools), "
                        "which otherwise only goes to cells/<id>/train.log")
    p.add_argument("--logger", action="append", default=[], metavar="NAME",
                   help=f"stream to an experiment tracker: {', '.join(TRACKERS.names())} (repeat or comma-separate; "
                        "each needs its extra, e.g. pip install \"lcdense[tensorboard]\"; run.loggers)")
    p.add_argument("--dry-run", action="store_true",
                   help="predict each cell's memory and FLOPs (fake tensors, nothing allocated or trained)")
    p.add_argument("--memory", help="memory to plan for and refuse above, e.g. 80GiB (run.max_memory; "
                                    "default: the device's)")


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The API settings of the parsed flags: the flags given, then every ``--set``, in order."""
    out: dict[str, Any] = {SHORT_KEYS[flag]: getattr(args, flag) for flag in SETTING_FLAGS
                           if getattr(args, flag, None) is not None}
    if args.quiet:
        out["run.quiet"] = True
    if args.no_analysis:
        out["run.analysis"] = False
    if args.verbose:
        out["run.verbose"] = True
    if args.allow_diverged:
        out["run.allow_diverged"] = True
    if args.logger:
        out["run.loggers"] = [name for value in args.logger for name in logger_names(value)]
    for assignment in args.set:
        key, value = parse_assignment(assignment)
        out.pop(key, None)  # a later setting of the same key wins, in its place
        out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    if args.dry_run:
        dry_run(args.task, config=args.config, ddp=args.ddp, **settings(args))
        return 0
    run_api(args.task, config=args.config, resume=args.resume, ddp=args.ddp, **settings(args))
    return 0
