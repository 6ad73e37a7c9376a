"""Fetch an official classification dataset archive once, before any run (runs never download).

Nothing reaches the network unless ``--download`` is given: without it the script only checks
that the official files are already in ``root`` (and says how to fetch them if they are not).

Example::

    python scripts/fetch_dataset.py cifar10 /data/cifar10 --download
    lcdense run --task classification --dataset cifar10 --data /data/cifar10
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lcdense import LcdenseError


def fetch(dataset: str, root: Path, *, download: bool = False) -> None:
    """Make sure the official files of ``dataset`` are in ``root``, with torchvision's readers.
    They check what is there first; only with ``download`` do they fetch what is missing from the
    network. It lives here, in the setup script, so that nothing installed with lcdense can download."""
    import torchvision.datasets as tvd

    readers = {"cifar10": lambda s: tvd.CIFAR10(root, train=s, download=download),
               "cifar100": lambda s: tvd.CIFAR100(root, train=s, download=download),
               "svhn": lambda s: tvd.SVHN(root, split="train" if s else "test", download=download),
               "fashion-mnist": lambda s: tvd.FashionMNIST(root, train=s, download=download)}
    if dataset not in readers:
        raise LcdenseError(f"no official archive to fetch for '{dataset}'; use one of: {', '.join(readers)}")
    for split in (True, False):
        try:
            readers[dataset](split)
        except RuntimeError:  # torchvision: "Dataset not found or corrupted"
            if download:
                raise
            raise LcdenseError(f"{dataset} is not in {root}, or is incomplete; add --download to fetch the "
                               "official archive from the network") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fetch_dataset", description=__doc__.strip().splitlines()[0])
    parser.add_argument("dataset", help="cifar10, cifar100, svhn or fashion-mnist")
    parser.add_argument("root", type=Path, help="directory to unpack into (then pass it to lcdense run --data)")
    parser.add_argument("--download", action="store_true",
                        help="fetch what is missing from the network (without it nothing is downloaded)")
    args = parser.parse_args(argv)
    try:
        fetch(args.dataset, args.root, download=args.download)
    except LcdenseError as exc:
        print(f"fetch_dataset: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.dataset} is in {args.root}; run: lcdense run --task classification --dataset {args.dataset} "
          f"--data {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
