"""The paper's experiments: list them with their published numbers, or run one and compare.

Example: ``lcdense paper list``; ``lcdense paper run table1-cifar10 --data /data/cifar10``;
``lcdense paper run table1-svhn --scale smoke`` (minutes on a CPU, embedded data, never compared).
"""
from __future__ import annotations

import argparse
import json

from ..api.paper import run_experiment
from ..base.errors import LcdenseError
from ..paper import SCALES, as_dict, experiments, format_list, get_experiment


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="paper_command", metavar="list|run")
    listing = sub.add_parser("list", help="every experiment: source, dataset, model, grid, recipe, published numbers")
    listing.add_argument("--json", action="store_true", help="print the experiments as JSON")
    run = sub.add_parser("run", help="run one experiment through the sweep runner and compare with the paper")
    run.add_argument("experiment", help="experiment name (see lcdense paper list)")
    run.add_argument("--scale", choices=SCALES, default="full",
                     help="full: the paper's recipe and grid; smoke: the same grid shortened, on the embedded data "
                          "without --data (labelled smoke, never compared)")
    run.add_argument("--data", help="dataset root on disk")
    run.add_argument("--seeds", help="seeds instead of the paper's, e.g. 0,1 or a count (recorded as a change)")
    run.add_argument("--delta", type=float, help="equivalence margin in the paper's unit (points for accuracies), "
                                                 "declared before the run: the report tests equivalence within it "
                                                 "(TOST); without it no equivalence is claimed")
    run.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    run.add_argument("--out", help="output root (default: runs)")
    run.add_argument("--name", help="run name (default: EXPERIMENT-SCALE-TIMESTAMP); an existing name is refused")
    run.add_argument("--no-analysis", action="store_true", help="skip the filter analysis at the end")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-epoch lines")


def run(args: argparse.Namespace) -> int:
    if args.paper_command == "list":
        if args.json:
            print(json.dumps([as_dict(e) for e in experiments().values()], indent=2))
        else:
            print(format_list())
        return 0
    if args.paper_command == "run":
        get_experiment(args.experiment)  # an unknown name fails before anything else
        run_experiment(args.experiment, scale=args.scale, data=args.data, out=args.out, run_name=args.name,
                       device=args.device, seeds=args.seeds, quiet=args.quiet, analysis=not args.no_analysis,
                       delta=args.delta)
        return 0
    raise LcdenseError("say what to do: lcdense paper list, or lcdense paper run NAME (see 'lcdense paper --help')")
