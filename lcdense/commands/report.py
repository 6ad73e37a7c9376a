"""Re-render a run's results.csv, summary.json, summary.md and figures from its cell files alone.

Example: ``lcdense report runs/classification/20261126-170000``
"""
from __future__ import annotations

import argparse

from ..api import report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory (runs/TASK/NAME)")
    p.add_argument("--no-analysis", action="store_true", help="skip re-running the filter analysis")


def run(args: argparse.Namespace) -> int:
    print(report(args.run_dir, analysis=not args.no_analysis).table)
    return 0
