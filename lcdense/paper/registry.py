"""The paper's experiments, read from the ``experiments.yaml`` shipped in this package.

>>> exp = get_experiment("table1-cifar10")
>>> exp.source, exp.grid["E"], exp.published[0].values[0].mean
('Table 1', [128], 92.34)
>>> get_experiment("fig7a-kernel-size").axes
{'kernel_size': [3, 5, 7, 9]}
>>> exp.recipe_version, [p.version for p in exp.published]
('arxiv-v2', ['iclr2024', 'arxiv-v2'])
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..base.errors import LcdenseError, unknown_name

GRID_KEYS = ("variants", "E", "seeds")  # the rest of a grid are sweep axes of the experiment's task
SCALES = ("full", "smoke")
LCDENSE = "lcdense"  # recipe_version of a recipe that is lcdense's choice, not the paper's
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the lcdense source tree (where configs/ lives)


@dataclass(frozen=True)
class PublishedValue:
    """One published number: a variant (at a sweep point) with its mean and std (None if not given)."""

    variant: str
    mean: float
    std: float | None
    axes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Published:
    """The numbers one source (e.g. the ICLR submission's Table 1) gives for an experiment: the
    paper version it is in (a key of :func:`versions`), the metric, the values, and over how many
    runs each value is (``runs``; ``runs_note`` where that number is not the paper's own)."""

    source: str
    metric: str
    values: tuple[PublishedValue, ...]
    version: str
    runs: int | None = None
    runs_note: str | None = None


@dataclass(frozen=True)
class PublishedGap:
    """A gap the paper states in its text (e.g. Section 4's "1.6-1.9% difference"), not as a table
    of means: ``gap`` is a gap of the run's summary (``"frozen - learnable"``) at sweep point
    ``axes``, in the published unit; either ``mean`` or the range ``low``..``high``."""

    source: str
    version: str
    metric: str
    gap: str
    axes: dict[str, Any]
    mean: float | None = None
    low: float | None = None
    high: float | None = None
    runs: int | None = None
    note: str | None = None


@dataclass(frozen=True)
class Experiment:
    """One experiment of the paper: what it runs, with which recipe, and what was published."""

    name: str
    source: str
    title: str
    task: str
    dataset: str
    model: str
    recipe: str
    grid: dict[str, Any]
    grid_note: str
    metric: str
    unit: str
    published: tuple[Published, ...]
    smoke: dict[str, Any] | None
    recipe_version: str = "lcdense"
    recipe_note: str | None = None
    last_epoch: dict[str, str] = field(default_factory=dict)
    published_gaps: tuple[PublishedGap, ...] = ()
    #: the network lcdense runs where the paper names none precisely (downstream tasks), and why
    architecture: str | None = None
    #: the conversion scope (a name of the task's ``scopes``) a run of it converts, and why
    scope: str | None = None
    scope_note: str | None = None

    @property
    def axes(self) -> dict[str, list[Any]]:
        """The sweep axes the experiment crosses (everything in the grid but variants, E, seeds)."""
        return {k: v for k, v in self.grid.items() if k not in GRID_KEYS}

    @property
    def factor(self) -> float:
        """What lcdense's metric is multiplied by to be in the published unit (percent: 100)."""
        return 100.0 if self.unit == "percent" else 1.0

    def recipe_path(self) -> Path:
        """The recipe config file; an error if it is not on this machine."""
        return find_recipe(self.recipe)


def find_recipe(recipe: str) -> Path:
    """A recipe path such as ``configs/classification/x.yaml``, in the lcdense source tree or the
    current directory."""
    for root in (SOURCE_ROOT, Path.cwd()):
        if (root / recipe).is_file():
            return root / recipe
    raise LcdenseError(f"recipe {recipe} not found in {SOURCE_ROOT} or the current directory; the recipes "
                       "(configs/) come with the lcdense source tree: run from a checkout")


def _version(name: str, version: str, where: str) -> str:
    if version != LCDENSE and version not in versions():
        raise LcdenseError(f"paper experiment '{name}': {where} names paper version '{version}'; known: "
                           f"{', '.join([*versions(), LCDENSE])}")
    return version


def _published(name: str, entry: dict[str, Any], metric: str) -> Published:
    values = tuple(PublishedValue(v["variant"], float(v["mean"]), None if v.get("std") is None else float(v["std"]),
                                  dict(v.get("axes") or {})) for v in entry["values"])
    return Published(entry["source"], entry.get("metric", metric), values,
                     version=_version(name, entry["version"], "a published source"), runs=entry.get("runs"),
                     runs_note=entry.get("runs_note"))


def _gap(name: str, entry: dict[str, Any], metric: str) -> PublishedGap:
    number = {k: None if entry.get(k) is None else float(entry[k]) for k in ("mean", "low", "high")}
    if (number["mean"] is None) == (number["low"] is None and number["high"] is None):
        raise LcdenseError(f"paper experiment '{name}': a published gap needs either a mean or a range (low, high)")
    return PublishedGap(entry["source"], _version(name, entry["version"], "a published gap"),
                        entry.get("metric", metric), entry["gap"], dict(entry.get("axes") or {}), **number,
                        runs=entry.get("runs"), note=entry.get("note"))


def _experiment(name: str, e: dict[str, Any]) -> Experiment:
    missing = {"source", "title", "task", "dataset", "model", "recipe", "grid", "grid_note", "metric", "unit",
               "published", "smoke"} - set(e)
    if missing:
        raise LcdenseError(f"paper experiment '{name}' lacks {', '.join(sorted(missing))} in experiments.yaml")
    if not set(GRID_KEYS) <= set(e["grid"]):
        raise LcdenseError(f"paper experiment '{name}': grid needs {', '.join(GRID_KEYS)} and may add sweep axes "
                           f"of its task; got {', '.join(sorted(e['grid']))}")
    return Experiment(name=name, source=e["source"], title=e["title"], task=e["task"], dataset=e["dataset"],
                      model=e["model"], recipe=e["recipe"], grid=dict(e["grid"]), grid_note=e["grid_note"],
                      metric=e["metric"], unit=e["unit"],
                      published=tuple(_published(name, p, e["metric"]) for p in e["published"]),
                      smoke=e["smoke"], recipe_version=_version(name, e.get("recipe_version", LCDENSE), "recipe_version"),
                      recipe_note=e.get("recipe_note"), last_epoch=dict(e.get("last_epoch") or {}),
                      published_gaps=tuple(_gap(name, g, e["metric"]) for g in e.get("published_gaps") or ()),
                      architecture=e.get("architecture"), scope=e.get("scope"), scope_note=e.get("scope_note"))


@functools.cache
def _data() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("experiments.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def versions() -> dict[str, str]:
    """The paper's versions that published numbers or recipes: key → what it is, in words.

    Returns:
        e.g. ``{"arxiv-v2": "arXiv 2301.11360 v2 (June 2023)", ...}``.
    """
    return dict(_data()["versions"])


def version_label(version: str) -> str:
    """A version key in words (``lcdense`` is lcdense's own choice).

    Args:
        version: A key of :func:`versions`, or ``"lcdense"``.

    Returns:
        The label, e.g. ``"arXiv 2301.11360 v2 (June 2023)"``.
    """
    return "lcdense's choice (the paper states none)" if version == LCDENSE else versions()[version]


@functools.cache
def experiments() -> dict[str, Experiment]:
    """Every experiment, by name, in the order of ``experiments.yaml``."""
    return {name: _experiment(name, e) for name, e in _data()["experiments"].items()}


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; an unknown name is an error listing the known ones."""
    known = experiments()
    if name not in known:
        raise unknown_name("paper experiment", name, known)
    return known[name]
