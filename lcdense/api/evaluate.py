"""Evaluate a finished run's trained models after the fact: :func:`evaluate` (``lcdense evaluate``).

Every finished cell's kept model (:meth:`lcdense.RunResult.model`, the weights its primary metric
was measured on) goes through each suite (:mod:`lcdense.engine.suites`); the suite's numbers join
the cell's record as ``<suite>/<name>`` metrics and ``record.suites[<suite>]`` says what it did, so the
report (``summary.md``, its gap tables and intervals, the plots, ``results.csv``) and the trackers
show them next to the primary metric. A cell a suite already evaluated is skipped; a suite
interrupted on a cell resumes from its last finished step (``cells/<id>/suites/<suite>.partial.json``);
each cell's record is rewritten atomically once its suite is done::

    lcdense.evaluate("runs/classification/demo", ["corruptions", "adversarial"])

A run's config can name suites to run at its end: ``evaluate.suites: [corruptions]``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base.errors import LcdenseError
from ..engine.config import RUN_DEFAULTS, apply_overrides, cell_config, merge
from ..engine.events import Events, RunEnd, SuiteEnd
from ..engine.records import CellRecord, read_cell, read_cells, read_plan, write_cell
from ..engine.rundir import CellDir, RunDir, cache_folder
from ..engine.runner import pick_device
from ..engine.suites import Progress, SuiteContext, get_suite, suite_names, suite_settings
from ..engine.task import Cell, get_task
from ..engine.variants import CellSpec, Variant
from .models import cell_model, primary_weights


@dataclass
class Evaluation:
    """What :func:`evaluate` did.

    Attributes:
        run_dir: The run directory.
        done: (cell id, suite, seconds, headline numbers) of each suite run now.
        skipped: (cell id, suite) pairs evaluated earlier.
        notes: Lines the suites added (an attack skipped and why, steps resumed).
        table: The report's Markdown tables, rewritten with the suites' numbers.
    """

    run_dir: Path
    done: list[tuple[str, str, float, dict[str, float]]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    table: str = ""


def suite_data(value: Any, suites: list[str]) -> dict[str, Path]:
    """``--data`` as suite → path: one path for every suite that reads files, or ``SUITE=PATH`` items.

    >>> suite_data(["cifar10.1=/d/c101", "corruptions=/d/CIFAR-10-C"], ["corruptions", "cifar10.1"])["cifar10.1"].as_posix()
    '/d/c101'

    Args:
        value: None, a path, a ``{suite: path}`` dict, or a list of ``SUITE=PATH``/``PATH`` items.
        suites: The suites being run.

    Returns:
        The files each suite reads.
    """
    if value is None:
        return {}
    items = value.items() if isinstance(value, dict) else \
        [item.partition("=")[::2] if "=" in str(item) and str(item).split("=")[0] in suites else (None, item)
         for item in ([value] if isinstance(value, (str, os.PathLike)) else value)]
    out: dict[str, Path] = {}
    for suite, path in items:
        if suite is not None and suite not in suites:
            raise LcdenseError(f"--data names suite '{suite}', which is not being run ({', '.join(suites)})")
        for name in [suite] if suite else [s for s in suites if get_suite(s).data_files]:
            out[name] = Path(str(path)).expanduser()
    return out


def check_suites(task: Any, config: dict[str, Any]) -> None:
    """Refuse (one line) the suites of a config's ``evaluate.suites`` that are unknown, do not apply to
    ``task``, lack the files they need or have unknown settings.

    Args:
        task: The run's task.
        config: The run's config.
    """
    _chosen(task, config, suite_names(config.get("evaluate", {}).get("suites")),
            suite_data(config.get("evaluate", {}).get("data"), suite_names(config.get("evaluate", {}).get("suites"))))


def _chosen(task: Any, config: dict[str, Any], names: list[str], files: dict[str, Path]) -> dict[str, tuple[Any, dict]]:
    chosen = {}
    for name in names:
        suite = get_suite(name)
        why = suite.unsupported(task)
        if why:
            raise LcdenseError(f"suite {name} does not apply to this {task.name} run: {why}")
        if suite.needs_data and name not in files:
            raise LcdenseError(f"suite {name} reads {suite.data_files}: pass --data PATH (nothing is downloaded)")
        chosen[name] = (suite, suite_settings(suite, config))
    return chosen


def evaluate(run_dir: str | os.PathLike, suites: Any, *, data: Any = None, device: str = "auto",
             settings: dict[str, Any] | None = None, quiet: bool = False,
             callbacks: list[Any] | None = None) -> Evaluation:
    """Run evaluation ``suites`` on every finished cell of ``run_dir``; their numbers join the cells' records.

    Args:
        run_dir: A run directory whose cells kept their models.
        suites: Suite names (a list or ``"corruptions,adversarial"``; see :func:`lcdense.list_suites`).
        data: The files suites read (``--data``): a path for every suite that reads files, or
            ``{suite: path}`` / ``["suite=path", ...]``.
        device: Where the models are evaluated (``auto``, ``cpu``, ``cuda``, ``cuda:1``).
        settings: Overrides of the run's ``evaluate`` section for this call (dotted keys such as
            ``{"evaluate.corruptions.limit": 100}`` or ``{"evaluate": {...}}``).
        quiet: Print nothing.
        callbacks: Callbacks told of each suite's end (``on_suite_end``); None: the run's trackers.

    Returns:
        What was evaluated, skipped and noted, and the rewritten report's tables.

    Raises:
        LcdenseError: Not a run directory, no finished cell, an unknown suite or one that does not
            apply to the run's task, a missing file, or a cell whose model cannot be rebuilt.
    """
    from ..engine.trackers import make_loggers

    say = (lambda _m: None) if quiet else (lambda m: print(m, flush=True))
    run = _Run(Path(run_dir))
    names = suite_names(suites)
    if not names:
        raise LcdenseError("name at least one suite: --suite NAME[,NAME] (e.g. corruptions)")
    if not run.cells:
        raise LcdenseError(f"{run.run_dir} has no finished cells to evaluate; run or resume it first")
    task = get_task(run.plan.task)
    config = merge(merge(RUN_DEFAULTS, task.default_config(), strict=False), run.config, strict=False)
    apply_overrides(config, settings or {})
    files = suite_data(data if data is not None else config["evaluate"].get("data"), names)
    chosen = _chosen(task, config, names, files)
    torch_device = pick_device(device)
    events = Events(make_loggers(config) if callbacks is None else callbacks)
    cache_dir = Path(config["run"].get("cache_dir") or cache_folder(config["run"].get("out", "runs"))).resolve()
    prepared: dict[str, Any] = {}
    out = Evaluation(run.run_dir)
    rundir = RunDir(run.run_dir)
    say(f"lcdense evaluate: {task.name} run {run.run_dir}: {len(run.cells)} cell(s) x {', '.join(names)} on {torch_device}")
    for record in run.cells:
        todo = [n for n in names if n not in record.suites]
        out.skipped += [(record.id, n) for n in names if n in record.suites]
        for name in names:
            if name in record.suites:
                say(f"  {record.id} {name}: evaluated earlier, skipped")
        if not todo:
            continue
        spec = CellSpec(Variant(record.kind, record.E), record.seed, record.axes)
        cfg = cell_config(config, spec, run.plan.axis_keys)
        key = json.dumps(cfg["data"], sort_keys=True, default=str)
        if key not in prepared:
            prepared[key] = task.prepare_data(cfg, cache_dir)
        model = cell_model(run.run_dir, record, device=torch_device)
        weights = primary_weights(record)
        cell_dir = rundir.cell(record.id)
        cell = Cell(variant=record.variant, seed=record.seed, init_seed=record.init_seed or record.seed,
                    data_seed=record.data_seed or record.seed, dir=cell_dir.path, device=torch_device,
                    convert=_no_conversion, quiet=True, id=record.id)
        for name in todo:
            suite, suite_cfg = chosen[name]
            progress = Progress(cell_dir.suite_progress(name), {"settings": suite_cfg, "data": str(files.get(name))})
            context = SuiteContext(cell=cell, config=cfg, settings=suite_cfg, data_path=files.get(name),
                                   progress=progress)
            began = time.perf_counter()
            with cell.framework_output():
                result = suite.run(task, model, prepared[key], context)
            seconds = time.perf_counter() - began
            updated = _record(cell_dir, name, result, suite_cfg, weights, seconds, progress.reused, str(torch_device))
            events.emit(SuiteEnd(run_dir=run.run_dir, cell_dir=cell_dir.path, record=updated, suite=name))
            headline = {h: result.metrics[h] for h in result.headline}
            out.done.append((record.id, name, seconds, headline))
            resumed = f", {progress.reused} step(s) resumed" if progress.reused else ""
            say(f"  {record.id} {name}: " + ", ".join(f"{k}={v:.4f}" for k, v in headline.items())
                + f"  ({seconds:.1f}s{resumed})")
            for note in result.notes:
                say(f"  {record.id} {name}: {note}")
                if note not in out.notes:
                    out.notes.append(note)
    if out.done:
        out.table = _report(run, config, events)
        say(out.table)
        say(f"results: {rundir.summary_md}, results.csv, summary.json, figures/")
    return out


@dataclass
class _Run:
    """The run directory's plan, config and finished cells."""

    run_dir: Path

    def __post_init__(self) -> None:
        folder = RunDir(self.run_dir)
        self.plan = read_plan(folder)
        self.config = folder.read_config() if folder.config_yaml.is_file() else {}
        self.cells = read_cells(folder)


def _report(run: _Run, config: dict[str, Any], events: Events) -> str:
    """Rewrite the run's report (and its filter analysis, where cells saved filters) with the suites'
    numbers; the trackers get its gap tables. Returns its Markdown tables."""
    from ..reporting.analysis import FilterAnalysis
    from ..reporting.summary import Report

    analysis = [FilterAnalysis()] if any(c.filters_pt.is_file() for c in RunDir(run.run_dir).cell_dirs()) else []
    end = RunEnd(run_dir=run.run_dir, config=config, plan=run.plan, records=read_cells(run.run_dir))
    Events([*analysis, Report()]).emit(end)
    events.emit(end)
    return end.table


def _no_conversion(_model: Any) -> Any:
    raise LcdenseError("an evaluation suite cannot convert models; it evaluates the trained one")


def _record(cell_dir: CellDir, name: str, result: Any, settings: dict[str, Any], weights: str, seconds: float,
            resumed: int, device: str) -> CellRecord:
    """Merge a suite's result into the cell's record (atomically) and drop its progress file; the
    record as written."""
    record = read_cell(cell_dir)
    if record is None or not record.done:
        raise LcdenseError(f"cell {cell_dir.name} lost its record while being evaluated")
    record.metrics = {k: v for k, v in record.metrics.items() if not k.startswith(f"{name}/")}
    record.metrics.update({f"{name}/{k}": float(v) for k, v in result.metrics.items()})
    record.suites = {**record.suites, name: {
        "headline": list(result.headline), "seconds": seconds, "settings": settings, "weights": weights,
        "device": device, "resumed_steps": resumed, "info": result.info, "notes": list(result.notes)}}
    write_cell(cell_dir, record)
    progress = cell_dir.suite_progress(name)
    if progress.exists():
        progress.unlink()
    return record


__all__ = ["Evaluation", "check_suites", "evaluate", "suite_data"]
