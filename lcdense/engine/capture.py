"""A cell's framework output goes to ``cells/<id>/train.log``, not to the console.

While a cell trains and is evaluated, :func:`framework_output` sends what libraries print or log
(ultralytics' trainer and validator, pycocotools' "Loading and preparing results...", warnings)
to the cell's ``train.log``, appended, so that lcdense's own progress is all the console shows;
``show`` (``--verbose``) copies it to the console as well. lcdense's console output
(:class:`lcdense.engine.events.ConsoleLog`) writes to the stream it was given, so it is not captured.
What bypasses Python's ``sys.stdout``/``sys.stderr`` (C libraries, worker processes) is not caught.

>>> import logging, pathlib, tempfile
>>> log = pathlib.Path(tempfile.mkdtemp()) / "train.log"
>>> with framework_output(log, show=False):
...     print("Loading and preparing results...")
>>> log.read_text()
'Loading and preparing results...\\n'
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


class _Tee(io.TextIOBase):
    """A text stream writing to the log file and, when shown, to the console stream too."""

    def __init__(self, log: TextIO, console: TextIO | None) -> None:
        self.log, self.console = log, console

    def write(self, text: str) -> int:
        self.log.write(text)
        if self.console is not None:
            self.console.write(text)
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        if self.console is not None:
            self.console.flush()

    def isatty(self) -> bool:
        return False


def _console_handlers() -> list[logging.StreamHandler]:
    """Every logging handler that writes to an open stream other than a file (the console's). A
    handler left on a closed stream can write nothing, and moving it would flush that stream."""
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger))]
    return [h for logger in loggers for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
            and not getattr(h.stream, "closed", False)]


@contextlib.contextmanager
def framework_output(path: Path | None, show: bool) -> Iterator[None]:
    """Inside the block, ``sys.stdout``, ``sys.stderr`` and the console logging handlers write to
    ``path`` (appended; None: nowhere), and to the console as well when ``show``. A console
    handler made inside the block (by a library imported there) writes to the console afterwards.

    Args:
        path: The log file, appended to; None discards the output.
        show: Also copy the output to the console.

    Yields:
        None, once; the redirection ends with the block.
    """
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(path, "a", encoding="utf-8") if path else open(os.devnull, "w"))  # noqa: SIM115
        console = {"out": sys.stdout, "err": sys.stderr}
        out = _Tee(log, console["out"] if show else None)
        err = _Tee(log, console["err"] if show else None)
        handlers = [(h, h.stream) for h in _console_handlers()]
        try:  # every handler is put back, even if moving a later one failed
            for handler, stream in handlers:
                handler.setStream(err if stream is sys.stderr or stream is sys.__stderr__ else out)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                yield
        finally:
            for handler, stream in handlers:
                handler.setStream(stream)
            for handler in _console_handlers():  # made inside the block (a library imported there)
                if handler.stream is out or handler.stream is err:
                    handler.setStream(console["out"] if handler.stream is out else console["err"])
            log.flush()


__all__ = ["framework_output"]
