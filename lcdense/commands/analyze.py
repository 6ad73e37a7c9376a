"""Filter variance entropy, spatial variance, filter grids and LC bank diagnostics of a run.

Example: ``lcdense analyze runs/classification/cifar10-E8`` (also runs at the end of every run).
"""
from __future__ import annotations

import argparse

from ..api import analyze
from ..engine.rundir import RunDir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="directory of an lcdense run, e.g. runs/classification/cifar10-E8")
    p.add_argument("--quiet", "-q", action="store_true", help="do not print the markdown section")


def run(args: argparse.Namespace) -> int:
    section = analyze(args.run_dir)
    if not args.quiet:
        print(section)
    print(f"wrote {RunDir(args.run_dir).analysis_json}, analysis.csv, analysis.md and figures/ "
          f"({section.count('](figures/')} figures)")
    return 0
