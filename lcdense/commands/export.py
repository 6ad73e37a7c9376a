"""Write a finished cell's folded model as a plain checkpoint of its own library (timm, torchvision, smp, ultralytics).

Example: ``lcdense export runs/classification/20261126-170000 --cell lc-frozen@8__seed0``
"""
from __future__ import annotations

import argparse

from ..api import load


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory (runs/TASK/NAME)")
    p.add_argument("--cell", required=True, help="the cell's id (its folder under cells/)")
    p.add_argument("--weights", default=None,
                   help="model (final), best or ema, where the cell keeps them (default: its primary weights)")
    p.add_argument("--out", default=None, help="folder to write (default: cells/ID/export/WEIGHTS; never overwritten)")


def run(args: argparse.Namespace) -> int:
    files = load(args.run_dir).export(args.cell, weights=args.weights, out=args.out)
    for library, path in files.items():
        print(f"{library}: {path}")
    return 0
