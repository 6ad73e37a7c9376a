"""The paper's experiments, read from the ``experiments.yaml`` shipped in this package.

>>> exp = get_experiment("table1-cifar10")
>>> exp.source, exp.grid["E"], exp.published[0].values[0].mean
('Table 1', [128], 92.34)
>>> get_experiment("fig7a-kernel-size").axes
{'kernel_size': [3, 5, 7, 9]}
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
    """The numbers one source (e.g. the ICLR submission's Table 1) gives for an experiment."""

    source: str
    metric: str
    values: tuple[PublishedValue, ...]


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


def _published(entry: dict[str, Any], metric: str) -> Published:
    values = tuple(PublishedValue(v["variant"], float(v["mean"]), None if v.get("std") is None else float(v["std"]),
                                  dict(v.get("axes") or {})) for v in entry["values"])
    return Published(entry["source"], entry.get("metric", metric), values)


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
                      published=tuple(_published(p, e["metric"]) for p in e["published"]),
                      smoke=e["smoke"], architecture=e.get("architecture"), scope=e.get("scope"),
                      scope_note=e.get("scope_note"))


@functools.cache
def experiments() -> dict[str, Experiment]:
    """Every experiment, by name, in the order of ``experiments.yaml``."""
    text = resources.files(__package__).joinpath("experiments.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    return {name: _experiment(name, e) for name, e in data["experiments"].items()}


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; an unknown name is an error listing the known ones."""
    known = experiments()
    if name not in known:
        raise unknown_name("paper experiment", name, known)
    return known[name]
