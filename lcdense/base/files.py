"""Atomic file writes: a reader sees the old file or the new one, never half of one.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "a.json"
>>> write_json(path, {"x": 1}); path.read_text()
'{\\n  "x": 1\\n}\\n'
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .errors import LcdenseError

#: The errors of a full disk or an exhausted quota.
FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(LcdenseError):
    """A file could not be written because its disk (or the user's quota) is full; the file it
    would have replaced is intact.

    Attributes:
        path: The file that could not be written.
        needed: The bytes it needs (at least).
        free: The bytes free on its disk when it failed, or None if unknown.
    """

    def __init__(self, path: Path, needed: int, free: int | None, exact: bool) -> None:
        self.path, self.needed, self.free = path, needed, free
        there = f"; {human_bytes(free)} free there" if free is not None else ""
        super().__init__(f"no space left on the disk (or quota) to write {path}: it needs "
                         f"{'' if exact else 'more than '}{human_bytes(needed)}{there}")


def human_bytes(count: int) -> str:
    """``count`` bytes in binary units.

    >>> human_bytes(512), human_bytes(3 * 2**20 + 2**19)
    ('512 B', '3.5 MiB')

    Args:
        count: a number of bytes.

    Returns:
        e.g. ``'3.5 MiB'``.
    """
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@contextlib.contextmanager
def atomic_writer(path: str | Path, size: int | None = None) -> Iterator[BinaryIO]:
    """A binary file whose contents replace ``path`` when the block ends (a temporary file in the
    same directory, then a rename); if the block raises, ``path`` is left as it was. A full disk
    or quota is :class:`DiskFull` (one line: the file and the space it needs).

    Args:
        path: the file to write.
        size: how many bytes will be written, if known (for the message of a full disk).

    Returns:
        A context manager yielding the open temporary file.
    """
    path = Path(path)
    tmp, written = None, 0
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            try:
                yield f
            finally:
                written = f.tell()
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        if exc.errno not in FULL:
            raise
        raise DiskFull(path, size if size is not None else written + 1, _free(path.parent),
                       exact=size is not None) from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)


def _free(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    """Atomically write ``data`` (see :func:`atomic_writer`)."""
    with atomic_writer(path, size=len(data)) as f:
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write UTF-8 ``text``."""
    write_bytes(path, text.encode())


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")
