"""Events of a run, delivered to callbacks: run start, cell start, epoch end, cell end, run end.

The runner emits them; task training loops (the shared :func:`lcdense.train_loop` and the
detection trainer) report their epochs through :meth:`lcdense.Cell.epoch_end`. A callback is any
object with some of the ``on_<event>`` methods of :class:`Callback`; the console output, the saved
filters, the filter analysis and the report (``results.csv``, ``summary.*``, figures) are
callbacks themselves, and a logger or experiment tracker plugs in the same way::

    class PrintLoss(lcdense.Callback):
        def on_epoch_end(self, event):
            print(event.cell_id, event.epoch, event.metrics["train_loss"])

    lcdense.run("classification", callbacks=[PrintLoss()])

Events are emitted on the process that writes the run (rank 0 under data parallelism).

>>> seen = []
>>> class Recorder(Callback):
...     def on_epoch_end(self, event):
...         seen.append((event.cell_id, event.epoch))
>>> Events([Recorder()]).emit(EpochEnd(cell_id="learnable__seed0", epoch=1, metrics={"train_loss": 0.5}))
>>> seen
[('learnable__seed0', 1)]
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .rundir import RunDir

if TYPE_CHECKING:
    from torch import nn

    from .records import CellRecord, PlanRecord, SummaryRecord
    from .variants import CellSpec


@dataclass
class RunStart:
    """The run directory exists, its config and plan are written; no cell has run yet here.

    Attributes:
        run_dir: The run directory.
        config: The run's resolved config.
        plan: The run's plan (``plan.json``).
    """

    run_dir: Path
    config: dict[str, Any]
    plan: PlanRecord


@dataclass
class CellStart:
    """Cell ``index`` (1-based) of ``total`` is about to train (or is skipped: finished earlier).

    Attributes:
        run_dir: The run directory.
        cell: The cell's variant, seed and sweep point.
        index: The cell's position among this invocation's cells, from 1.
        total: The number of cells.
        skipped: The cell finished in an earlier invocation and will not train again.
    """

    run_dir: Path
    cell: CellSpec
    index: int
    total: int
    skipped: bool = False  # finished in an earlier invocation: it will not train again


@dataclass
class EpochEnd:
    """A task finished one training epoch of a cell; ``metrics`` is that epoch's history entry.

    Attributes:
        cell_id: The cell's id (e.g. ``"learnable__seed0"``).
        epoch: The finished epoch, counted from 1.
        metrics: The epoch's history entry (``epoch``, losses, metrics).
        variant: The cell's variant.
        seed: The cell's seed.
        epochs: The epochs the cell trains in all, or None if not reported.
    """

    cell_id: str
    epoch: int
    metrics: dict[str, Any]
    variant: str = ""
    seed: int = 0
    epochs: int | None = None


@dataclass
class CellEnd:
    """A cell trained, passed its digest check and was evaluated. Called before ``cell.json`` is
    written (a callback may add files to ``cell_dir``; the cell counts as finished once its record
    is on disk). ``model`` is the trained model.

    Attributes:
        run_dir: The run directory.
        cell_dir: The cell's folder.
        record: The cell's record (``cell.json`` to be).
        model: The trained model.
    """

    run_dir: Path
    cell_dir: Path
    record: CellRecord
    model: nn.Module


@dataclass
class RunEnd:
    """Every cell of this invocation finished. ``records`` holds every finished cell of the run;
    callbacks that write part of the report append Markdown to ``sections`` (``summary.md``
    gets them), and the report callback sets ``summary``.

    Attributes:
        run_dir: The run directory.
        config: The run's resolved config.
        plan: The run's plan.
        records: Every finished cell of the run.
        sections: Markdown sections for ``summary.md``, appended by callbacks.
        summary: The run's summary, set by the report callback (None before).
        table: The summary's Markdown table, set by the report callback.
    """

    run_dir: Path
    config: dict[str, Any]
    plan: PlanRecord
    records: list[CellRecord]
    sections: list[str] = field(default_factory=list)
    summary: SummaryRecord | None = None
    table: str = ""


@dataclass
class SuiteEnd:
    """An evaluation suite finished on a cell after its run (``lcdense evaluate``); its numbers are in
    ``record.metrics`` as ``<suite>/<name>`` and ``record.suites[suite]`` says what it did. Called after
    ``cell.json`` was written.

    Attributes:
        run_dir: The run directory.
        cell_dir: The cell's folder.
        record: The cell's record, the suite's results in it.
        suite: The suite's name.
    """

    run_dir: Path
    cell_dir: Path
    record: CellRecord
    suite: str

    @property
    def metrics(self) -> dict[str, float]:
        """The suite's numbers, as ``<suite>/<name>`` keys."""
        return {k: v for k, v in self.record.metrics.items() if k.startswith(f"{self.suite}/")}


class Callback:
    """Base class of run callbacks: override the events you need (each does nothing here)."""

    def on_run_start(self, event: RunStart) -> None: ...
    def on_cell_start(self, event: CellStart) -> None: ...
    def on_epoch_end(self, event: EpochEnd) -> None: ...
    def on_cell_end(self, event: CellEnd) -> None: ...
    def on_run_end(self, event: RunEnd) -> None: ...
    def on_suite_end(self, event: SuiteEnd) -> None: ...


_METHOD = {RunStart: "on_run_start", CellStart: "on_cell_start", EpochEnd: "on_epoch_end", CellEnd: "on_cell_end",
           RunEnd: "on_run_end", SuiteEnd: "on_suite_end"}


class Events:
    """Delivers each event to the callbacks, in their order (an exception stops the run). What a
    callback prints reaches the console of the time the Events were made, also while a cell's
    framework output is captured (:mod:`lcdense.engine.capture`)."""

    def __init__(self, callbacks: Iterable[Any] = ()) -> None:
        self.callbacks = list(callbacks)
        self.stdout, self.stderr = sys.stdout, sys.stderr

    def print(self, text: str) -> None:
        """Print ``text`` to the console (also while framework output is captured)."""
        print(text, file=self.stdout, flush=True)

    def emit(self, event: RunStart | CellStart | EpochEnd | CellEnd | RunEnd | SuiteEnd) -> None:
        method = _METHOD[type(event)]
        with contextlib.redirect_stdout(self.stdout), contextlib.redirect_stderr(self.stderr):
            for callback in self.callbacks:
                handler = getattr(callback, method, None)
                if handler is not None:
                    handler(event)


class ConsoleLog(Callback):
    """What a run prints: a progress bar per cell (epochs and a metric; only on a terminal), a line
    per finished cell, and at the end the gap table and where the files are. ``quiet``: only the
    table; ``verbose``: a line per epoch instead of the bar (the framework output is shown too, see
    :mod:`lcdense.engine.capture`). It writes to ``stream`` (default: ``sys.stdout`` when created), which
    the capture of a cell's framework output leaves alone.

    >>> import io
    >>> short_metrics({"epoch": 3, "train_loss": 0.51234, "lr": 0.1, "top1": 0.5}, "top1")
    'train_loss=0.5123 top1=0.5'
    """

    def __init__(self, quiet: bool = False, verbose: bool = False, stream: Any = None) -> None:
        self.quiet, self.verbose = quiet, verbose
        self.stream = stream or sys.stdout
        self.primary, self.label, self.bar = "", "", None

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def on_run_start(self, event: RunStart) -> None:
        self.primary = event.plan.primary_metric

    def on_cell_start(self, event: CellStart) -> None:
        if self.quiet:
            return
        self.label = f"[{event.index}/{event.total}] {event.cell.id}"
        if event.skipped:
            self._print(f"{self.label}: finished earlier, skipped")
        elif self.verbose:
            self._print(self.label)
        elif getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(desc=self.label, unit="epoch", file=self.stream, leave=False, dynamic_ncols=True,
                            bar_format="{desc} {n_fmt}/{total_fmt} epochs |{bar}| {elapsed}<{remaining} {postfix}")

    def on_epoch_end(self, event: EpochEnd) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.total = event.epochs
            self.bar.n = event.epoch
            self.bar.set_postfix_str(short_metrics(event.metrics, self.primary))  # refreshes
        elif self.verbose:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in event.metrics.items()
                              if k != "epoch" and isinstance(v, (int, float)))
            of = f"/{event.epochs}" if event.epochs else ""
            self._print(f"  {event.variant} s{event.seed} epoch {event.epoch}{of}: {shown}")

    def on_cell_end(self, event: CellEnd) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if not self.quiet:
            record, primary = event.record, event.record.primary_metric
            self._print(f"{self.label}  {primary}={record.metrics.get(primary, float('nan')):.4f}  "
                        f"{record.costs['wall_time_s']:.1f}s  frozen digest unchanged")

    def on_run_end(self, event: RunEnd) -> None:
        if event.table:
            self._print(event.table)
            self._print(f"results: {RunDir(event.run_dir).summary_md}, results.csv, summary.json, figures/; "
                        f"per cell: cells/<id>/history.csv, train.log")


def short_metrics(metrics: dict[str, Any], primary: str) -> str:
    """The few numbers a progress bar shows: the training losses and the primary metric."""
    keys = [k for k in metrics if k.endswith("loss") and not k.startswith("val")][:3]
    keys += [k for k in (primary, f"val_{primary}") if k in metrics][:1]
    return " ".join(f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics[k], (int, float)))


__all__ = ["Callback", "CellEnd", "CellStart", "ConsoleLog", "EpochEnd", "Events", "RunEnd", "RunStart", "SuiteEnd",
           "short_metrics"]
