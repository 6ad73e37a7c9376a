"""Evaluation suites: what a trained model is measured on after its run (``lcdense evaluate``).

A suite is a :class:`Suite` subclass registered by name in :data:`SUITES` (in code with
``@register_suite("name")``, from another package through the ``lcdense.suites`` entry-point
group, the class's ``name`` then set to the entry point's, as the built-in tasks' suites do). :meth:`Suite.run` takes the task, the trained model, the task's data and a
:class:`SuiteContext` (the cell, its config, the suite's settings, the files ``--data`` named, and
a :class:`Progress` that makes long suites resumable) and returns a :class:`SuiteResult`: numbers
that join the cell's record as ``<suite>/<name>`` metrics, the headline ones among them (gap
tables, intervals, plots and trackers treat those like the primary metric), and what it did.

Built in: ``corruptions`` (here; every task that implements :meth:`Task.evaluate_images`) and, from
the classification task, ``adversarial`` and ``cifar10.1``.

>>> "corruptions" in list_suites()
True
>>> get_suite("corruptons")
Traceback (most recent call last):
...
lcdense.base.errors.LcdenseError: unknown suite 'corruptons'; did you mean 'corruptions'? Known: adversarial, cifar10.1, corruptions
"""
from __future__ import annotations

import json
import statistics
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..base.errors import LcdenseError
from ..base.files import write_json
from ..base.registry import Registry
from .config import RUN_DEFAULTS, merge
from .corruptions import Corruption, corruption_names, severities

if TYPE_CHECKING:
    from torch import nn

    from .task import Cell, Task

SUITES: Registry[type[Suite]] = Registry("suite", group="lcdense.suites")


def register_suite(name: str) -> Callable[[type[Suite]], type[Suite]]:
    """Class decorator registering a :class:`Suite` subclass as ``name``.

    Args:
        name: The suite's name (``lcdense evaluate RUN_DIR --suite NAME``).

    Returns:
        The decorator; it sets the class's ``name``, registers it and returns it unchanged.
    """
    def decorate(cls: type[Suite]) -> type[Suite]:
        cls.name = name
        return SUITES.register(name, cls)

    return decorate


def list_suites() -> list[str]:
    """Names of every suite (registered in code or through the ``lcdense.suites`` entry points).

    Returns:
        The suite names, sorted.
    """
    return SUITES.names()


def get_suite(name: str) -> Suite:
    """A new instance of the suite registered as ``name`` (unknown names list the known ones).

    Args:
        name: A name of :func:`list_suites`.

    Returns:
        The suite.
    """
    return SUITES.get(name)()


def suite_names(value: Any) -> list[str]:
    """Suites as a list of names: a list, or a comma-separated string; each must exist.

    Args:
        value: e.g. ``"corruptions,adversarial"`` or ``["corruptions"]``.

    Returns:
        The names, in order, without repeats.
    """
    items = value.split(",") if isinstance(value, str) else list(value or [])
    names: list[str] = []
    for name in (str(i).strip() for i in items if str(i).strip()):
        SUITES.get(name)  # unknown names: one line listing the known ones
        names += [] if name in names else [name]
    return names


class Progress:
    """The finished steps of a suite on one cell, kept in a file so an interrupted evaluation resumes.

    Each :meth:`step` is computed once: its JSON-able result is written (atomically) before the next
    one starts; a later process with the same file returns it without computing it again.

    Args:
        path: The progress file (``cells/<id>/suites/<suite>.partial.json``), or None to keep nothing.
        settings: The suite's settings; a file written under other settings is started afresh.
    """

    def __init__(self, path: Path | None, settings: dict[str, Any] | None = None) -> None:
        self.path, self.settings = path, json.loads(json.dumps(settings or {}, default=str))
        self.steps: dict[str, Any] = {}
        self.reused = 0
        if path is not None and path.is_file():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError):
                saved = {}
            if isinstance(saved, dict) and saved.get("settings") == self.settings:
                self.steps = dict(saved.get("steps") or {})

    def step(self, key: str, compute: Callable[[], Any]) -> Any:
        """The result of step ``key``: the saved one, or ``compute()`` saved now.

        Args:
            key: The step's name, unique within the suite.
            compute: Computes the step's JSON-able result.

        Returns:
            The result.
        """
        if key in self.steps:
            self.reused += 1
            return self.steps[key]
        self.steps[key] = compute()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, {"settings": self.settings, "steps": self.steps})
        return self.steps[key]


@dataclass
class SuiteContext:
    """What a suite gets besides task, model and data.

    Attributes:
        cell: The cell as the task sees it (device, folder, provenance, log).
        config: The cell's config (its sweep point applied).
        settings: The suite's settings (its defaults, the run's ``evaluate.<suite>``, the caller's).
        data_path: The files the suite reads (``--data``), or None.
        progress: Steps already done (an interrupted evaluation resumes from them).
        notes: Lines the suite adds to its result (e.g. an attack it skipped and why).
    """

    cell: Cell
    config: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    data_path: Path | None = None
    progress: Progress = field(default_factory=lambda: Progress(None))
    notes: list[str] = field(default_factory=list)


@dataclass
class SuiteResult:
    """What a suite measured on one cell.

    Attributes:
        metrics: Name → number; they join the record as ``<suite>/<name>``.
        headline: The names among ``metrics`` that the report, its gaps and plots show.
        info: What the suite did (its source of data, counts, library versions).
        notes: Lines to show (e.g. an attack that was skipped, and why).
    """

    metrics: dict[str, float]
    headline: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Suite(ABC):
    """Base class of an evaluation suite.

    ``defaults`` are its settings (the run config's ``evaluate.<name>`` section overrides them);
    ``data_files`` says what ``--data`` names for it (empty: it reads no files); ``needs_data``: it
    cannot run without them.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    data_files: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False

    def unsupported(self, task: Task) -> str | None:
        """Why this suite cannot evaluate cells of ``task``, or None if it can."""
        return None

    @abstractmethod
    def run(self, task: Task, model: nn.Module, data: Any, context: SuiteContext) -> SuiteResult:
        """Evaluate ``model`` (trained, in eval mode, on ``context.cell.device``)."""


def suite_settings(suite: Suite, config: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings of ``suite``: its defaults ← ``config["evaluate"][name]`` ← ``overrides``; unknown keys are an error.

    Args:
        suite: The suite.
        config: The run's config.
        overrides: The caller's settings for this suite.

    Returns:
        The settings.
    """
    out = dict(suite.defaults)
    for where, given in ((f"evaluate.{suite.name}", (config.get("evaluate") or {}).get(suite.name)),
                         (f"settings of suite {suite.name}", overrides)):
        if isinstance(given, dict):
            out = merge(out, given, where=where)
    return out


@register_suite("corruptions")
class CorruptionsSuite(Suite):
    """The common corruptions at five severities, for any task that implements
    :meth:`~lcdense.engine.task.Task.evaluate_images`: its primary metric per corruption and severity.

    Generated from the task's validation split (:mod:`lcdense.engine.corruptions`), or, when ``--data``
    names them, read from published files (:meth:`~lcdense.engine.task.Task.published_corruptions`:
    CIFAR-10-C and ImageNet-C in their RobustBench layout, classification). Metrics (for primary metric
    ``m``): ``m/<corruption>/s<severity>``, ``m/<corruption>`` (mean over severities), ``m/s<severity>``
    (mean over corruptions), ``m`` (mean over all, the headline) and, for generated corruptions,
    ``m/clean`` (the same images uncorrupted).

    Settings: ``names`` (``all``: the 19 of CIFAR-10-C; ``common``: ImageNet-C's 15; groups or names),
    ``severities``, ``limit`` (the first N validation images; null: all) and ``seed``.
    """

    defaults: ClassVar[dict[str, Any]] = RUN_DEFAULTS["evaluate"]["corruptions"]
    data_files = "CIFAR-10-C (<corruption>.npy + labels.npy) or ImageNet-C (<corruption>/<severity>/<class>/) folder"

    def unsupported(self, task: Task) -> str | None:
        from .task import Task

        if type(task).evaluate_images is Task.evaluate_images:
            return f"task '{task.name}' does not evaluate transformed images (Task.evaluate_images)"
        return None

    def run(self, task: Task, model: nn.Module, data: Any, context: SuiteContext) -> SuiteResult:
        settings = context.settings
        names, levels = corruption_names(settings["names"]), severities(settings["severities"])
        limit = None if settings.get("limit") is None else int(settings["limit"])
        primary, config, cell = task.primary_metric, context.config, context.cell
        grid: dict[tuple[str, int], float] = {}
        metrics: dict[str, float] = {}
        if context.data_path is not None:
            found = 0
            for name, severity, corrupted in task.published_corruptions(context.data_path, data, config,
                                                                        names=names, severities=levels):
                found += 1
                grid[(name, severity)] = context.progress.step(
                    f"{name}/{severity}",
                    lambda: task.evaluate_images(model, corrupted, config, cell, limit=limit)[primary])
            if not found:
                raise LcdenseError(f"{context.data_path} holds none of the corruptions asked for")
            source = f"files: {context.data_path}"
        else:
            for name in names:
                for severity in levels:
                    transform = Corruption(name, severity, int(settings["seed"]))
                    grid[(name, severity)] = context.progress.step(
                        f"{name}/{severity}",
                        lambda: task.evaluate_images(model, data, config, cell, transform, limit=limit)[primary])
            metrics[f"{primary}/clean"] = context.progress.step(
                "clean", lambda: task.evaluate_images(model, data, config, cell, None, limit=limit)[primary])
            source = "generated from the validation split (imagecorruptions-imaug)"
        for (name, severity), value in grid.items():
            metrics[f"{primary}/{name}/s{severity}"] = float(value)
        for name in dict.fromkeys(n for n, _ in grid):
            metrics[f"{primary}/{name}"] = statistics.fmean(v for (n, _), v in grid.items() if n == name)
        for severity in sorted({s for _, s in grid}):
            metrics[f"{primary}/s{severity}"] = statistics.fmean(v for (_, s), v in grid.items() if s == severity)
        metrics[primary] = statistics.fmean(grid.values())
        return SuiteResult(metrics, [primary], {"source": source, "corruptions": sorted({n for n, _ in grid}),
                                                "severities": sorted({s for _, s in grid}), "limit": limit,
                                                "library": _version("imagecorruptions-imaug")})


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


__all__ = ["SUITES", "CorruptionsSuite", "Progress", "Suite", "SuiteContext", "SuiteResult", "get_suite",
           "list_suites", "register_suite", "suite_names", "suite_settings"]
