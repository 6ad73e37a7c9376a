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

>>> settings = executor_settings("slurm", None, {"partition": "gpu", "gpus_per_job": 4})
>>> settings["partition"], settings["gpus_per_job"], settings["timeout_min"]
('gpu', 4, 720)
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from ..base.errors import LcdenseError, require_extra, unknown_name
from ..base.files import write_json
from .config import load_yaml
from .distributed import visible_gpus
from .rundir import RunDir
from .variants import CellSpec

EXECUTORS: tuple[str, ...] = ("local", "slurm", "debug")
#: Every setting an executor config may hold, with its default.
DEFAULTS: dict[str, Any] = {
    "timeout_min": 720,          # per job (one cell)
    "gpus_per_job": 1,           # > 1: the cell trains data-parallel, one task per GPU
    "cpus_per_gpu": 8,           # data loading workers + the training process
    "mem_gb_per_gpu": 48,
    "partition": None,
    "account": None,
    "qos": None,
    "constraint": None,
    "array_parallelism": 64,     # jobs of the array running at once
    "setup": [],                 # shell lines run before each job (module load, conda activate, ...)
}
LIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}


def executor_settings(name: str, config_file: str | Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Settings of executor ``name``: :data:`DEFAULTS` ← ``config_file`` (YAML) ← ``overrides`` (not None)."""
    if name not in EXECUTORS:
        raise unknown_name("executor", name, EXECUTORS)
    require_extra("cluster", "submitit", what=f"--executor {name}")
    file_settings = load_yaml(config_file) if config_file else {}
    settings = dict(DEFAULTS)
    if name == "local":
        settings["timeout_min"] = 10080  # a local job runs all its cells in turn: a week
    for key, value in {**file_settings, **{k: v for k, v in overrides.items() if v is not None}}.items():
        if key not in DEFAULTS:
            raise LcdenseError(f"unknown executor setting '{key}' in {config_file}; known: {', '.join(sorted(DEFAULTS))}")
        settings[key] = value
    for key in ("timeout_min", "gpus_per_job", "array_parallelism"):
        if int(settings[key]) < 1:
            raise LcdenseError(f"executor setting {key} must be >= 1, got {settings[key]}")
    return settings


def run_cells_job(run_dir: str, cell_ids: list[str], cache_dir: str,
                  make_callbacks: Callable[[dict[str, Any]], list[Any]] | None = None,
                  callbacks: list[Any] = ()) -> dict[str, str]:
    """The body of one job: run the listed cells of ``run_dir`` (skipping finished ones), with the
    callbacks ``make_callbacks(config)`` builds from the run's config (the API passes its default
    ones) and ``callbacks``; submitit pickles both into the job.

    Returns {cell id: "done"}; a failing cell raises, which fails the job (re-submit to retry).
    """
    from .events import Events
    from .runner import execute, load_run, setup_world

    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    config, task, cells, axis_keys = load_run(Path(run_dir))
    if task.data_parallel == "own" and (gpus := visible_gpus()) > 1:  # e.g. ultralytics launches its own workers
        config["run"]["device"] = ",".join(str(i) for i in range(gpus))
    by_id = {c.id: c for c in cells}
    world, device = setup_world(config)
    events = Events([*(make_callbacks(config) if make_callbacks else []), *callbacks])
    records = execute(task, config, Path(run_dir), [by_id[i] for i in cell_ids], axis_keys, Path(cache_dir),
                      world, device, events)
    return {r.id: r.status for r in records}


def submitted_jobs(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Cell id → the last job submitted for it (``jobs.json``)."""
    path = RunDir(run_dir).jobs_json
    return json.loads(path.read_text()) if path.is_file() else {}


def _slurm_state(run_dir: Path, job_id: str) -> str:
    import submitit

    return submitit.SlurmJob(folder=RunDir(run_dir).jobs, job_id=job_id).state


def cells_to_submit(run_dir: Path, pending: list[CellSpec], executor: str) -> tuple[list[CellSpec], list[str]]:
    """The unfinished cells without a live job, and a note for each cell skipped as queued/running.

    Only Slurm jobs can outlive the submitting command; local and debug jobs are waited for.
    """
    if executor != "slurm":
        return pending, []
    jobs, todo, notes = submitted_jobs(run_dir), [], []
    for spec in pending:
        job = jobs.get(spec.id)
        state = _slurm_state(run_dir, job["job_id"]) if job and job["executor"] == "slurm" else ""
        if state in LIVE_STATES:
            notes.append(f"{spec.id}: job {job['job_id']} is {state.lower()}, not submitted again")
        else:
            todo.append(spec)
    return todo, notes


def _executor(name: str, run_dir: Path, settings: dict[str, Any], gpus: int, task_per_gpu: bool = True):
    import submitit

    try:
        folder = RunDir(run_dir).job_folder
        executor = submitit.LocalExecutor(folder) if name == "local" else submitit.AutoExecutor(folder, cluster=name)
    except RuntimeError as exc:  # submitit: no srun on this machine
        raise LcdenseError(f"cannot use the {name} executor here ({exc}); submit from a Slurm login node, "
                           "or use --executor local") from None
    per_job = int(settings["gpus_per_job"]) if name == "slurm" else min(gpus, 1)
    params: dict[str, Any] = {"timeout_min": int(settings["timeout_min"])}
    if name != "local":  # submitit's LocalExecutor takes no job name
        params["name"] = f"lcdense-{run_dir.name}"
    if name == "slurm":
        tasks = per_job if task_per_gpu else 1  # one rank per GPU, or one process that launches its own workers
        params.update(gpus_per_node=per_job, tasks_per_node=tasks, nodes=1,
                      cpus_per_task=int(settings["cpus_per_gpu"]) * per_job // tasks,
                      mem_gb=float(settings["mem_gb_per_gpu"]) * per_job,
                      slurm_array_parallelism=int(settings["array_parallelism"]), slurm_setup=list(settings["setup"]),
                      slurm_srun_args=["--kill-on-bad-exit=1"])  # one failing rank ends the job, no hang
        for key in ("partition", "account", "qos", "constraint"):
            if settings[key]:
                params[f"slurm_{key}"] = settings[key]
    elif name == "local":
        params.update(gpus_per_node=per_job, tasks_per_node=1)
    executor.update_parameters(**params)
    return executor


def submit(run_dir: Path, cells: list[CellSpec], cache_dir: Path, name: str, settings: dict[str, Any],
           task_per_gpu: bool = True, make_callbacks: Callable[[dict[str, Any]], list[Any]] | None = None,
           callbacks: list[Any] = ()) -> list[Any]:
    """Submit ``cells`` of ``run_dir`` to executor ``name``; records the jobs in ``jobs.json``.
    Each job builds its callbacks with ``make_callbacks(config)`` (a module-level function, pickled
    by reference) and adds ``callbacks``.

    Slurm: one job per cell (a job array); with several GPUs per job, one task (rank) per GPU, or
    one task if the task launches its own workers (``task_per_gpu=False``). Local: one job per
    visible GPU (one on CPU), each running its share of the cells in turn. Debug: one in-process
    job per cell.
    """
    gpus = visible_gpus() if name == "local" else 0
    if name == "local":  # one job per GPU (one on CPU), each taking every n-th cell
        slots = min(max(gpus, 1), len(cells))
        groups = [[c.id for c in cells[k::slots]] for k in range(slots)]
    else:
        groups = [[c.id] for c in cells]
    executor = _executor(name, run_dir, settings, gpus, task_per_gpu)
    run_arg, cache_arg = str(run_dir.resolve()), str(cache_dir.resolve())
    if name == "local" and gpus:
        jobs = []
        for k, group in enumerate(groups):
            executor.update_parameters(visible_gpus=(k,))
            jobs.append(executor.submit(run_cells_job, run_arg, group, cache_arg, make_callbacks, list(callbacks)))
    else:
        jobs = executor.map_array(run_cells_job, [run_arg] * len(groups), groups, [cache_arg] * len(groups),
                                  [make_callbacks] * len(groups), [list(callbacks)] * len(groups))
    stamp = datetime.now().isoformat(timespec="seconds")
    record = submitted_jobs(run_dir)
    for job, group in zip(jobs, groups):
        for cell_id in group:
            record[cell_id] = {"job_id": str(job.job_id), "executor": name, "submitted": stamp}
    write_json(RunDir(run_dir).jobs_json, record)
    return list(zip(jobs, groups))


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


__all__ = ["EXECUTORS", "cells_to_submit", "describe", "executor_settings", "run_cells_job", "submit",
           "submitted_jobs", "wait"]

