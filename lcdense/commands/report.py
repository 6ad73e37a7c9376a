"""Re-render a run's results.csv, summary.json, summary.md and figures from its cell files alone.

Example: ``lcdense report runs/classification/20261126-170000``
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import LcdenseError
from ..summary import write_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory (runs/TASK/NAME)")
    p.add_argument("--no-analysis", action="store_true", help="skip re-running the filter analysis")


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    plan_path = run_dir / "plan.json"
    if not plan_path.is_file():
        raise LcdenseError(f"{run_dir} is not an lcdense run directory (no plan.json); check the path")
    plan = json.loads(plan_path.read_text())
    sections = []
    if not args.no_analysis and any((run_dir / "cells").glob("*/filters.pt")):
        from ..analysis import analyze_run

        sections.append(analyze_run(run_dir))
    print(write_report(run_dir, plan["primary_metric"], plan["higher_is_better"], sections))
    return 0
