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

import fcntl
import fnmatch
import itertools
import math
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

from ..base.errors import LcdenseError, unknown_name
from ..base.files import DiskFull, human_bytes, write_json, write_text
from ..core.convert import ConversionReport, convert
from ..core.digest import frozen_digest
from ..core.inits import check_init
from ..cost.estimate import check_cell
from ..cost.memory import PeakMemory
from .config import cell_config
from .distributed import World, join
from .events import CellEnd, CellStart, Events
from .provenance import fp32_math, set_fp32_math
from .records import (
    CellRecord,
    PlanRecord,
    finished_cell,
    read_plan,
    write_cell,
    write_plan,
)
from .rundir import CellDir, RunDir, check_run_name, runs_folder
from .task import Cell, Scope, Task, get_task
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
RUNNER_AXES: dict[str, str] = {"init": "conversion.init", "mid": "conversion.mid", "scope": "conversion.scope"}


def sweep_axes(task: Task) -> dict[str, str]:
    """Every axis ``task`` can be swept along besides E: its own ``sweep_axes``, then the runner's.

    >>> list(sweep_axes(get_task("classification")))
    ['width', 'depth', 'kernel_size', 'model', 'init', 'mid', 'scope']

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
    ``run.baseline_init`` (default kaiming_uniform, PyTorch's default; ``native``: the architecture's
    own init, as built) for the learnable baseline, so that an init sweep moves the random filters
    and not the baseline.

    >>> cfg = {"conversion": {"init": "orthogonal"}, "run": {"baseline_init": "kaiming_uniform"}}
    >>> cell_init(cfg, Variant("learnable")), cell_init(cfg, Variant("frozen"))
    ('kaiming_uniform', 'orthogonal')
    """
    if variant.spec.baseline:
        return cfg["run"].get("baseline_init", "kaiming_uniform")  # runs made before the key existed
    return cfg["conversion"]["init"]


def scope_name(task: Task, cfg: dict[str, Any]) -> str:
    """The conversion scope of a (cell's) config: ``conversion.scope``, or the task's default; an
    unknown name is a one-line error naming the task's scopes.

    >>> scope_name(get_task("segmentation"), {"conversion": {"scope": None}})
    'encoder+decoder'
    """
    name = cfg["conversion"].get("scope") or task.default_scope  # runs made before the key existed: the default
    if name not in task.scopes:
        raise LcdenseError(f"{unknown_name('conversion scope', str(name), task.scopes)} (task '{task.name}')")
    return name


def _scope_stem(user: bool | str, scope: Scope) -> bool | str:
    """``conversion.stem`` within the scope's ``stem``: the narrower one; contradicting ones are an error."""
    if user is True or user == scope.stem:
        return scope.stem
    if scope.stem is True:
        return user
    raise LcdenseError(f"conversion.stem {str(user).lower()} contradicts conversion scope '{scope.name}' (stem "
                       f"{str(scope.stem).lower()}); set conversion.stem=true or pick another conversion.scope")


def converter(cfg: dict[str, Any], spec: CellSpec, task: Task,
              counted: bool = True) -> Callable[[torch.nn.Module], ConversionReport]:
    """The conversion of ``spec``'s variant, seeded with the cell's init seed, within the cell's
    conversion scope (:func:`scope_name`: its excludes join ``conversion.exclude``; the report and
    the record name it). The settings only its mode takes come from the variant (``E``,
    ``spatial``) or else from ``conversion.<setting>``. ``counted``: the report counts MACs at the
    task's input size (a rebuild and the memory estimate skip it)."""
    conv = cfg["conversion"]
    variant, name = spec.variant, scope_name(task, cfg)
    kwargs: dict[str, Any] = {
        "init": cell_init(cfg, variant), "seed": spec.seed, "include": conv["include"], "head": conv["head"],
        "input_size": task.input_size(cfg) if counted else None, "batch_size": int(cfg["train"].get("batch_size", 1)),
    }
    from_variant = {"E": variant.E, "spatial": variant.spatial}
    kwargs.update({key: from_variant[key] if key in from_variant else conv[key] for key in variant.spec.options})

    def convert_cell(model: torch.nn.Module) -> ConversionReport:
        scope = task.scope(name, model)
        exclude = [*(conv["exclude"] or []), *scope.exclude]
        report = convert(model, variant.mode, exclude=exclude or None, stem=_scope_stem(conv["stem"], scope),
                         **kwargs)
        report.scope = scope.label()
        for layer in report.layers:  # say which excludes were the scope's
            user = any(fnmatch.fnmatchcase(layer.name, p) for p in conv["exclude"] or ())
            if layer.reason == "matched by exclude" and not user:
                layer.reason = f"outside scope '{scope.name}' (learnable)"
        return report

    return convert_cell


def check_before_training(task: Task, config: dict[str, Any], cells: list[CellSpec]) -> None:
    """Refuse, before any cell trains, settings that would make a run silently inexact or fail late:
    a run name that would leave ``--out``, an unknown ``run.baseline_init`` or conversion scope
    (``conversion.scope`` or a value of the ``scope`` axis), and ``conversion.impl: preconditioned`` for lc-frozen cells
    unless the task verifies that its optimizer trains that form exactly (plain SGD, no clipping)."""
    check_init(str(config["run"].get("baseline_init", "kaiming_uniform")), native=True)
    for scope in {config["conversion"].get("scope"), *(c.axes["scope"] for c in cells if "scope" in c.axes)}:
        scope_name(task, {"conversion": {"scope": scope}})
    if config["run"].get("name"):  # before any data is prepared or folder created
        check_run_name(str(config["run"]["name"]))
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
             events: Events | None = None) -> CellRecord:
    """Train and evaluate one cell of ``run``; returns its record, which rank 0 writes. Raises on moved filters.

    Under data parallelism every rank trains; the frozen digests are compared across ranks
    before and after training, and every rank's peak memory is recorded beside the per-rank
    prediction. Rank 0 emits the cell's epochs and its end to ``events``.
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
    lc = spec.variant.spec.blocks  # refused here, before the conversion builds the banks; rank 0
    # estimates (every rank's share is the same) and every rank gets its estimate or its refusal
    predicted = world.on_main(lambda: check_cell(
        model, task.footprint(cfg), cfg, converter(cfg, spec, task, counted=False), device, name=spec.id,
        expansion=spec.variant.E if lc else None, spatial=spec.variant.spatial if lc else None, ranks=world.size))
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
                world=world, init=init, id=spec.id, events=events, verbose=bool(cfg["run"].get("verbose")),
                tf32=bool(cfg.get("train", {}).get("tf32", False)),
                model_info=model_info(task, cfg, spec, task.model_facts(cfg, data)))
    # the fp32 math mode, explicit for every cell: training, evaluation and FGSM run in it
    cell.provenance.ran_in(set_fp32_math(device, cell.tf32))
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
        cell.provenance.ran_in(fp32_math(device))  # what was in force at the end (a library could have changed it)
        _check_evaluated_copies(cell, digest_after, spec)
    peaks = world.gather(memory.peak_mb)  # each rank's own peak, in rank order
    costs = {"train_time_s": train_time, "wall_time_s": time.perf_counter() - began, "peak_memory_mb": max(peaks),
             "peak_memory_mb_per_rank": peaks, "peak_memory_kind": memory.kind, "predicted_peak_memory_mb": predicted.peak_bytes / 2**20,
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
    diverged = non_finite(metrics, history)
    return CellRecord(
        id=spec.id, task=task.name, variant=spec.variant.name, kind=spec.variant.kind, mode=spec.variant.mode,
        spatial=spec.variant.spatial, E=spec.variant.E, axes=spec.axes, seed=spec.seed, init_seed=spec.seed,
        data_seed=data_seed, status="diverged" if diverged else "done", error=diverged,
        primary_metric=task.primary_metric,
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        extra_metrics={k: v for k, v in metrics.items() if not isinstance(v, (int, float))},
        history=history, frozen_digest_before=digests[0], frozen_digest_after=digests[1],
        costs={
            "trainable_params": report.params_after["trainable"], "frozen_params": report.params_after["frozen"],
            "total_params": report.params_after["total"], "forward_macs_per_sample": report.macs_after,
            "train_time_s": measured["train_time_s"], "wall_time_s": measured["wall_time_s"],
            "peak_memory_mb": measured["peak_memory_mb"], "peak_memory_kind": measured["peak_memory_kind"],
            "peak_memory_mb_per_rank": measured["peak_memory_mb_per_rank"],
            "predicted_peak_memory_mb": measured["predicted_peak_memory_mb"], "device": measured["device"], "world_size": measured["world_size"], "host": platform.node(),
            "data_wait_share": _mean([h.get("data_wait_share") for h in history]),
        },
        conversion=report.to_dict(), provenance=provenance,
        paper=cfg["paper"] if cfg.get("paper", {}).get("experiment") else None,
    )


def non_finite(metrics: dict[str, Any], history: list[dict[str, Any]]) -> str | None:
    """What went non-finite (NaN or infinite) in a cell's final metrics or its epochs' numbers, or
    None: a cell whose loss diverged may still report a finite, chance-level accuracy.

    >>> non_finite({"top1": 0.1}, [{"epoch": 1, "train_loss": 2.3}, {"epoch": 2, "train_loss": float("nan")}])
    'train_loss is nan at epoch 2'
    >>> non_finite({"top1": 0.9}, [{"epoch": 1, "train_loss": 0.4}]) is None
    True

    Args:
        metrics: the final metrics.
        history: one record per epoch.

    Returns:
        e.g. ``'train_loss is nan at epoch 2'`` (the first one), or None.
    """
    for entry in history:
        for key, value in entry.items():
            if isinstance(value, (int, float)) and not math.isfinite(value):
                return f"{key} is {value} at epoch {entry.get('epoch', '?')}"
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not math.isfinite(value):
            return f"{key} is {value}"
    return None


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
    """A fresh ``<out>/<task>/<name>`` directory; an existing name is refused, never reused, and so
    is a name that is not a plain directory name (nothing is created then)."""
    if name:
        check_run_name(name)
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


def prepare_data(task: Task, config: dict[str, Any], cache_dir: Path) -> Any:
    """The task's data (``task.prepare_data``), one process at a time: the first to come generates
    the embedded dataset into ``cache_dir``, the others find it there.

    Under data parallelism every rank calls this before it joins the process group: no rank then
    waits in a collective (NCCL gives up after 10 minutes by default) while another generates,
    converts or scans a large dataset, and a framework that synchronises the ranks when imported
    (ultralytics does) meets no group yet. The lock is a file in ``cache_dir`` (``flock``, which
    also holds between the machines of a shared file system that supports it).

    Args:
        task: the task.
        config: the run's config.
        cache_dir: where generated datasets are cached.

    Returns:
        What ``task.prepare_data`` returns.
    """
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LcdenseError(f"cannot create the dataset cache {cache_dir}: {exc.strerror}; the output directory must be "
                           "writable: choose another with --out (or run.cache_dir)") from None
    with open(cache_dir / ".prepare.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return task.prepare_data(config, cache_dir)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def execute(task: Task, config: dict[str, Any], run_dir: Path, cells: list[CellSpec],
            axis_keys: dict[str, str], data: Any, world: World | None = None,
            device: torch.device | None = None, events: Events | None = None) -> list[CellRecord]:
    """Run every unfinished cell of ``run_dir`` on ``data`` (from :func:`prepare_data`); returns all
    finished records (old and new).

    A cell that fails (e.g. its frozen filters moved) is recorded as failed and the others go on;
    the caller reports failures. Ctrl-C stops at once; the cell's last epoch checkpoint remains.
    Under data parallelism (``world`` of several ranks, see :mod:`lcdense.engine.distributed`) every
    rank runs every cell and rank 0 writes.
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
    if gpu_list(str(config["run"]["device"])):
        raise LcdenseError(f"run.device '{config['run']['device']}' lists several GPUs; start the run with "
                           f"lcdense run --device {config['run']['device']} (or --ddp N)")
    check_global_batch(config, world.size)
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
            record = run_cell(task, data, config, spec, run, device, axis_keys, quiet, world, events)
        except DiskFull as exc:
            raise LcdenseError(f"{exc}; {space_needed(run, cells[index - 1:], exc)}; the files written before are "
                               f"intact: free space, then continue with --resume {run_dir}") from None
        except FrozenFiltersMoved as exc:
            failures.append(str(exc))
            if world.is_main:
                write_cell(cell_dir, CellRecord.failed(spec, str(exc)))
            say(f"  FAILED: {exc}")
            continue
        if record.status == "diverged":
            say(f"  DIVERGED: cell {spec.id}: {record.error}; left out of the statistics and gaps")
        records.append(record)
    if failures:
        raise LcdenseError(f"{len(failures)} cell(s) failed: {failures[0]}")
    return records


def check_diverged(records: list[CellRecord], config: dict[str, Any]) -> None:
    """Refuse a run with diverged cells (after its report was written), unless ``run.allow_diverged``.

    Args:
        records: the run's finished cells.
        config: the run's config.

    Raises:
        LcdenseError: one line naming the diverged cells and what went non-finite.
    """
    diverged = [r for r in records if r.status == "diverged"]
    if diverged and not config["run"].get("allow_diverged"):
        first = diverged[0]
        raise LcdenseError(f"{len(diverged)} cell(s) diverged (loss or metrics not finite), first {first.id}: "
                           f"{first.error}; they are marked in the table and left out of the gaps. Lower train.lr "
                           "in a new run, or accept them with --allow-diverged (run.allow_diverged)")


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def space_needed(run: RunDir, unfinished: list[CellSpec], error: DiskFull) -> str:
    """How much more space the unfinished cells need, estimated from the largest cell folder (a
    finished one, or the failing one with the file it could not write).

    Args:
        run: the run directory.
        unfinished: the cells not finished yet, the failing one first.
        error: the failed write.

    Returns:
        e.g. ``the run needs about 12.0 MiB more for its 3 unfinished cell(s)``.
    """
    sizes = [_size(cell.path) for cell in run.cell_dirs() if finished_cell(cell) is not None]
    failing = run.cell(unfinished[0].id).path if unfinished else None
    if failing is not None:
        sizes.append(_size(failing) + error.needed)
    per_cell = max(sizes or [error.needed])
    return (f"the run needs about {human_bytes(per_cell * max(len(unfinished), 1))} more for its "
            f"{len(unfinished)} unfinished cell(s)")


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


