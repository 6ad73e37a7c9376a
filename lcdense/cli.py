"""The ``lcdense`` command line. Each subcommand lives in its own module with
``add_arguments(parser)`` and ``run(args) -> int``, which turns the arguments into a call of the
Python API (:mod:`lcdense.api`); this file only wires them up.

User errors (:class:`LcdenseError`, missing files, bad values) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys

from .base.errors import LcdenseError

# subcommand: (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("lcdense.commands.convert", "print the conversion report of a torchvision/timm model"),
    "run": ("lcdense.commands.run", "train baseline, frozen and LC variants of a task and report the gap"),
    "sweep": ("lcdense.commands.sweep", "run a grid over E (or width, depth, kernel size, init, LC-Block op) as one resumable run"),
    "paper": ("lcdense.commands.paper", "the paper's experiments: list them with their published numbers, run one"),
    "evaluate": ("lcdense.commands.evaluate", "evaluate a run's trained models after the fact: corruptions, adversarial, cifar10.1"),
    "report": ("lcdense.commands.report", "re-render summary and plots of a run directory from its files"),
    "export": ("lcdense.commands.export", "write a finished cell's folded model as its own library's checkpoint"),
    "analyze": ("lcdense.commands.analyze", "filter variance entropy, spatial variance, filter grids and LC bank diagnostics of a run"),
    "bench": ("lcdense.commands.bench", "time and memory of LC-Block implementations vs the baseline"),
    "tasks": ("lcdense.commands.tasks", "list the registered tasks (built-in and from entry points)"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise LcdenseError(f"{self.prog}: {message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lcdense",
        description="How much do CNNs lose (or gain) when their spatial convolution filters are never learned?",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"lcdense {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=module.__doc__.strip().splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's kill, ``kill PID``): stopped like Ctrl-C, with its own exit code."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lcdense`` console script. SIGTERM stops it as Ctrl-C does (finished
    cells and the last epoch checkpoint are kept) and exits with 143; Ctrl-C exits with 130."""
    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (an embedding application): leave its handler alone
        pass
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = build_parser().parse_args(argv)
        if not getattr(args, "_run", None):
            build_parser().print_help()
            return 2
        return int(args._run(args) or 0)
    except LcdenseError as exc:
        print(f"lcdense: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        again = ("run the same lcdense evaluate again to resume" if (argv or [""])[0] == "evaluate"
                 else "continue with --resume RUN_DIR")
        print(f"lcdense: {what}; finished cells are saved, {again}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
