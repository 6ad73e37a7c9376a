"""``lcdense paper list``: every experiment with its source, data, model, grid, recipe and numbers.

>>> print(describe(get_experiment("table1-svhn")).splitlines()[0])
table1-svhn — Table 1: baseline vs LC-learnable vs LC-frozen random at E = 128
"""
from __future__ import annotations

from typing import Any

from .registry import Experiment, experiments, get_experiment, version_label  # noqa: F401 (get_experiment: the doctest)


def _grid(experiment: Experiment) -> str:
    g = experiment.grid
    parts = [f"variants {', '.join(g['variants'])}", f"E {', '.join(map(str, g['E']))}"]
    parts += [f"{axis} {', '.join('none' if v is None else str(v) for v in values)}"
              for axis, values in experiment.axes.items()]
    parts.append(f"seeds {', '.join(map(str, g['seeds']))}")
    return " × ".join(parts)


def _number(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f}±{std:.2f}"


def describe(experiment: Experiment) -> str:
    """The experiment as a few indented lines of text."""
    e = experiment
    unit = " (%)" if e.unit == "percent" else ""
    lines = [f"{e.name} — {e.source}: {e.title}",
             f"  task       {e.task}",
             f"  dataset    {e.dataset}",
             f"  model      {e.model}",
             f"  grid       {_grid(e)}",
             f"             {e.grid_note}",
             f"  recipe     {e.recipe} ({version_label(e.recipe_version)})",
             *([f"             {e.recipe_note}"] if e.recipe_note else []),
             f"  metric     {e.metric}" + (f" (best epoch; last epoch: {', '.join(e.last_epoch.values())})"
                                           if e.last_epoch else "")]
    if e.architecture:
        lines.append(f"  network    {e.architecture}")
    if e.scope:
        lines.append(f"  scope      {e.scope}" + (f" — {e.scope_note}" if e.scope_note else ""))
    if not e.published and not e.published_gaps:
        lines.append("  published  none" + (" (figure only)" if e.source.startswith("Figure") else
                                            " (lcdense's numbers will be the first)"))
    for p in e.published:
        values = "; ".join(f"{v.variant}" + "".join(f" {k}={'none' if x is None else x}" for k, x in v.axes.items())
                           + f" {_number(v.mean, v.std)}" for v in p.values)
        lines.append(f"  published  {p.source} [{p.version}, {p.runs or '?'} run(s)], {p.metric}{unit}: {values}")
    for g in e.published_gaps:
        where = ", ".join(f"{k}={v}" for k, v in g.axes.items())
        stated = f"{g.mean:+.2f}" if g.mean is not None else \
            f"{'' if g.low is None else f'{g.low:+.2f}'}..{'' if g.high is None else f'{g.high:+.2f}'}"
        lines.append(f"  gap        {g.source} [{g.version}]: {g.gap} at {where}: {stated}{unit}")
    return "\n".join(lines)


def format_list() -> str:
    """Every experiment, described, separated by blank lines."""
    return "\n\n".join(describe(e) for e in experiments().values())


def as_dict(experiment: Experiment) -> dict[str, Any]:
    """The experiment as JSON-able data (``lcdense paper list --json``)."""
    from dataclasses import asdict

    return asdict(experiment)

