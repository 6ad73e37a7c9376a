"""Argument types shared by the subcommands."""
from __future__ import annotations

import argparse
from collections.abc import Callable


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``.

    >>> int_at_least(0)("3")
    3
    """
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


#: argparse type: an integer >= 1
positive_int = int_at_least(1)
#: argparse type: an integer >= 0
nonnegative_int = int_at_least(0)


def parse_ints(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated positive integers, e.g. ``3,32,32``."""
    return tuple(positive_int(part.strip()) for part in text.split(",") if part.strip())
