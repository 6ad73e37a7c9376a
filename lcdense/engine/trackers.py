"""Experiment trackers: TensorBoard, MLflow and Weights & Biases, as run callbacks (all optional).

``run.loggers`` (``--logger NAME``, ``lcdense.run(..., loggers=[...])``) turns them on; each needs
its extra (``pip install "lcdense[tensorboard]"``, ``[mlflow]``, ``[wandb]``). Every tracker logs,
per cell, the cell's config, each epoch's metrics (step = epoch), the final metrics, the frozen
digests and the costs, and per run the gap table. None reaches the network unless the user
configured a remote:

- ``tensorboard``: event files in ``RUN_DIR/tensorboard/<cell id>/`` and ``RUN_DIR/tensorboard/gaps/``;
- ``mlflow``: a SQLite store in the run directory (``RUN_DIR/mlflow.db``, artifacts in
  ``RUN_DIR/mlartifacts``; MLflow's file store is in maintenance mode), unless
  ``MLFLOW_TRACKING_URI`` names another; experiment ``lcdense-<task>``, one parent run per run
  directory and one child run per cell; MLflow's telemetry is off unless the user turned it on;
- ``wandb``: offline runs in ``RUN_DIR/wandb/`` (``wandb sync`` uploads them later), unless
  ``WANDB_MODE`` says otherwise; project ``WANDB_PROJECT`` (default ``lcdense``), group = the run.

Every tracker is a class in :data:`TRACKERS` that names the extra installing it and the modules
it needs. Another package adds one through the ``lcdense.trackers`` entry-point group
(``[project.entry-points."lcdense.trackers"] mine = "mypkg:MyTracker"``, a :class:`Tracker`
subclass); ``--logger mine`` then turns it on.

>>> check_loggers("nope")
Traceback (most recent call last):
...
lcdense.base.errors.LcdenseError: unknown logger 'nope'; Known: mlflow, tensorboard, wandb
>>> flat({"train": {"lr": 0.1, "epochs": 2}, "run": {"E": [8]}})
{'train.lr': 0.1, 'train.epochs': 2, 'run.E': '[8]'}
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from ..base.errors import require_extra
from ..base.registry import Registry
from .cell_files import per_unit_results
from .config import cell_config
from .events import Callback, CellEnd, CellStart, EpochEnd, RunEnd, RunStart, SuiteEnd
from .records import read_plan
from .rundir import RunDir

#: Tracker name (``--logger NAME``) → its :class:`Tracker` class.
TRACKERS: Registry[type[Tracker]] = Registry("logger", group="lcdense.trackers")


def logger_names(value: Any) -> list[str]:
    """``run.loggers`` as a list of names: a list, or a comma-separated string (``"tensorboard,mlflow"``)."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return [str(item).strip() for item in items if str(item).strip()]


def check_loggers(value: Any) -> list[str]:
    """The requested loggers, refused (one line) if unknown or if their extra is missing.

    Args:
        value: ``run.loggers`` (a list of names or a comma-separated string).

    Returns:
        The names, in order.
    """
    names = logger_names(value)
    for name in names:
        tracker = TRACKERS.get(name)
        require_extra(tracker.extra, *tracker.modules, what=f"--logger {name}")
    return names


def make_loggers(config: dict[str, Any]) -> list[Callback]:
    """The tracker callbacks that ``config["run"]["loggers"]`` asks for.

    Args:
        config: the run's config.

    Returns:
        One new tracker per name in ``run.loggers``.
    """
    return [TRACKERS.get(name)() for name in check_loggers(config["run"].get("loggers"))]


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys; lists and other values that are not scalars as text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return out


def numbers(values: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of ``values`` (booleans excluded) as floats."""
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def cell_finals(event: CellEnd) -> dict[str, float]:
    """What every tracker logs at a cell's end: ``final/<metric>``, ``cost/<cost>`` and, for
    per-class results, ``per_<unit>/<name>/<metric>``."""
    record = event.record
    out = {f"final/{k}": v for k, v in numbers(record.metrics).items()}
    out.update({f"cost/{k}": v for k, v in numbers(record.costs).items()})
    for unit, results in per_unit_results(record.extra_metrics).items():
        for name, values in results.items():
            out.update({f"per_{unit}/{name}/{k}": v for k, v in numbers(values).items()})
    return out


def cell_digests(event: CellEnd) -> dict[str, str]:
    """The frozen digests of a finished cell: before and after training, and of every evaluated copy."""
    record = event.record
    digests = {"frozen_digest_before": record.frozen_digest_before or "", "frozen_digest_after": record.frozen_digest_after or ""}
    for name, digest in ((record.provenance or {}).get("frozen_digests") or {}).items():
        digests[f"frozen_digest_{name}"] = digest
    return digests


def gap_scalars(group: dict[str, Any], primary: str) -> list[tuple[str, float]]:
    """(tag, mean) of a sweep point's gaps: ``gap/<gap>`` in the ``primary`` metric, ``gap/<metric>/<gap>``
    in any other (a recipe's last-epoch metric, an evaluation suite's headline metric).

    >>> group = {"gaps": [{"gap": "frozen - learnable", "metric": "top1", "mean": -0.1},
    ...                   {"gap": "frozen - learnable", "metric": "top1_last", "mean": -0.2}]}
    >>> gap_scalars(group, "top1")
    [('gap/frozen - learnable', -0.1), ('gap/top1_last/frozen - learnable', -0.2)]
    """
    out = [(f"gap/{g['gap']}" if g.get("metric", primary) == primary else f"gap/{g['metric']}/{g['gap']}", g["mean"])
           for g in group.get("gaps", []) if isinstance(g.get("mean"), (int, float))]
    for metric, gaps in group.get("suite_gaps", {}).items():
        out += [(f"gap/{metric}/{g['gap']}", g["mean"]) for g in gaps if isinstance(g.get("mean"), (int, float))]
    return out


def epoch_numbers(event: EpochEnd) -> dict[str, float]:
    return {k: v for k, v in numbers(event.metrics).items() if k != "epoch"}


class Tracker(Callback):
    """Base class of a tracker: the run directory, its config and plan. A tracker attaches to the
    run at its first event (run start; in a cluster job, which runs cells only, its first cell's
    start; the report of finished jobs, at run end). ``extra`` and ``modules``: the extra that
    installs what it needs, and the modules checked before a run starts."""

    extra: ClassVar[str]
    modules: ClassVar[tuple[str, ...]]

    def __init__(self) -> None:
        self.run_dir: Path | None = None
        self.config: dict[str, Any] = {}
        self.plan: Any = None

    def attach(self, run_dir: Path, config: dict[str, Any] | None = None, plan: Any = None) -> None:
        """Remember the run (reading its config and plan where the event does not carry them)."""
        if self.run_dir is not None:
            return
        self.run_dir = run_dir
        self.config = config if config is not None else RunDir(run_dir).read_config()
        self.plan = plan if plan is not None else read_plan(run_dir)
        self.opened()

    def opened(self) -> None:
        """Called once the run is known (a tracker connects here)."""

    def on_run_start(self, event: RunStart) -> None:
        self.attach(event.run_dir, event.config, event.plan)

    def on_cell_start(self, event: CellStart) -> None:
        if not event.skipped:
            self.attach(event.run_dir)
            self.cell_started(event)

    def cell_started(self, event: CellStart) -> None:
        """A cell that trains now (not one finished earlier) starts."""

    def on_run_end(self, event: RunEnd) -> None:
        self.attach(event.run_dir, event.config, event.plan)
        if event.table:
            self.run_ended(event)

    def run_ended(self, event: RunEnd) -> None:
        """The run's report is written (``event.table`` is the gap table)."""

    def on_suite_end(self, event: SuiteEnd) -> None:
        self.attach(event.run_dir)
        self.suite_ended(event)

    def suite_ended(self, event: SuiteEnd) -> None:
        """An evaluation suite finished on a cell (``lcdense evaluate``): log ``event.metrics`` as its finals."""

    def cell_config(self, event: CellStart) -> dict[str, Any]:
        """The config the cell trains with (its sweep point applied), with its variant and seed."""
        cfg = cell_config(self.config, event.cell, self.plan.axis_keys)
        return {**flat(cfg), "cell.id": event.cell.id, "cell.variant": event.cell.variant.name,
                "cell.seed": event.cell.seed}


@TRACKERS.register("tensorboard")
class TensorBoardLogger(Tracker):
    """``--logger tensorboard``: one event-file directory per cell, and one for the gap table."""

    extra = "tensorboard"
    modules = ("tensorboard",)

    def __init__(self) -> None:
        super().__init__()
        self.writers: dict[str, Any] = {}

    def _writer(self, name: str) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        if name not in self.writers:
            assert self.run_dir is not None
            self.writers[name] = SummaryWriter(log_dir=str(RunDir(self.run_dir).tensorboard(name)))
        return self.writers[name]

    def cell_started(self, event: CellStart) -> None:
        config = self.cell_config(event)
        self._writer(event.cell.id).add_text("config", "\n".join(f"    {k}: {v}" for k, v in config.items()))

    def on_epoch_end(self, event: EpochEnd) -> None:
        if self.run_dir is None:
            return
        writer = self._writer(event.cell_id)
        for key, value in epoch_numbers(event).items():
            writer.add_scalar(f"epoch/{key}", value, event.epoch)
        writer.flush()

    def on_cell_end(self, event: CellEnd) -> None:
        if event.record.id not in self.writers:
            return
        writer = self.writers[event.record.id]
        step = len(event.record.history)
        for key, value in cell_finals(event).items():
            writer.add_scalar(key, value, step)
        writer.add_text("frozen_digests", "\n".join(f"    {k}: {v}" for k, v in cell_digests(event).items()))
        writer.close()
        self.writers.pop(event.record.id)

    def run_ended(self, event: RunEnd) -> None:
        writer = self._writer("gaps")
        writer.add_text("gap_table", event.table)
        for group, stats in (event.summary.groups if event.summary else {}).items():
            for tag, gap in gap_scalars(stats, event.summary.primary_metric):
                writer.add_scalar(tag + (f" [{group}]" if group else ""), gap, 0)
        writer.close()
        self.writers.pop("gaps")

    def suite_ended(self, event: SuiteEnd) -> None:
        writer = self._writer(event.record.id)
        for key, value in event.metrics.items():
            writer.add_scalar(f"final/{key}", value, len(event.record.history))
        writer.close()
        self.writers.pop(event.record.id)


@TRACKERS.register("mlflow")
class MLflowLogger(Tracker):
    """``--logger mlflow``: a parent MLflow run per run directory, a child run per cell."""

    extra = "mlflow"
    modules = ("mlflow",)

    def __init__(self) -> None:
        super().__init__()
        self.client: Any = None
        self.experiment = ""
        self.parent = ""
        self.runs: dict[str, str] = {}

    def opened(self) -> None:
        assert self.run_dir is not None
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        remote = os.environ.get("MLFLOW_TRACKING_URI")
        self.client = MlflowClient(tracking_uri=remote or f"sqlite:///{RunDir(self.run_dir).mlflow_db.resolve()}")
        name = f"lcdense-{self.plan.task}"
        found = self.client.get_experiment_by_name(name)
        local = None if remote else RunDir(self.run_dir).mlartifacts.resolve().as_uri()
        self.experiment = found.experiment_id if found else self.client.create_experiment(name, artifact_location=local)
        where = str(self.run_dir.resolve())
        earlier = [r for r in self.client.search_runs([self.experiment], filter_string=f"tags.`lcdense.run_dir` = '{where}'")
                   if "mlflow.parentRunId" not in r.data.tags]  # a resumed run, or its cluster jobs: one parent run
        self.parent = earlier[0].info.run_id if earlier else self.client.create_run(
            self.experiment, run_name=self.run_dir.name, tags={"lcdense.run_dir": where}).info.run_id

    def cell_started(self, event: CellStart) -> None:
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment, run_name=event.cell.id,
                                     tags={"mlflow.parentRunId": self.parent, "lcdense.cell": event.cell.id,
                                           "lcdense.run_dir": str(event.run_dir.resolve())})
        self.runs[event.cell.id] = run.info.run_id
        params = [Param(k, str(v)[:500]) for k, v in self.cell_config(event).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=params[start:start + 100])

    def on_epoch_end(self, event: EpochEnd) -> None:
        if event.cell_id not in self.runs:
            return
        from mlflow.entities import Metric

        now = _millis()
        self.client.log_batch(self.runs[event.cell_id], metrics=[
            Metric(key, value, now, event.epoch) for key, value in epoch_numbers(event).items()])

    def on_cell_end(self, event: CellEnd) -> None:
        run_id = self.runs.pop(event.record.id, None)
        if run_id is None:
            return
        from mlflow.entities import Metric, RunTag

        now, step = _millis(), len(event.record.history)
        metrics = [Metric(k.replace("@", "_"), v, now, step) for k, v in cell_finals(event).items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000])
        self.client.log_batch(run_id, tags=[RunTag(f"lcdense.{k}", v) for k, v in cell_digests(event).items()])
        self.client.set_terminated(run_id)

    def run_ended(self, event: RunEnd) -> None:
        self.client.log_text(self.parent, event.table + "\n", "gaps.md")
        self.client.set_terminated(self.parent)

    def suite_ended(self, event: SuiteEnd) -> None:
        from mlflow.entities import Metric

        where = str(event.run_dir.resolve())
        found = self.client.search_runs([self.experiment], filter_string=f"tags.`lcdense.cell` = '{event.record.id}' and "
                                                                         f"tags.`lcdense.run_dir` = '{where}'")
        run_id = found[0].info.run_id if found else self.client.create_run(
            self.experiment, run_name=event.record.id, tags={"mlflow.parentRunId": self.parent,
                                                             "lcdense.cell": event.record.id, "lcdense.run_dir": where}).info.run_id
        now, step = _millis(), len(event.record.history)
        self.client.log_batch(run_id, metrics=[Metric(f"final/{k}".replace("@", "_"), v, now, step)
                                               for k, v in event.metrics.items()])
        self.client.set_terminated(run_id)


def _millis() -> int:
    import time

    return int(time.time() * 1000)


@TRACKERS.register("wandb")
class WandbLogger(Tracker):
    """``--logger wandb``: one W&B run per cell (offline unless ``WANDB_MODE`` is set), grouped by
    run directory, and one ``gaps`` run with the gap table."""

    extra = "wandb"
    modules = ("wandb",)

    def __init__(self) -> None:
        super().__init__()
        self.runs: dict[str, Any] = {}

    def _init(self, name: str, config: dict[str, Any], job_type: str) -> Any:
        import wandb

        assert self.run_dir is not None
        return wandb.init(project=os.environ.get("WANDB_PROJECT", "lcdense"), name=name, group=self.run_dir.name,
                          job_type=job_type, config=config, dir=str(self.run_dir),
                          mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new",
                          settings=wandb.Settings(silent=True, console="off"))

    def cell_started(self, event: CellStart) -> None:
        self.runs[event.cell.id] = self._init(event.cell.id, self.cell_config(event), "cell")

    def on_epoch_end(self, event: EpochEnd) -> None:
        if event.cell_id in self.runs:
            self.runs[event.cell_id].log({f"epoch/{k}": v for k, v in epoch_numbers(event).items()}, step=event.epoch)

    def on_cell_end(self, event: CellEnd) -> None:
        run = self.runs.pop(event.record.id, None)
        if run is None:
            return
        run.summary.update({**cell_finals(event), **cell_digests(event)})
        run.finish()

    def suite_ended(self, event: SuiteEnd) -> None:
        run = self._init(event.record.id, {"cell.id": event.record.id, "suite": event.suite}, "evaluate")
        run.summary.update({f"final/{k}": v for k, v in event.metrics.items()})
        run.finish()

    def run_ended(self, event: RunEnd) -> None:
        import wandb

        run = self._init("gaps", {"task": self.config.get("task")}, "report")
        rows = [[group or "", g["gap"], g.get("mean"), str(g.get("ci95"))]
                for group, stats in (event.summary.groups if event.summary else {}).items() for g in stats.get("gaps", [])]
        run.log({"gaps": wandb.Table(columns=["sweep point", "gap", "mean", "ci95"], data=rows)})
        run.summary["gap_table"] = event.table
        run.finish()


__all__ = ["TRACKERS", "MLflowLogger", "TensorBoardLogger", "Tracker", "WandbLogger", "check_loggers", "logger_names",
           "make_loggers"]
