"""The gap runner: trains every cell (variant × seed × sweep point) of a task and records it.

Per cell it seeds the init, builds the task's model, converts it, proves the frozen filters did
not move (``frozen_digest`` before and after training), evaluates, and writes
``cells/<cell id>/cell.json`` (a :class:`~lcdense.engine.records.CellRecord`) with metrics and costs. A run
directory is never overwritten; ``resume`` skips finished cells and continues an interrupted one
from its last epoch. It emits the cell events (:mod:`lcdense.engine.events`) to the run's callbacks; the
run itself is started by :func:`lcdense.run` (or the CLI, which calls it).

>>> from lcdense.engine.runner import plan_cells
>>> from lcdense.engine.variants import parse_variants
>>> [c.id for c in plan_cells(parse_variants(["learnable", "lc-frozen"], [8]), [0], {})]
['learnable__seed0', 'lc-frozen@8__seed0']
"""
from __future__ import annotations

import itertools
import os
import platform
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ..base.errors import LcdenseError
from ..base.files import write_json, write_text
from ..core.convert import ConversionReport, convert
from ..core.digest import frozen_digest
from ..core.inits import check_init
from ..cost.estimate import check_cell
from ..cost.memory import PeakMemory
from .config import cell_config
from .distributed import World, join
from .events import CellEnd, CellStart, Events
from .records import (
    CellRecord,
    PlanRecord,
    finished_cell,
    read_plan,
    write_cell,
    write_plan,
)
from .rundir import CellDir, RunDir, runs_folder
from .task import Cell, Task, get_task
from .trackers import check_loggers
from .trained import describe
from .variants import CellSpec, Variant

PACKAGES = ("torch", "torchvision", "timm", "ultralytics", "segmentation-models-pytorch", "albumentations",
            "pycocotools", "numpy", "lcdense")


class FrozenFiltersMoved(LcdenseError):
    """A cell's frozen filters changed during training: its numbers cannot be trusted."""


def plan_cells(variants: list[Variant], seeds: list[int], axes: dict[str, list[Any]]) -> list[CellSpec]:
    """Every cell of the grid, seed-major so that a partial run already covers all variants."""
    names = list(axes)
    points = [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]
    return [CellSpec(v, seed, point) for seed in seeds for point in points for v in variants]


#: The sweep axes of every task, the runner's own: axis → the config key it sets.
RUNNER_AXES: dict[str, str] = {"init": "conversion.init", "mid": "conversion.mid"}


def sweep_axes(task: Task) -> dict[str, str]:
    """Every axis ``task`` can be swept along besides E: its own ``sweep_axes``, then the runner's.

    >>> list(sweep_axes(get_task("classification")))
    ['width', 'depth', 'kernel_size', 'init', 'mid']

    Args:
        task: the task.

    Returns:
        Axis name → the dotted config key a value of it sets.
    """
    return {**task.sweep_axes, **RUNNER_AXES}


def resolve_axes(task: Task, requested: dict[str, list[Any]]) -> dict[str, str]:
    """The config key of each requested axis, in the order of :func:`sweep_axes` (so a grid's cell
    ids do not depend on the order its axes were given in). An axis the task cannot sweep, or one
    without values, is a one-line error naming the task's axes.

    Args:
        task: the task.
        requested: axis → its values.

    Returns:
        Axis → dotted config key, for the requested axes.
    """
    known = sweep_axes(task)
    for axis, values in requested.items():
        if axis not in known:
            raise LcdenseError(f"task '{task.name}' cannot sweep '{axis}'; it can sweep: E, {', '.join(sorted(known))}")
        if not values:
            raise LcdenseError(f"sweep axis '{axis}' needs at least one value")
    return {axis: key for axis, key in known.items() if axis in requested}


def gpu_list(name: str) -> tuple[int, ...]:
    """The GPUs of a device list such as ``0,1,2,3`` (empty for a single device)."""
    parts = [p.strip() for p in name.split(",") if p.strip()]
    if len(parts) < 2:
        return ()
    if not all(p.isdigit() for p in parts):
        raise LcdenseError(f"device list '{name}' must be GPU indices, e.g. 0,1,2,3")
    return tuple(int(p) for p in parts)


def pick_device(name: str) -> torch.device:
    """``auto`` → cuda if available, else cpu; ``cuda:1``, ``0`` and ``cpu`` work too (a list
    such as ``0,1`` → its first GPU)."""
    if gpus := gpu_list(name):
        name = str(gpus[0])
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.isdigit():
        name = f"cuda:{name}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LcdenseError(f"unknown device '{name}'; use auto, cpu, cuda or a GPU index") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LcdenseError(f"device '{name}' asked for, but no CUDA GPU is available; use --device cpu")
    return device


def setup_world(config: dict[str, Any]) -> tuple[World, torch.device]:
    """This process's rank (joining torchrun's process group, if launched by it) and device."""
    return join(pick_device(str(config["run"]["device"])))


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, git commit, host and device of this run."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    info = {"python": platform.python_version(), "platform": platform.platform(), "versions": versions,
            "lcdense_git_commit": commit, "device": str(device), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "started": datetime.now().isoformat(timespec="seconds")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def cell_init(cfg: dict[str, Any], variant: Variant) -> str:
    """The init of a variant's spatial filters: ``conversion.init`` for the frozen and LC variants,
    ``run.baseline_init`` (default kaiming_uniform, PyTorch's default) for the learnable baseline,
    so that an init sweep moves the random filters and not the baseline.

    >>> cfg = {"conversion": {"init": "orthogonal"}, "run": {"baseline_init": "kaiming_uniform"}}
    >>> cell_init(cfg, Variant("learnable")), cell_init(cfg, Variant("frozen"))
    ('kaiming_uniform', 'orthogonal')
    """
    if variant.spec.baseline:
        return cfg["run"].get("baseline_init", "kaiming_uniform")  # runs made before the key existed
    return cfg["conversion"]["init"]


def converter(cfg: dict[str, Any], spec: CellSpec, task: Task,
              counted: bool = True) -> Callable[[torch.nn.Module], ConversionReport]:
    """The conversion of ``spec``'s variant, seeded with the cell's init seed. The settings only
    its mode takes come from the variant (``E``, ``spatial``) or else from ``conversion.<setting>``.
    ``counted``: the report counts MACs at the task's input size (a rebuild skips it)."""
    conv = cfg["conversion"]
    variant = spec.variant
    kwargs: dict[str, Any] = {
        "init": cell_init(cfg, variant), "seed": spec.seed, "include": conv["include"], "exclude": conv["exclude"],
        "stem": conv["stem"], "head": conv["head"],
        "input_size": task.input_size(cfg) if counted else None, "batch_size": int(cfg["train"].get("batch_size", 1)),
    }
    from_variant = {"E": variant.E, "spatial": variant.spatial}
    kwargs.update({key: from_variant[key] if key in from_variant else conv[key] for key in variant.spec.options})
    return lambda model: convert(model, variant.mode, **kwargs)


def check_before_training(task: Task, config: dict[str, Any], cells: list[CellSpec]) -> None:
    """Refuse, before any cell trains, settings that would make a run silently inexact or fail late:
    an unknown ``run.baseline_init``, and ``conversion.impl: preconditioned`` for lc-frozen cells
    unless the task verifies that its optimizer trains that form exactly (plain SGD, no clipping)."""
    check_init(str(config["run"].get("baseline_init", "kaiming_uniform")))
    check_loggers(config["run"].get("loggers"))
    if config["run"].get("quiet") and config["run"].get("verbose"):
        raise LcdenseError("--quiet and --verbose contradict each other; pick one")
    preconditioned = config["conversion"]["impl"] == "preconditioned"
    if preconditioned and (config["conversion"]["mid"] or any(c.variant.spatial == "learnable" for c in cells)):
        raise LcdenseError("conversion.impl 'preconditioned' needs a frozen bank and no mid op: it cannot train "
                           "lc-learnable cells or conversion.mid; run those with conversion.impl=auto")
    if preconditioned and any(c.variant.spatial == "frozen" for c in cells):
        reason = task.preconditioned_inexact(config)
        if reason:
            raise LcdenseError(f"conversion.impl 'preconditioned' is exact only under plain SGD without gradient "
                               f"clipping, refused: {reason}; use conversion.impl=auto")


def _same_on_every_rank(world: World, digest: str, spec: CellSpec, when: str) -> None:
    digests = world.gather(digest)
    if len(set(digests)) > 1:
        raise FrozenFiltersMoved(f"cell {spec.id}: frozen filters differ between ranks {when} "
                                 f"({', '.join(d[:12] for d in digests)}); its results are not valid")


def run_cell(task: Task, data: Any, config: dict[str, Any], spec: CellSpec, run: RunDir,
             device: torch.device, axis_keys: dict[str, str], quiet: bool, world: World | None = None,
             gpus: tuple[int, ...] = (), events: Events | None = None) -> CellRecord:
    """Train and evaluate one cell of ``run``; returns its record, which rank 0 writes. Raises on moved filters.

    Under data parallelism every rank trains; the frozen digests are compared across ranks
    before and after training. Rank 0 emits the cell's epochs and its end to ``events``.
    """
    world = world or World()
    events = events or Events()
    cfg = cell_config(config, spec, axis_keys)
    cell_dir = run.cell(spec.id)
    if world.is_main:
        cell_dir.path.mkdir(parents=True, exist_ok=True)
    data_seed = spec.seed + int(cfg["run"]["data_seed_offset"])
    convert_fn = converter(cfg, spec, task)
    torch.manual_seed(spec.seed)
    model = task.build_model(cfg, data)
    lc = spec.variant.spec.blocks  # refused here, before the conversion builds the banks:
    predicted = check_cell(model, task.footprint(cfg), cfg, convert_fn, device, name=spec.id, expansion=spec.variant.E if lc else None,
                           spatial=spec.variant.spatial if lc else None, ranks=max(world.size, len(gpus) or 1))
    report = convert_fn(model)
    model = report.model.to(device)
    if world.is_main:
        write_text(cell_dir.conversion_txt, str(report) + "\n")
    digest_before = frozen_digest(model)
    _same_on_every_rank(world, digest_before, spec, "before training")
    quiet = quiet or not world.is_main
    init = cell_init(cfg, spec.variant)
    cell = Cell(variant=spec.variant.name, seed=spec.seed, init_seed=spec.seed, data_seed=data_seed,
                dir=cell_dir.path, device=device, convert=convert_fn, quiet=quiet,
                log=(lambda _msg: None) if quiet else events.print,  # the console, not train.log
                world=world, gpus=gpus, init=init, id=spec.id, events=events, verbose=bool(cfg["run"].get("verbose")),
                model_info=model_info(task, cfg, spec, task.model_facts(cfg, data)))
    began = time.perf_counter()
    if world.is_main:
        with open(cell.log_path, "a", encoding="utf-8") as f:
            f.write(f"--- lcdense: cell {spec.id}, {datetime.now().isoformat(timespec='seconds')} ---\n")
    with PeakMemory(device, held=[*model.parameters(), *model.buffers()]) as memory, \
            cell.framework_output(main=world.is_main):
        model, history = task.fit(model, data, cfg, cell)
        train_time = time.perf_counter() - began
        digest_after = frozen_digest(model)
        _same_on_every_rank(world, digest_after, spec, "after training")
        if digest_after != digest_before:
            raise FrozenFiltersMoved(
                f"cell {spec.id}: frozen filters changed during training "
                f"(digest {digest_before[:12]} -> {digest_after[:12]}); its results are not valid"
            )
        metrics = task.evaluate(model, data, cfg, cell)
        _check_evaluated_copies(cell, digest_after, spec)
    costs = {"train_time_s": train_time, "wall_time_s": time.perf_counter() - began, "peak_memory_mb": memory.peak_mb,
             "peak_memory_kind": memory.kind, "predicted_peak_memory_mb": predicted.peak_bytes / 2**20,
             "device": str(device), "world_size": world.size}
    record = make_cell_record(task, spec, data_seed, metrics, history, (digest_before, digest_after), report, costs,
                              _provenance(cell, digest_after), cfg)
    if world.is_main:
        cell.save_weights("model", model)
        record.models = _kept_models(cell_dir, digest_after, spec)
        events.emit(CellEnd(run_dir=run.path, cell_dir=cell_dir.path, record=record, model=model))
        write_cell(cell_dir, record)
        if cell.checkpoint_path.exists():
            cell.checkpoint_path.unlink()
    world.barrier()
    return record


def model_info(task: Task, cfg: dict[str, Any], spec: CellSpec, facts: dict[str, Any]) -> dict[str, Any]:
    """What rebuilds a cell's model without its data (:func:`rebuild_model`), kept in its weights files."""
    return {"task": task.name, "cell": spec.id, "variant": spec.variant.name, "kind": spec.variant.kind,
            "E": spec.variant.E, "seed": spec.seed, "axes": dict(spec.axes), "config": cfg, "facts": facts}


def rebuild_model(info: dict[str, Any]) -> torch.nn.Module:
    """A cell's model built and converted as the runner built it (same task build, same seeded
    conversion), from a weights file's :func:`model_info`: its frozen tensors are regenerated, its
    learned ones are still to be loaded (:func:`lcdense.engine.trained.restore`). Torch's global
    random state is left as it was.

    Args:
        info: The ``lcdense`` metadata of a weights file.

    Returns:
        The converted, untrained model on the CPU.
    """
    task, cfg = get_task(info["task"]), info["config"]
    spec = CellSpec(Variant(info["kind"], info["E"]), int(info["seed"]), dict(info["axes"]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = task.model_from_facts(cfg, info["facts"])
        return converter(cfg, spec, task, counted=False)(model).model


def _kept_models(cell_dir: CellDir, digest: str, spec: CellSpec) -> dict[str, dict[str, Any]]:
    """The record's ``models``: every weights file of the cell; each must hold the model's frozen filters."""
    models = {name: describe(path) for name, path in cell_dir.weights_files().items()}
    for name, entry in models.items():
        if entry["frozen_digest"] != digest:
            raise FrozenFiltersMoved(f"cell {spec.id}: the frozen filters of its kept '{name}' weights differ from the "
                                     f"model's (digest {entry['frozen_digest'][:12]} vs {digest[:12]})")
    return models


def _check_evaluated_copies(cell: Cell, digest: str, spec: CellSpec) -> None:
    """Every copy of the weights the task evaluated (e.g. detection's EMA) holds the model's frozen filters."""
    for name, other in cell.provenance.frozen_digests.items():
        if other != digest:
            raise FrozenFiltersMoved(f"cell {spec.id}: the frozen filters of the evaluated {name} weights differ from "
                                     f"the model's (digest {other[:12]} vs {digest[:12]}); its results are not valid")


def _provenance(cell: Cell, digest: str) -> dict[str, Any]:
    """The record's ``provenance``: precision, init, resume, primary weights and every evaluated copy's digest."""
    provenance = cell.provenance.to_dict(cell.init)
    provenance["frozen_digests"] = {"model": digest, **provenance["frozen_digests"]}
    return provenance


def make_cell_record(task: Task, spec: CellSpec, data_seed: int, metrics: dict[str, Any],
                     history: list[dict[str, Any]], digests: tuple[str, str], report: ConversionReport,
                     measured: dict[str, Any], provenance: dict[str, Any], cfg: dict[str, Any]) -> CellRecord:
    """The record of a finished cell (what ``cell.json`` holds), built in this one place; a paper
    run's cells also say which experiment, at which scale."""
    return CellRecord(
        id=spec.id, task=task.name, variant=spec.variant.name, kind=spec.variant.kind, mode=spec.variant.mode,
        spatial=spec.variant.spatial, E=spec.variant.E, axes=spec.axes, seed=spec.seed, init_seed=spec.seed,
        data_seed=data_seed, status="done", primary_metric=task.primary_metric,
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        extra_metrics={k: v for k, v in metrics.items() if not isinstance(v, (int, float))},
        history=history, frozen_digest_before=digests[0], frozen_digest_after=digests[1],
        costs={
            "trainable_params": report.params_after["trainable"], "frozen_params": report.params_after["frozen"],
            "total_params": report.params_after["total"], "forward_macs_per_sample": report.macs_after,
            "train_time_s": measured["train_time_s"], "wall_time_s": measured["wall_time_s"],
            "peak_memory_mb": measured["peak_memory_mb"], "peak_memory_kind": measured["peak_memory_kind"],
            "predicted_peak_memory_mb": measured["predicted_peak_memory_mb"], "device": measured["device"], "world_size": measured["world_size"], "host": platform.node(),
            "data_wait_share": _mean([h.get("data_wait_share") for h in history]),
        },
        conversion=report.to_dict(), provenance=provenance,
        paper=cfg["paper"] if cfg.get("paper", {}).get("experiment") else None,
    )


def _mean(values: list[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, (int, float))]
    return sum(numbers) / len(numbers) if numbers else None


def refuse_existing_run(out: str | Path, task: str, name: str) -> Path:
    """``<out>/<task>/<name>``, or an error if that run directory exists already."""
    run_dir = RunDir.at(out, task, name).path
    if run_dir.exists():
        raise LcdenseError(f"run directory {run_dir} already exists; pick another --name or continue it with --resume {run_dir}")
    return run_dir


def check_global_batch(config: dict[str, Any], ranks: int) -> None:
    """``train.batch_size`` is the global batch: it must split evenly over the ranks."""
    batch = int(config["train"].get("batch_size", ranks))
    if batch % ranks:
        raise LcdenseError(f"train.batch_size {batch} (the global batch) must be a multiple of the {ranks} ranks")


def new_run_dir(out: str | Path, task: str, name: str | None) -> Path:
    """A fresh ``<out>/<task>/<name>`` directory; an existing name is refused, never reused."""
    parent = runs_folder(out, task)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LcdenseError(f"cannot create the output directory {parent}: {exc.strerror}; choose another with --out") from None
    if not os.access(parent, os.W_OK):
        raise LcdenseError(f"output directory {parent} is not writable; choose another with --out")
    if name:
        run_dir = refuse_existing_run(out, task, name)
        run_dir.mkdir()
        return run_dir
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for suffix in itertools.count(1):
        run_dir = RunDir.at(out, task, stamp if suffix == 1 else f"{stamp}-{suffix}").path
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def execute(task: Task, config: dict[str, Any], run_dir: Path, cells: list[CellSpec],
            axis_keys: dict[str, str], cache_dir: Path, world: World | None = None,
            device: torch.device | None = None, events: Events | None = None) -> list[CellRecord]:
    """Run every unfinished cell of ``run_dir``; returns all finished records (old and new).

    A cell that fails (e.g. its frozen filters moved) is recorded as failed and the others go on;
    the caller reports failures. Ctrl-C stops at once; the cell's last epoch checkpoint remains.
    Under data parallelism (``world`` of several ranks, see :mod:`lcdense.engine.distributed`) every
    rank runs every cell and rank 0 writes; rank 0 prepares the data first (the embedded
    dataset is generated once), the other ranks then read it.
    """
    world = world or World()
    run = RunDir(run_dir)
    events = events if world.is_main and events is not None else Events()
    quiet = bool(config["run"].get("quiet"))
    say = print if world.is_main and not quiet else (lambda _m: None)
    device = device or pick_device(str(config["run"]["device"]))
    if config["run"].get("threads"):
        torch.set_num_threads(int(config["run"]["threads"]))
    if world.active and task.data_parallel != "torchrun":
        raise LcdenseError(f"task '{task.name}' does not train under torchrun; run it with lcdense run --ddp N")
    gpus = gpu_list(str(config["run"]["device"]))
    if gpus and task.data_parallel != "own":
        raise LcdenseError(f"run.device '{config['run']['device']}' lists several GPUs; start the run with "
                           f"lcdense run --device {config['run']['device']} (or --ddp N)")
    check_global_batch(config, world.size)
    prepared: list[Any] = []
    world.on_main(lambda: prepared.append(task.prepare_data(config, cache_dir)))  # errors reach every rank
    data = prepared[0] if prepared else task.prepare_data(config, cache_dir)
    if world.is_main:
        write_json(run.environment_json, {**environment(device), "world_size": world.size})
    records, failures = [], []
    for index, spec in enumerate(cells, 1):
        cell_dir = run.cell(spec.id)
        done = finished_cell(cell_dir)
        events.emit(CellStart(run_dir=run_dir, cell=spec, index=index, total=len(cells), skipped=done is not None))
        if done is not None:
            records.append(done)
            continue
        try:
            record = run_cell(task, data, config, spec, run, device, axis_keys, quiet, world, gpus, events)
        except FrozenFiltersMoved as exc:
            failures.append(str(exc))
            if world.is_main:
                write_cell(cell_dir, CellRecord.failed(spec, str(exc)))
            say(f"  FAILED: {exc}")
            continue
        records.append(record)
    if failures:
        raise LcdenseError(f"{len(failures)} cell(s) failed: {failures[0]}")
    return records


def save_run_config(run_dir: Path, config: dict[str, Any], cells: list[CellSpec], axis_keys: dict[str, str],
                    task: Task) -> PlanRecord:
    """Write the resolved config and the cell plan (what --resume and report read back); returns the plan."""
    RunDir(run_dir).write_config(config)
    paper = config["paper"] if config.get("paper", {}).get("experiment") else None
    plan = PlanRecord.of(task, cells, axis_keys, paper)
    write_plan(run_dir, plan)
    return plan


def load_run(run_dir: Path) -> tuple[dict[str, Any], Task, list[CellSpec], dict[str, str]]:
    """Config, task, cell plan and sweep-axis keys of an existing run directory."""
    config = RunDir(run_dir).read_config()
    cells, axis_keys = load_plan(run_dir)
    return config, get_task(config["task"]), cells, axis_keys


def load_plan(run_dir: Path) -> tuple[list[CellSpec], dict[str, str]]:
    """The cell plan saved by :func:`save_run_config`."""
    plan = read_plan(run_dir)
    return plan.specs(), plan.axis_keys


