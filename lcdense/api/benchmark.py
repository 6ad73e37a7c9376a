"""The benchmark as a Python API: :func:`run`, :func:`sweep`, :func:`report`, :func:`analyze` and
:func:`load`. The ``lcdense`` command line parses its arguments into these calls and nothing else.

Settings are the CLI's: a ``config`` YAML file, then keyword overrides, applied in order. An
override is a dotted config key (``**{"train.lr": 0.05}``), a config section as a dict
(``train={"lr": 0.05}``), or one of the CLI's short names (:data:`SHORT_KEYS`: ``E=8``,
``seeds=[0, 1]``, ``epochs=2``, ``data="/data/cifar10"``, ``out="runs"``, ``quiet=True`` ...).

>>> expand_settings({"E": [1, 8], "epochs": 2, "train": {"lr": 0.1}, "data.workers": 0})
{'run.E': [1, 8], 'train.epochs': 2, 'train': {'lr': 0.1}, 'data.workers': 0}

A run returns a :class:`RunResult`: the run directory, the cell records and the summary::

    result = lcdense.run("classification", E=8, seeds=[0, 1], epochs=2)
    result.summary.gap("frozen - learnable")["mean"]
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..base.errors import LcdenseError
from ..engine.config import load_yaml, resolve
from ..engine.distributed import (
    World,
    launched_by_torchrun,
    leave,
    torchrun_command,
    visible_gpus,
)
from ..engine.events import Callback, ConsoleLog, Events, RunEnd, RunStart
from ..engine.records import (
    CellRecord,
    PlanRecord,
    SummaryRecord,
    finished_cell,
    read_cells,
    read_plan,
    read_summary,
)
from ..engine.rundir import RunDir, cache_folder
from ..engine.runner import (
    check_before_training,
    check_diverged,
    check_global_batch,
    execute,
    gpu_list,
    load_run,
    new_run_dir,
    plan_cells,
    prepare_data,
    resolve_axes,
    save_run_config,
    setup_world,
)
from ..engine.task import Task, get_task, list_tasks
from ..engine.variants import (
    CellSpec,
    parse_expansions,
    parse_seeds,
    parse_variants,
    sweep_point,
)
from .models import cell_model, export_cell

#: The sweep axes with a flag of their own on the command line (``--kernel-size 3,5`` is
#: ``--axis kernel_size=3,5``; ``--axis`` takes any axis of a task), with the flag's help.
AXIS_FLAGS: dict[str, str] = {
    "width": "comma-separated widths (task-dependent, e.g. 16,32,64)",
    "depth": "comma-separated depths (e.g. 20,56)",
    "kernel_size": "comma-separated kernel sizes (e.g. 3,5,7)",
    "init": "comma-separated spatial inits (e.g. kaiming_uniform,orthogonal)",
    "mid": "comma-separated ops inside the LC-Block: none,relu,bn,bn_relu (appendix C)",
}

#: The CLI's flags as short setting names → their dotted config keys.
SHORT_KEYS: dict[str, str] = {
    "E": "run.E", "variants": "run.variants", "seeds": "run.seeds", "device": "run.device", "out": "run.out",
    "name": "run.name", "quiet": "run.quiet", "analysis": "run.analysis", "epochs": "train.epochs",
    "batch_size": "train.batch_size", "data": "data.root", "dataset": "data.dataset", "model": "model.name",
    "workers": "data.workers", "memory": "run.max_memory", "verbose": "run.verbose", "loggers": "run.loggers",
    "allow_diverged": "run.allow_diverged",
}


@dataclass
class RunResult:
    """A run directory read back: its config, plan, finished cell records and summary.

    Attributes:
        run_dir: The run directory.
        config: The run's resolved config (empty if ``config.yaml`` is missing).
        plan: The run's plan (``plan.json``).
        cells: The records of the finished cells.
        summary: The summary (``summary.json``), or None if not written.
        table: The summary's Markdown table, when this call rendered the report (else empty).
        jobs: Cell id → job id, for cells handed to an executor by this call.
    """

    run_dir: Path
    config: dict[str, Any]
    plan: PlanRecord
    cells: list[CellRecord]
    summary: SummaryRecord | None
    table: str = ""
    #: Cell id → job id, for cells handed to an executor by this call.
    jobs: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether every cell of the plan has finished."""
        return len(self.cells) == len(self.plan.cells)

    def cell(self, cell_id: str) -> CellRecord:
        """The record of finished cell ``cell_id``.

        Args:
            cell_id: A cell id (its folder name under ``cells/``).

        Returns:
            The cell's record.

        Raises:
            LcdenseError: No finished cell has that id (the error lists them).
        """
        for record in self.cells:
            if record.id == cell_id:
                return record
        finished = ", ".join(c.id for c in self.cells) or "none"
        raise LcdenseError(f"{self.run_dir} has no finished cell '{cell_id}'; finished cells: {finished}")

    def model(self, cell_id: str, *, device: str | torch.device = "cpu", folded: bool = False,
              weights: str | None = None) -> nn.Module:
        """The trained model of a finished cell, rebuilt with its frozen filters regenerated and
        verified (see :func:`lcdense.api.models.cell_model`).

        >>> lcdense.load(run_dir).model("lc-frozen@8__seed0", device="cuda", folded=True)  # doctest: +SKIP

        Args:
            cell_id: A finished cell's id.
            device: Where the model goes.
            folded: Fold every LC-Block into a plain conv (:func:`lcdense.fold`).
            weights: ``model`` (final), ``best`` or ``ema`` where the cell keeps them; None: the
                weights its primary metric was measured on.

        Returns:
            The model, in eval mode, on ``device``.

        Raises:
            LcdenseError: An unknown or unfinished cell, weights the cell does not keep, or a
                weights file that is missing, corrupt, tampered with or does not rebuild exactly.
        """
        return cell_model(self.run_dir, self.cell(cell_id), weights=weights, device=device, folded=folded)

    def export(self, cell_id: str, *, weights: str | None = None, out: str | os.PathLike | None = None) -> dict[str, Path]:
        """Write a finished cell's folded model as a plain checkpoint of its own library, loadable
        without lcdense (see :func:`lcdense.api.models.export_cell`; ``lcdense export`` calls it).

        Args:
            cell_id: A finished cell's id.
            weights: ``model``, ``best`` or ``ema``; None: the cell's primary weights.
            out: The folder to write; default ``cells/<id>/export/<weights>`` (never overwritten).

        Returns:
            The library's name (``timm``, ``torchvision``, ``smp``, ``ultralytics``, ``lcdense``) → what to load.

        Raises:
            LcdenseError: As :meth:`model`; or ``out`` exists and is not empty; or the task has no export.
        """
        return export_cell(self.run_dir, self.cell(cell_id), weights=weights, out=out)

    def metric(self, variant: str, name: str | None = None, group: str = "") -> dict[int, float]:
        """Seed → value of metric ``name`` (default: the primary metric) for ``variant`` (diverged cells left out)."""
        name = name or self.plan.primary_metric
        return {c.seed: c.metrics[name] for c in self.cells
                if c.done and c.variant == variant and sweep_point(c.axes) == group and name in c.metrics}


def expand_settings(overrides: dict[str, Any]) -> dict[str, Any]:
    """Keyword overrides with the short names (:data:`SHORT_KEYS`) spelled as dotted keys; a dict
    value keeps its key (a section such as ``data={...}``)."""
    return {SHORT_KEYS[k] if k in SHORT_KEYS and not isinstance(v, dict) else k: v for k, v in overrides.items()}


def default_callbacks(config: dict[str, Any]) -> list[Any]:
    """The callbacks every run has: saved filters, the per-cell files (``history.csv``...), filter
    analysis (``run.analysis``), the report, the experiment trackers (``run.loggers``) and the
    console output."""
    from ..engine.cell_files import CellFiles
    from ..engine.trackers import make_loggers
    from ..reporting.analysis import FilterAnalysis, SaveFilters
    from ..reporting.summary import Report

    run = config["run"]
    analysis = [FilterAnalysis()] if run.get("analysis", True) else []
    return [SaveFilters(), CellFiles(), *analysis, Report(), *make_loggers(config),
            ConsoleLog(quiet=bool(run.get("quiet")), verbose=bool(run.get("verbose")))]


def load(run_dir: str | os.PathLike) -> RunResult:
    """Read a run directory back: config, plan, finished cells and summary (nothing is recomputed).

    Args:
        run_dir: The run directory.

    Returns:
        The run as its files hold it.

    Raises:
        LcdenseError: ``run_dir`` has no ``plan.json`` or a record file cannot be read.
    """
    run = RunDir(run_dir)
    plan = read_plan(run)
    config = run.read_config() if run.config_yaml.is_file() else {}
    return RunResult(run.path, config, plan, read_cells(run), read_summary(run))


def run(task: str | None = None, *, config: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
        ddp: int | None = None, callbacks: Iterable[Any] = (), **overrides: Any) -> RunResult:
    """Train the variants × seeds of ``task`` and report the gap; returns the finished run.

    ``config`` is a YAML file (its ``task`` key names the task when ``task`` is None); overrides
    as in the module docstring. ``resume`` continues an interrupted run (its settings come from
    the run directory; ``quiet``, ``verbose``, ``loggers`` and ``device``/``ddp`` still apply). ``ddp=N`` (or a device list
    such as ``device="0,1"``) trains each cell data-parallel as torchrun's ranks. ``callbacks`` receive the run's events
    (:mod:`lcdense.engine.events`) after the built-in ones.

    Args:
        task: The task's name; None to take it from ``config``.
        config: A YAML config file.
        resume: The directory of a run to continue.
        ddp: Train each cell data-parallel on this many GPUs.
        callbacks: Callbacks of the run's events.
        **overrides: Settings over the config's (see the module docstring).

    Returns:
        The finished run (on a rank other than 0 under torchrun: no cells, no summary).

    Raises:
        LcdenseError: No or an unknown task, a bad setting, or a data-parallel request the task or
            machine cannot serve.
    """
    return _launch(task, config=config, resume=resume, axes={}, ddp=ddp, executor=None, callbacks=callbacks,
                   overrides=overrides)


def sweep(task: str | None = None, *, axes: dict[str, list[Any]] | None = None, config: str | os.PathLike | None = None,
          resume: str | os.PathLike | None = None, ddp: int | None = None, executor: str | None = None,
          executor_config: str | os.PathLike | None = None, executor_settings: dict[str, Any] | None = None,
          wait: bool = False, callbacks: Iterable[Any] = (), **overrides: Any) -> RunResult:
    """A grid as one resumable run: E (an override, e.g. ``E=[1, 8, 64]``) × ``axes`` (e.g.
    ``{"width": [16, 32]}``, ``{"init": [...]}``: the task's ``sweep_axes`` and the runner's
    ``init`` and ``mid``, see :func:`lcdense.engine.runner.sweep_axes`).

    ``executor`` (``slurm``, ``local``, ``debug`` or a registered one) makes every unfinished cell
    a submitit job (settings from ``executor_config`` and ``executor_settings``, see
    :mod:`lcdense.engine.executors`); local and debug jobs are waited for and reported, Slurm jobs
    (which outlive the command) only with ``wait=True`` (else the result holds the cells finished
    so far and the submitted ``jobs``).

    Args:
        task: The task's name; None to take it from ``config``.
        axes: Sweep axis → values.
        config: A YAML config file.
        resume: The directory of a sweep to continue.
        ddp: Train each cell data-parallel on this many GPUs.
        executor: Run the cells as submitit jobs of this executor; None trains them here.
        executor_config: A YAML file of executor settings.
        executor_settings: Executor settings, over ``executor_config``'s.
        wait: Wait for Slurm jobs and report them.
        callbacks: Callbacks of the run's events.
        **overrides: Settings over the config's (see the module docstring).

    Returns:
        The run: finished, or with the cells finished so far and the submitted ``jobs``.

    Raises:
        LcdenseError: No or an unknown task, an unknown axis, bad settings, or ``ddp`` with an executor.
    """
    return _launch(task, config=config, resume=resume, axes=dict(axes or {}), ddp=ddp,
                   executor=(executor, executor_config, dict(executor_settings or {}), wait) if executor else None,
                   callbacks=callbacks, overrides=overrides)


def dry_run(task: str | None = None, *, config: str | os.PathLike | None = None,
            axes: dict[str, list[Any]] | None = None, ddp: int | None = None, **overrides: Any) -> list[Any]:
    """What :func:`run` (or :func:`sweep` with ``axes``) would need, predicted per cell on fake
    tensors (:mod:`lcdense.engine.dry_run`): parameters, state, activations, peak memory, FLOPs and whether
    it fits ``memory`` (``run.max_memory``; default: the device's). Prints the table, writes
    ``OUT/TASK/dry-run/<time>.json`` and returns the estimates; nothing is trained or allocated.

    Args:
        task: The task's name; None to take it from ``config``.
        config: A YAML config file.
        axes: Sweep axis → values, as for :func:`sweep`.
        ddp: The number of data-parallel ranks each cell would train on.
        **overrides: Settings over the config's (see the module docstring).

    Returns:
        The estimates (:class:`lcdense.cost.estimate.Estimate`), one per distinct variant and sweep point.

    Raises:
        LcdenseError: No or an unknown task, an unknown axis, or a bad setting.
    """
    from ..engine.dry_run import dry_run as estimate_cells
    from ..engine.dry_run import report as report_estimates

    cfg, task_, cells, axis_keys = _new_run(task, config, dict(axes or {}), overrides)
    cache_dir = _cache_dir(cfg)
    cache_dir.mkdir(parents=True, exist_ok=True)
    ranks = len(_gpus_requested(str(cfg["run"]["device"]), ddp)) or 1
    estimates = estimate_cells(task_, cfg, cells, axis_keys, cache_dir, ranks)
    report_estimates(estimates, cfg["run"]["out"], task_.name)
    return estimates


def report(run_dir: str | os.PathLike, *, analysis: bool = True) -> RunResult:
    """Re-render ``results.csv``, ``summary.json``, ``summary.md`` and the figures of a run from its
    files alone (and the filter analysis, where cells saved their filters and ``analysis``).

    Args:
        run_dir: The run directory.
        analysis: Also redo the filter analysis (where cells saved their filters).

    Returns:
        The run with its new summary and table.

    Raises:
        LcdenseError: ``run_dir`` is not a run directory or has no finished cell.
    """
    run_dir = Path(run_dir)
    result = load(run_dir)
    from ..reporting.analysis import FilterAnalysis
    from ..reporting.summary import Report

    analyze_too = analysis and any(cell.filters_pt.is_file() for cell in RunDir(run_dir).cell_dirs())
    end = _finish(run_dir, result.config, result.plan, [*([FilterAnalysis()] if analyze_too else []), Report()])
    return RunResult(run_dir, result.config, result.plan, end.records, end.summary, end.table)


def analyze(run_dir: str | os.PathLike) -> str:
    """The filter analysis of a run (``analysis.json``, ``.csv``, ``.md``, figures); returns its
    Markdown section.

    Args:
        run_dir: The run directory.

    Returns:
        The "## Filter analysis" Markdown section.

    Raises:
        LcdenseError: ``run_dir`` does not exist.
    """
    from ..reporting.analysis import analyze_run

    return analyze_run(run_dir)


# ---- orchestration --------------------------------------------------------------------------------

def _cache_dir(cfg: dict[str, Any]) -> Path:
    """Where a run's generated datasets are cached: ``run.cache_dir``, or ``OUT/.cache``."""
    return Path(cfg["run"]["cache_dir"] or cache_folder(cfg["run"]["out"])).resolve()


def _finish(run_dir: Path, config: dict[str, Any], plan: PlanRecord, callbacks: Iterable[Any]) -> RunEnd:
    end = RunEnd(run_dir=run_dir, config=config, plan=plan, records=read_cells(run_dir))
    Events(callbacks).emit(end)
    return end


def _new_run(task_name: str | None, config_file: str | os.PathLike | None, axes: dict[str, list[Any]],
             overrides: dict[str, Any]) -> tuple[dict[str, Any], Task, list[CellSpec], dict[str, str]]:
    file_config = load_yaml(config_file) if config_file else {}
    name = task_name or file_config.get("task")
    if not name:
        raise LcdenseError(f"say which task to run: --task NAME (one of: {', '.join(list_tasks())})")
    if task_name and file_config.get("task") not in (None, task_name):
        raise LcdenseError(f"--task {task_name} conflicts with task '{file_config['task']}' in {config_file}")
    task = get_task(name)
    config = resolve(task.default_config(), file_config, expand_settings(overrides), where=str(config_file or "config"))
    config["task"] = name
    expansions = parse_expansions(config["run"]["E"])
    variants = parse_variants(config["run"]["variants"], expansions)
    seeds = parse_seeds(config["run"]["seeds"])
    keys = resolve_axes(task, axes)
    return config, task, plan_cells(variants, seeds, {axis: axes[axis] for axis in keys}), keys


def _gpus_requested(device: str, ddp: int | None) -> tuple[int, ...]:
    """GPUs asked for with ``ddp=N`` (0..N-1) or a device list ``0,1,...`` (empty if neither)."""
    listed = gpu_list(device)
    if ddp and listed and ddp != len(listed):
        raise LcdenseError(f"--ddp {ddp} conflicts with the {len(listed)} GPUs of --device {device}")
    return listed or (tuple(range(ddp)) if ddp and ddp > 1 else ())


def _launch(task_name: str | None, *, config: Any, resume: Any, axes: dict[str, list[Any]], ddp: int | None,
            executor: tuple[str, Any, dict[str, Any], bool] | None, callbacks: Iterable[Any],
            overrides: dict[str, Any]) -> RunResult:
    callbacks = list(callbacks)
    settings = expand_settings(overrides)
    if resume:
        run_dir: Path | None = Path(resume)
        cfg, task, cells, axis_keys = load_run(run_dir)
        cfg["run"]["quiet"] = bool(settings.get("run.quiet") or cfg["run"].get("quiet"))
        cfg["run"]["verbose"] = bool(settings.get("run.verbose") or cfg["run"].get("verbose"))
        cfg["run"]["loggers"] = settings.get("run.loggers", cfg["run"].get("loggers") or [])
        cfg["run"]["allow_diverged"] = bool(settings.get("run.allow_diverged") or cfg["run"].get("allow_diverged"))
        device = str(settings.get("run.device") or "")
    else:
        run_dir = None
        cfg, task, cells, axis_keys = _new_run(task_name, config, axes, overrides)
        device = str(cfg["run"]["device"])
    check_before_training(task, cfg, cells)
    from .evaluate import check_suites

    check_suites(task, cfg)  # a typo in evaluate.suites must not wait for the end of training
    gpus = _gpus_requested(device, ddp)
    if gpus and not launched_by_torchrun():
        if task.data_parallel is None:
            raise LcdenseError(f"task '{task.name}' does not support data-parallel training; drop --ddp/--device list")
        if executor:
            raise LcdenseError("--ddp runs one machine's GPUs; with --executor use --gpus-per-job instead")
        check_global_batch(cfg, len(gpus))
        return _under_torchrun(task, cfg, cells, axis_keys, run_dir, gpus, device, callbacks)
    cache_dir = _cache_dir(cfg)
    if executor:  # the jobs pick their devices; this machine may have no GPU
        from ..engine.executors import executor_settings

        name, config_file, requested, wait = executor
        executor = (name, None, executor_settings(name, config_file, requested), wait)  # bad settings: no run dir
        if run_dir is None:
            run_dir = new_run_dir(cfg["run"]["out"], task.name, cfg["run"]["name"])
            plan = save_run_config(run_dir, cfg, cells, axis_keys, task)
        else:
            plan = read_plan(run_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        Events([*default_callbacks(cfg), *callbacks]).emit(RunStart(run_dir=run_dir, config=cfg, plan=plan))
        return _submit(task, cfg, run_dir, plan, cells, cache_dir, executor, callbacks)
    data = prepare_data(task, cfg, cache_dir)  # before the ranks join their group (see prepare_data)
    world, torch_device = setup_world(cfg)
    try:
        return _train_here(task, cfg, cells, axis_keys, run_dir, cache_dir, data, world, torch_device, callbacks)
    finally:
        leave()


def _train_here(task: Task, cfg: dict[str, Any], cells: list[CellSpec], axis_keys: dict[str, str], run_dir: Path | None,
                cache_dir: Path, data: Any, world: World, torch_device: Any, callbacks: list[Any]) -> RunResult:
    """Run the cells in this process (one of the ranks under torchrun) and, on rank 0, report."""
    plan = PlanRecord.of(task, cells, axis_keys)  # as the other ranks know it
    if run_dir is None:
        run_dir = world.on_main(lambda: new_run_dir(cfg["run"]["out"], task.name, cfg["run"]["name"]))
        if world.is_main:
            plan = save_run_config(run_dir, cfg, cells, axis_keys, task)
    elif world.is_main:
        plan = read_plan(run_dir)
    events = Events([*default_callbacks(cfg), *callbacks])
    if world.is_main:
        cache_dir.mkdir(parents=True, exist_ok=True)
        events.emit(RunStart(run_dir=run_dir, config=cfg, plan=plan))
        if not cfg["run"]["quiet"]:
            print(f"lcdense: {task.name}: {len(cells)} cell(s) -> {run_dir}"
                  + (f", {world.size} ranks each" if world.active else ""))
    execute(task, cfg, run_dir, cells, axis_keys, data, world, torch_device, events)
    if not world.is_main:
        return RunResult(run_dir, cfg, plan, [], None)
    end = _finish(run_dir, cfg, plan, events.callbacks)
    check_diverged(end.records, cfg)
    if (cfg.get("evaluate") or {}).get("suites"):  # the suites the config names, at the run's end
        from .evaluate import evaluate

        table = evaluate(run_dir, cfg["evaluate"]["suites"], device=str(cfg["run"]["device"]),
                         quiet=bool(cfg["run"]["quiet"])).table
        result = load(run_dir)
        result.table = table or end.table
        return result
    return RunResult(run_dir, cfg, plan, end.records, end.summary, end.table)


def _under_torchrun(task: Task, cfg: dict[str, Any], cells: list[CellSpec], axis_keys: dict[str, str],
                    run_dir: Path | None, gpus: tuple[int, ...], device: str, callbacks: list[Any]) -> RunResult:
    """Create the run here, then train it as ``len(gpus)`` data-parallel ranks through torchrun
    (``lcdense run --resume RUN_DIR`` on every rank); returns the finished run."""
    if callbacks:
        raise LcdenseError("callbacks cannot cross into torchrun's ranks; start this script itself with torchrun "
                           "(it then runs as one of the ranks) or drop --ddp")
    if device != "cpu":  # the launcher never touches CUDA otherwise: it holds no context beside rank 0's
        count = visible_gpus()
        if (gpu_list(device) or device.startswith("cuda") or (device == "auto" and count)) and max(gpus) >= count:
            raise LcdenseError(f"{len(gpus)} GPUs asked for, {count} visible; use fewer, or --device cpu for gloo ranks")
    env = dict(os.environ)
    if gpu_list(device):
        visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[i] if visible else str(i) for i in gpus)  # as torch sees them
        device = "cuda"
    if run_dir is None:
        cfg["run"]["device"] = device
        run_dir = new_run_dir(cfg["run"]["out"], task.name, cfg["run"]["name"])
        save_run_config(run_dir, cfg, cells, axis_keys, task)
    # the ranks do not refuse diverged cells: this process does, once they are done
    argv = ["run", "--resume", str(run_dir), "--allow-diverged", *(["--quiet"] if cfg["run"]["quiet"] else [])]
    code = subprocess.run(torchrun_command(len(gpus), argv), env=env).returncode
    if code:
        raise LcdenseError(f"the {len(gpus)} data-parallel ranks failed (torchrun exit code {code}, their error is "
                           f"above); finished cells are kept: continue with lcdense run --resume {run_dir} --ddp {len(gpus)}")
    result = load(run_dir)
    result.table = ""
    check_diverged(result.cells, cfg)
    return result


def _submit(task: Task, cfg: dict[str, Any], run_dir: Path, plan: PlanRecord, cells: list[CellSpec], cache_dir: Path,
            executor: tuple[str, Any, dict[str, Any], bool], callbacks: list[Any]) -> RunResult:
    """Hand the unfinished cells to submitit; wait (local, debug, or ``wait``) and report."""
    from ..engine import executors

    run = RunDir(run_dir)
    name, _, settings, wait = executor
    if int(settings["gpus_per_job"]) > 1 and task.data_parallel is None:
        raise LcdenseError(f"task '{task.name}' trains on one device; use --gpus-per-job 1")
    settings, note = executors.get_executor(name).place(settings, str(cfg["run"]["device"]))
    if note:
        print(f"lcdense: {note}")
    task.prepare_data(cfg, cache_dir)  # the embedded dataset is generated once, before any job starts
    pending = [c for c in cells if finished_cell(run.cell(c.id)) is None]
    todo, notes = executors.cells_to_submit(run_dir, pending, name)
    for note in notes:
        print(f"lcdense: {note}")
    print(f"lcdense: {task.name}: {len(cells)} cell(s), {len(cells) - len(pending)} finished, "
          f"{len(todo)} to run on '{name}' -> {run_dir}")
    submitted = executors.submit(run_dir, todo, cache_dir, name, settings,
                                 make_callbacks=default_callbacks, callbacks=callbacks) if todo else []
    print(executors.describe(submitted))
    jobs = {cell_id: str(job.job_id) for job, group in submitted for cell_id in group}
    if executors.get_executor(name).outlives_command and not wait:
        print(f"lcdense: jobs write into {run.cells}; when they finish: lcdense report {run_dir}\n"
              f"         re-submit missing or failed cells: lcdense sweep --resume {run_dir} --executor {name}")
        return RunResult(run_dir, cfg, plan, read_cells(run_dir), None, jobs=jobs)
    failures = executors.wait(submitted)
    for line in failures:
        print(f"lcdense: job failed: {line}", file=sys.stderr)
    end = None
    if any(finished_cell(run.cell(c.id)) for c in cells):
        end = _finish(run_dir, cfg, plan, [*default_callbacks(cfg), *callbacks])
    if failures:
        raise LcdenseError(f"{len(failures)} job(s) failed; finished cells are kept. Run the missing ones again: "
                           f"lcdense sweep --resume {run_dir} --executor {name}")
    check_diverged(end.records if end else [], cfg)
    return RunResult(run_dir, cfg, plan, end.records if end else [], end.summary if end else None,
                     end.table if end else "", jobs=jobs)


__all__ = ["AXIS_FLAGS", "SHORT_KEYS", "Callback", "RunResult", "analyze", "default_callbacks", "expand_settings", "load", "report",
           "run", "sweep"]
