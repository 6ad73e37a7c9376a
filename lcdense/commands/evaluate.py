"""Evaluate every finished cell of a run after the fact: corruptions, adversarial attacks, CIFAR-10.1.

Examples: ``lcdense evaluate runs/classification/demo --suite corruptions,adversarial``;
``lcdense evaluate RUN_DIR --suite corruptions --data /data/CIFAR-10-C``;
``lcdense evaluate RUN_DIR --suite cifar10.1 --data /data/cifar10.1``.
"""
from __future__ import annotations

import argparse

from ..api.evaluate import evaluate
from ..engine.config import parse_assignment
from ..engine.suites import get_suite
from .common import positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory (runs/TASK/NAME) whose cells kept their models")
    p.add_argument("--suite", required=True, help="comma-separated suites: corruptions, adversarial, cifar10.1")
    p.add_argument("--data", action="append", metavar="[SUITE=]PATH",
                   help="files a suite reads in place: CIFAR-10-C / ImageNet-C (corruptions; without it they are "
                        "generated from the validation split), CIFAR-10.1 v6 .npy files (cifar10.1); repeatable")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1")
    p.add_argument("--limit", type=positive_int, help="evaluate the first N validation images only (every suite)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the run's evaluate section, e.g. evaluate.corruptions.names=noise,fog")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


def run(args: argparse.Namespace) -> int:
    settings = dict(parse_assignment(item) for item in args.set)
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    if args.limit:
        settings.update({f"evaluate.{name}.limit": args.limit for name in suites if "limit" in get_suite(name).defaults})
    evaluate(args.run_dir, suites, data=args.data, device=args.device, settings=settings, quiet=args.quiet)
    return 0
