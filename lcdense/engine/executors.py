"""Run the cells of a run directory as jobs, through submitit (Slurm, local processes, or in-process).

Every job writes only its own ``cells/<id>/`` of the shared run directory, so a run is resumable
and idempotent: submitting it again runs only the cells that have not finished and are not
queued or running already. ``lcdense report RUN_DIR`` assembles whatever has finished.

- ``slurm``: one job per cell, as one job array (partition, GPUs per job, time limit and array
  parallelism from :data:`DEFAULTS`, a settings file such as ``configs/executors/slurm.yaml``,
  and the command line). With several GPUs
  per job, the job runs one task per GPU and the cell trains data-parallel (submitit sets up
  torch.distributed).
- ``local``: jobs on this machine, one per visible GPU, each running its share of the cells in
  turn; on a CPU-only machine one job runs them all.
- ``debug``: submitit's in-process executor (what the tests use).

Each is an :class:`Executor` subclass in :data:`EXECUTORS`, which says how its jobs are made,
how cells are grouped into jobs, whether jobs outlive the command, and its default settings.
Another package adds one through the ``lcdense.executors`` entry-point group
(``[project.entry-points."lcdense.executors"] mine = "mypkg:MyExecutor"``); ``--executor mine``
then submits to it.

>>> settings = executor_settings("slurm", None, {"partition": "gpu", "gpus_per_job": 4})
>>> settings["partition"], settings["gpus_per_job"], settings["timeout_min"]
('gpu', 4, 720)
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from ..base.errors import LcdenseError, require_extra
from ..base.files import write_json
from ..base.registry import Registry
from .config import load_yaml
from .distributed import leave, visible_gpus
from .events import Events
from .rundir import RunDir
from .runner import execute, load_run, prepare_data, setup_world
from .variants import CellSpec

#: Every setting an executor config may hold, with its default.
DEFAULTS: dict[str, Any] = {
    "timeout_min": 720,          # per job (one cell)
    "gpus_per_job": 1,           # > 1: the cell trains data-parallel, one task per GPU; 0: a CPU-only job
    "cpus_per_gpu": 8,           # data loading workers + the training process (a CPU-only job: per job)
    "mem_gb_per_gpu": 48,        # (a CPU-only job: per job)
    "partition": None,
    "account": None,
    "qos": None,
    "constraint": None,
    "array_parallelism": 64,     # jobs of the array running at once
    "setup": [],                 # shell lines run before each job (module load, conda activate, ...)
}
LIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}


class Executor:
    """Base class of an executor: how the cells of a run become submitit jobs.

    By default one job per cell, submitted as one array, and waited for by the command.
    """

    #: What ``--executor NAME`` does, for the command's help.
    summary: ClassVar[str]
    #: Settings that differ from :data:`DEFAULTS` for this executor.
    defaults: ClassVar[dict[str, Any]] = {}
    #: Whether its jobs may still run when the command returns (then they are not waited for,
    #: and a resubmission skips the cells of live jobs).
    outlives_command: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        self.name = name

    def make(self, folder: Path, job_name: str, settings: dict[str, Any]) -> Any:
        """The submitit executor writing its logs into ``folder``.

        Args:
            folder: the jobs' log folder (``RUN_DIR/jobs/%j``).
            job_name: the name of the jobs.
            settings: the executor settings (:func:`executor_settings`).

        Returns:
            A configured ``submitit.Executor``.
        """
        raise NotImplementedError

    def groups(self, cells: list[CellSpec]) -> list[list[str]]:
        """The cell ids each job runs: one job per cell.

        Args:
            cells: the cells to run.

        Returns:
            One list of cell ids per job.
        """
        return [[c.id] for c in cells]

    def launch(self, executor: Any, groups: list[list[str]], job_args: Callable[[list[str]], tuple]) -> list[Any]:
        """Submit one job per group, each calling :func:`run_cells_job` with ``job_args(group)``: a job array.

        Args:
            executor: what :meth:`make` built.
            groups: what :meth:`groups` returned.
            job_args: the arguments of the job of a group.

        Returns:
            The submitit jobs, one per group.
        """
        return executor.map_array(run_cells_job, *zip(*(job_args(group) for group in groups)))

    def state(self, run_dir: Path, job_id: str) -> str:
        """The scheduler's state of a job (one of :data:`LIVE_STATES` while it lives); '' if unknown."""
        return ""

    def place(self, settings: dict[str, Any], device: str) -> tuple[dict[str, Any], str]:
        """The settings the jobs of a run on ``device`` (its ``run.device``) are submitted with: here unchanged.

        Args:
            settings: the executor settings (:func:`executor_settings`).
            device: the run's ``run.device`` (``auto``, ``cpu``, ``cuda``...).

        Returns:
            The settings to submit with, and a note for the user ('' if none).
        """
        return settings, ""


EXECUTORS: Registry[type[Executor]] = Registry("executor", group="lcdense.executors")


def get_executor(name: str) -> Executor:
    """The executor registered as ``name``; an unknown name is one line listing the known ones.

    Args:
        name: e.g. ``slurm``.

    Returns:
        An instance of its :class:`Executor` class.
    """
    return EXECUTORS.get(name)(name)


@EXECUTORS.register("slurm")
class SlurmExecutor(Executor):
    """One job per cell, as one Slurm job array; several GPUs per job train the cell data-parallel."""

    summary = "slurm (a job array)"
    outlives_command = True

    def make(self, folder: Path, job_name: str, settings: dict[str, Any]) -> Any:
        import submitit

        executor = submitit.AutoExecutor(folder, cluster="slurm")
        gpus = int(settings["gpus_per_job"])
        shares = max(gpus, 1)  # a CPU-only job gets one GPU's share of CPUs and memory
        tasks = gpus or 1  # one rank per GPU, or one process on CPU
        params: dict[str, Any] = dict(
            timeout_min=int(settings["timeout_min"]), name=job_name, tasks_per_node=tasks,
            nodes=1, cpus_per_task=int(settings["cpus_per_gpu"]) * shares // tasks,
            mem_gb=float(settings["mem_gb_per_gpu"]) * shares,
            slurm_array_parallelism=int(settings["array_parallelism"]), slurm_setup=list(settings["setup"]),
            slurm_srun_args=["--kill-on-bad-exit=1"])  # one failing rank ends the job, no hang
        if gpus:  # a CPU-only job asks for no GPU: a GPU request fails on a partition without any
            params["gpus_per_node"] = gpus
        for key in ("partition", "account", "qos", "constraint"):
            if settings[key]:
                params[f"slurm_{key}"] = settings[key]
        executor.update_parameters(**params)
        return executor

    def state(self, run_dir: Path, job_id: str) -> str:
        import submitit

        return submitit.SlurmJob(folder=RunDir(run_dir).jobs, job_id=job_id).state

    def place(self, settings: dict[str, Any], device: str) -> tuple[dict[str, Any], str]:
        """CPU-only jobs (no GPU requested) for a run on ``cpu``, and for ``auto`` on a partition
        whose nodes have no GPU (asked of ``sinfo``); otherwise ``gpus_per_job`` GPUs.

        Args:
            settings: the executor settings.
            device: the run's ``run.device``.

        Returns:
            The settings to submit with, and a note when the jobs become CPU-only for ``auto``.
        """
        if not int(settings["gpus_per_job"]):
            return settings, ""
        if device == "cpu":
            return {**settings, "gpus_per_job": 0}, ""
        if device == "auto" and partition_gpus(settings["partition"]) is False:
            where = f"partition '{settings['partition']}'" if settings["partition"] else "the default partition"
            return {**settings, "gpus_per_job": 0}, f"{where} has no GPU: the jobs run on CPU"
        return settings, ""


def partition_gpus(partition: str | None) -> bool | None:
    """Whether the nodes of ``partition`` (None: the default one) have GPUs, by their generic
    resources (``sinfo -o %G``); None if ``sinfo`` cannot tell.

    Args:
        partition: a Slurm partition, or None.

    Returns:
        True (some node has a ``gpu`` resource), False (none has), or None (unknown).
    """
    command = ["sinfo", "--noheader", "--format=%G|%P", *(["--partition", partition] if partition else [])]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [line.split("|") for line in done.stdout.splitlines() if "|" in line]
    if done.returncode or not rows:
        return None
    if not partition:  # the default partition is marked with a '*'
        rows = [row for row in rows if row[1].endswith("*")] or rows
    return any("gpu" in row[0] for row in rows)


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """Jobs on this machine: one per visible GPU (one on CPU), each running every n-th cell in turn."""

    summary = "local (one job per visible GPU; one on CPU)"
    defaults = {"timeout_min": 10080}  # a local job runs all its cells in turn: a week

    def make(self, folder: Path, job_name: str, settings: dict[str, Any]) -> Any:
        import submitit

        executor = submitit.LocalExecutor(folder)  # it takes no job name
        executor.update_parameters(timeout_min=int(settings["timeout_min"]), gpus_per_node=min(visible_gpus(), 1),
                                   tasks_per_node=1)
        return executor

    def groups(self, cells: list[CellSpec]) -> list[list[str]]:
        slots = min(max(visible_gpus(), 1), len(cells))
        return [[c.id for c in cells[k::slots]] for k in range(slots)]

    def launch(self, executor: Any, groups: list[list[str]], job_args: Callable[[list[str]], tuple]) -> list[Any]:
        if not visible_gpus():
            return super().launch(executor, groups, job_args)
        jobs = []
        for k, group in enumerate(groups):  # job k sees GPU k only
            executor.update_parameters(visible_gpus=(k,))
            jobs.append(executor.submit(run_cells_job, *job_args(group)))
        return jobs


@EXECUTORS.register("debug")
class DebugExecutor(Executor):
    """submitit's in-process executor: one job per cell, run by this process (what the tests use)."""

    summary = "debug (in-process)"

    def make(self, folder: Path, job_name: str, settings: dict[str, Any]) -> Any:
        import submitit

        executor = submitit.AutoExecutor(folder, cluster="debug")
        executor.update_parameters(timeout_min=int(settings["timeout_min"]), name=job_name)
        return executor


def executor_settings(name: str, config_file: str | Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Settings of executor ``name``: :data:`DEFAULTS` ← its own defaults ← ``config_file`` (YAML) ←
    ``overrides`` (not None).

    Args:
        name: a registered executor.
        config_file: a YAML file of settings, or None.
        overrides: settings from the command line (None: not given).

    Returns:
        Every setting of :data:`DEFAULTS`, resolved.
    """
    kind = get_executor(name)
    require_extra("cluster", "submitit", what=f"--executor {name}")
    file_settings = load_yaml(config_file) if config_file else {}
    settings = {**DEFAULTS, **kind.defaults}
    for key, value in {**file_settings, **{k: v for k, v in overrides.items() if v is not None}}.items():
        if key not in DEFAULTS:
            raise LcdenseError(f"unknown executor setting '{key}' in {config_file}; known: {', '.join(sorted(DEFAULTS))}")
        settings[key] = value
    for key in ("timeout_min", "array_parallelism", "cpus_per_gpu"):
        if int(settings[key]) < 1:
            raise LcdenseError(f"executor setting {key} must be >= 1, got {settings[key]}")
    if int(settings["gpus_per_job"]) < 0:
        raise LcdenseError(f"executor setting gpus_per_job must be >= 0 (0: CPU-only jobs), got {settings['gpus_per_job']}")
    return settings


def run_cells_job(run_dir: str, cell_ids: list[str], cache_dir: str,
                  make_callbacks: Callable[[dict[str, Any]], list[Any]] | None = None,
                  callbacks: list[Any] = ()) -> dict[str, str]:
    """The body of one job: run the listed cells of ``run_dir`` (skipping finished ones), with the
    callbacks ``make_callbacks(config)`` builds from the run's config (the API passes its default
    ones) and ``callbacks``; submitit pickles both into the job.

    Returns {cell id: "done"}; a failing cell raises, which fails the job (re-submit to retry).
    Slurm's preemption or time-limit signal (submitit asks for USR2 before the kill; SIGTERM
    comes first on preemption and is ignored by submitit) requeues the job, which continues from
    the last epoch checkpoint, as ``--resume`` does after a SIGTERM (see ``checkpoint`` below).
    """
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    config, task, cells, axis_keys = load_run(Path(run_dir))
    by_id = {c.id: c for c in cells}
    data = prepare_data(task, config, Path(cache_dir))  # before the ranks join their group
    world, device = setup_world(config)
    events = Events([*(make_callbacks(config) if make_callbacks else []), *callbacks])
    try:
        records = execute(task, config, Path(run_dir), [by_id[i] for i in cell_ids], axis_keys, data, world, device,
                          events)
    finally:
        leave()
    return {r.id: r.status for r in records}


def _requeue_same_cells(*args: Any, **kwargs: Any) -> Any:
    """submitit's checkpoint of a job (called on Slurm's preemption or time-limit signal, USR2):
    the same call again, which resumes the interrupted cell from its last epoch checkpoint and
    skips the finished ones. submitit then requeues the job and exits this one."""
    from submitit.core.utils import DelayedSubmission

    return DelayedSubmission(run_cells_job, *args, **kwargs)


run_cells_job.checkpoint = _requeue_same_cells  # type: ignore[attr-defined]


def submitted_jobs(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Cell id → the last job submitted for it (``jobs.json``)."""
    path = RunDir(run_dir).jobs_json
    return json.loads(path.read_text()) if path.is_file() else {}


def cells_to_submit(run_dir: Path, pending: list[CellSpec], executor: str) -> tuple[list[CellSpec], list[str]]:
    """The unfinished cells without a live job, and a note for each cell skipped as queued/running.

    Only the jobs of an executor that :attr:`~Executor.outlives_command` (Slurm) can still be
    live; the others' jobs were waited for.

    Args:
        run_dir: the run directory.
        pending: its unfinished cells.
        executor: the executor's name.

    Returns:
        The cells to submit, and the notes.
    """
    kind = get_executor(executor)
    if not kind.outlives_command:
        return pending, []
    jobs, todo, notes = submitted_jobs(run_dir), [], []
    for spec in pending:
        job = jobs.get(spec.id)
        state = kind.state(run_dir, job["job_id"]) if job and job["executor"] == executor else ""
        if state in LIVE_STATES:
            notes.append(f"{spec.id}: job {job['job_id']} is {state.lower()}, not submitted again")
        else:
            todo.append(spec)
    return todo, notes


def submit(run_dir: Path, cells: list[CellSpec], cache_dir: Path, name: str, settings: dict[str, Any],
           make_callbacks: Callable[[dict[str, Any]], list[Any]] | None = None,
           callbacks: list[Any] = ()) -> list[Any]:
    """Submit ``cells`` of ``run_dir`` to executor ``name``; records the jobs in ``jobs.json``.
    Each job builds its callbacks with ``make_callbacks(config)`` (a module-level function, pickled
    by reference) and adds ``callbacks``.

    The executor groups the cells into jobs (:meth:`Executor.groups`): Slurm one job per cell (a
    job array), with several GPUs per job one task (rank) per GPU; local one job per visible GPU (one on CPU),
    each running its share of the cells in turn; debug one in-process job per cell.

    Returns:
        (job, its cell ids) per job.
    """
    kind = get_executor(name)
    groups = kind.groups(cells)
    try:
        executor = kind.make(RunDir(run_dir).job_folder, f"lcdense-{run_dir.name}", settings)
    except RuntimeError as exc:  # submitit: no srun on this machine
        raise LcdenseError(f"cannot use the {name} executor here ({exc}); submit from a Slurm login node, "
                           "or use --executor local") from None
    run_arg, cache_arg = str(run_dir.resolve()), str(cache_dir.resolve())
    said = io.StringIO()  # submitit prints a refusing sbatch's message before raising it: said once, below
    try:
        with contextlib.redirect_stderr(said):
            jobs = kind.launch(executor, groups,
                               lambda group: (run_arg, group, cache_arg, make_callbacks, list(callbacks)))
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:  # e.g. sbatch refused (submitit's FailedJobError)
        raise LcdenseError(f"the {name} executor refused the jobs: {_refusal(exc, settings)}") from None
    sys.stderr.write(said.getvalue())
    stamp = datetime.now().isoformat(timespec="seconds")
    record = submitted_jobs(run_dir)
    for job, group in zip(jobs, groups):
        for cell_id in group:
            record[cell_id] = {"job_id": str(job.job_id), "executor": name, "submitted": stamp}
    write_json(RunDir(run_dir).jobs_json, record)
    return list(zip(jobs, groups))


def _refusal(error: BaseException, settings: dict[str, Any]) -> str:
    """One line on why submitting failed (the scheduler's message), with what to change where it is known."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else type(error).__name__)
    if "gres" in text.lower() and int(settings.get("gpus_per_job", 0)):
        text += " (the partition may have no GPU: use --gpus-per-job 0, or --device cpu, for CPU-only jobs)"
    elif "node configuration is not available" in text.lower():
        text += " (ask for fewer CPUs or less memory: cpus_per_gpu, mem_gb_per_gpu in --executor-config)"
    return text


def _reason(error: BaseException) -> str:
    """One line on why a job failed: the job's exception, or how it ended without a result."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    if isinstance(error, UncompletedJobError) and not isinstance(error, FailedJobError):  # killed, timed out...
        state = re.search(r"\(state: ([^)]*)\)", str(error))
        return f"the job ended without a result (state: {state.group(1) if state else 'unknown'})"
    text = str(error)
    if "\n----" in text:  # submitit: "... with trace:\n----\n<traceback>\n----\n<log paths>"
        text = text.split("\n----", 2)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("---")]
    return lines[-1] if lines else type(error).__name__


def wait(submitted: list[Any]) -> list[str]:
    """Wait for the jobs; returns one line per failed job (its cells, the error's last line, its log)."""
    failures = []
    for job, group in submitted:
        error = job.exception()  # waits; the job's error (submitit's FailedJobError, or the debug job's own)
        if error is None:
            continue
        reason = _reason(error)
        log = job.paths.stderr
        failures.append(f"{', '.join(group)}: {reason}" + (f" (log: {log})" if log.is_file() else ""))
    return failures


def describe(submitted: list[Any]) -> str:
    """One line per submitted job, for the user."""
    return "\n".join(f"  job {job.job_id}: {', '.join(group)}" for job, group in submitted) or "  (none)"


__all__ = ["EXECUTORS", "DebugExecutor", "Executor", "LocalExecutor", "SlurmExecutor", "cells_to_submit", "describe",
           "executor_settings", "get_executor", "partition_gpus", "run_cells_job", "submit", "submitted_jobs", "wait"]

