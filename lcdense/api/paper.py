"""Run a paper experiment: it is ``lcdense sweep`` with the experiment's recipe and grid.

``full`` is the recipe as shipped (the paper's, for the classification experiments) with the
paper's grid; ``smoke`` keeps the grid, shortens training (the experiment's ``smoke.set``: one
epoch on a few hundred images, one seed) and, without ``--data``, runs on the task's embedded data.
Both record ``paper.experiment``, ``paper.scale`` and the user's overrides in the run's config, so
every file of the run says which it is.

>>> argv = sweep_arguments(get_experiment("table1-svhn"), "smoke", run_name="t")
>>> argv[argv.index("--set") + 1]
'run.variants=["learnable", "lc-learnable", "lc-frozen"]'
>>> "paper.scale=smoke" in argv, "data.dataset=embedded" in argv, "--data" in argv
(True, True, False)
"""
from __future__ import annotations

import json
import os
import shlex
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from ..base.errors import LcdenseError
from ..engine.variants import parse_seeds
from ..paper.registry import SCALES, Experiment, find_recipe, get_experiment
from .benchmark import AXIS_FLAGS, RunResult, sweep


def _sets(values: dict[str, Any]) -> list[str]:
    """``--set key=value`` pairs; values as JSON (which YAML reads back), plain words unquoted."""
    out = []
    for key, value in values.items():
        text = value if isinstance(value, str) and yaml.safe_load(value) == value else json.dumps(value)
        out += ["--set", f"{key}={text}"]
    return out


def _axis_arguments(axis: str, values: list[Any]) -> list[str]:
    """``lcdense sweep``'s arguments for one axis: its own flag where it has one, else ``--axis``."""
    text = ",".join("none" if v is None and axis == "mid" else str(v) for v in values)
    return [f"--{axis.replace('_', '-')}", text] if axis in AXIS_FLAGS else ["--axis", f"{axis}={text}"]


def experiment_settings(experiment: Experiment, scale: str = "full", *, data: str | None = None,
                        seeds: str | None = None, delta: float | None = None
                        ) -> tuple[Path, dict[str, list[Any]], dict[str, Any]]:
    """The recipe (config file), sweep axes and settings (dotted keys, applied in order) that run
    ``experiment`` at ``scale``: what :func:`run_experiment` hands to :func:`lcdense.sweep`.

    Args:
        experiment: The paper experiment.
        scale: ``full`` or ``smoke``.
        data: The dataset root, or None (smoke: the embedded data).
        seeds: Seeds instead of the paper's (recorded as a change).
        delta: The equivalence margin declared before the run, in the published unit (> 0), or None.

    Returns:
        The recipe's path, the sweep axes and the settings.
    """
    if scale not in SCALES:
        raise LcdenseError(f"unknown scale '{scale}'; use one of: {', '.join(SCALES)}")
    if delta is not None and not (isinstance(delta, (int, float)) and 0 < delta < float("inf")):
        raise LcdenseError(f"the equivalence margin --delta must be a positive number (in the paper's unit), got {delta!r}")
    recipe, recipe_name = experiment.recipe_path(), experiment.recipe
    if scale == "smoke" and experiment.smoke is None:
        raise LcdenseError(f"paper experiment '{experiment.name}' has no smoke scale")
    grid = experiment.grid
    settings: dict[str, Any] = {"run.variants": grid["variants"], "run.E": grid["E"],
                                "run.seeds": grid["seeds"][:1] if scale == "smoke" else grid["seeds"]}
    overrides = []
    if seeds is not None:
        settings["run.seeds"] = parse_seeds(seeds)
        overrides.append(f"run.seeds={settings['run.seeds']}")
    if scale == "smoke":
        settings.update(experiment.smoke.get("set", {}))
        embedded = experiment.smoke.get("embedded") or {}
        if data is None:
            settings.update(embedded.get("set", {}))
            if embedded.get("recipe"):
                recipe, recipe_name = find_recipe(embedded["recipe"]), embedded["recipe"]
    if experiment.scope:
        settings["conversion.scope"] = experiment.scope
    settings.update({"paper.experiment": experiment.name, "paper.scale": scale,
                     "paper.recipe": recipe_name, "paper.overrides": overrides})
    if delta is not None:
        settings["paper.delta"] = float(delta)
    if data is not None:
        settings["data.root"] = str(data)
    return recipe, experiment.axes, settings


def sweep_arguments(experiment: Experiment, scale: str = "full", *, data: str | None = None, out: str | None = None,
                    run_name: str | None = None, device: str | None = None, seeds: str | None = None,
                    quiet: bool = False, analysis: bool = True, delta: float | None = None) -> list[str]:
    """The ``lcdense sweep`` arguments of the same run (what a paper run prints, to repeat or extend it)."""
    recipe, axes, settings = experiment_settings(experiment, scale, data=data, seeds=seeds, delta=delta)
    settings.pop("data.root", None)
    argv = ["--config", str(recipe), *_sets(settings)]
    for axis, values in axes.items():
        argv += _axis_arguments(axis, values)
    for flag, value in (("--data", data), ("--out", out), ("--name", run_name), ("--device", device)):
        if value is not None:
            argv += [flag, str(value)]
    if quiet:
        argv.append("--quiet")
    if not analysis:
        argv.append("--no-analysis")
    return argv


def _shown(path: Path) -> str:
    """``path`` relative to the current directory where it is below it (as a user would type it)."""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    except ValueError:
        return str(path)


def run_experiment(name: str, *, scale: str = "full", data: str | Path | None = None, out: str | Path | None = None,
                   run_name: str | None = None, device: str | None = None, seeds: str | None = None,
                   quiet: bool = False, analysis: bool = True, delta: float | None = None) -> RunResult:
    """Run paper experiment ``name`` with :func:`lcdense.sweep`; returns the finished run.

    The run is named ``<name>-<scale>-<timestamp>`` unless ``run_name`` is given; it goes to
    ``<out>/<task>/<run name>`` (``out`` defaults to ``runs``). ``delta``, the equivalence margin
    in the paper's unit, is recorded before any cell trains (``paper.delta``); the report then
    tests equivalence within it (TOST); without it, no equivalence is claimed.
    """
    experiment = get_experiment(name)
    run_name = run_name or f"{name}-{scale}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    data = None if data is None else str(data)
    recipe, axes, settings = experiment_settings(experiment, scale, data=data, seeds=seeds, delta=delta)
    if not quiet:
        argv = sweep_arguments(experiment, scale, data=data, out=None if out is None else str(out), run_name=run_name,
                               device=device, seeds=seeds, analysis=analysis, delta=delta)
        shown = [_shown(Path(a)) if i and argv[i - 1] == "--config" else a for i, a in enumerate(argv)]
        print(f"lcdense: paper experiment {name} ({experiment.source}), {scale} scale: "
              f"lcdense sweep {shlex.join(shown)}")
    run_settings = {"run.name": run_name, "run.quiet": quiet, "run.analysis": analysis}
    if out is not None:
        run_settings["run.out"] = str(out)
    if device is not None:
        run_settings["run.device"] = device
    return sweep(config=recipe, axes=axes, **settings, **run_settings)
