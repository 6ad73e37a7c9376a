"""Fetch an official classification dataset archive once, before any run (runs never download).

Example::

    python scripts/fetch_dataset.py cifar10 /data/cifar10
    lcdense run --task classification --dataset cifar10 --data /data/cifar10
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lcdense import LcdenseError


def download(dataset: str, root: Path) -> None:
    """Fetch an official archive into ``root`` with torchvision's fetchers. It lives here, in the
    setup script, so that nothing installed with lcdense can download."""
    import torchvision.datasets as tvd

    fetch = {"cifar10": lambda s: tvd.CIFAR10(root, train=s, download=True),
             "cifar100": lambda s: tvd.CIFAR100(root, train=s, download=True),
             "svhn": lambda s: tvd.SVHN(root, split="train" if s else "test", download=True),
             "fashion-mnist": lambda s: tvd.FashionMNIST(root, train=s, download=True)}
    if dataset not in fetch:
        raise LcdenseError(f"no official archive to fetch for '{dataset}'; use one of: {', '.join(fetch)}")
    for split in (True, False):
        fetch[dataset](split)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fetch_dataset", description=__doc__.strip().splitlines()[0])
    parser.add_argument("dataset", help="cifar10, cifar100, svhn or fashion-mnist")
    parser.add_argument("root", type=Path, help="directory to unpack into (then pass it to lcdense run --data)")
    args = parser.parse_args(argv)
    try:
        download(args.dataset, args.root)
    except LcdenseError as exc:
        print(f"fetch_dataset: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.dataset} is in {args.root}; run: lcdense run --task classification --dataset {args.dataset} "
          f"--data {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
