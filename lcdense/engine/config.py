"""Run configuration: task defaults ← YAML file ← overrides (the CLI's flags, then its ``--set
key=value``; in Python, the keyword arguments of :func:`lcdense.run`).

Sections ``data``, ``model`` and ``train`` belong to the task, except ``train.tf32``, the runner's
for every task (the fp32 math mode on CUDA, see :mod:`lcdense.engine.provenance`; default false:
fp32 is IEEE fp32, and a user who wants TF32's speed sets it, and the record says so); ``run`` and
``conversion`` to the runner; ``evaluate`` to the evaluation suites (:mod:`lcdense.engine.suites`);
``paper`` names the paper experiment a run reproduces (see :mod:`lcdense.paper`). Unknown
keys are an error (a typo must not silently do nothing).

>>> cfg = merge({"train": {"epochs": 75, "lr": 0.01}}, {"train": {"epochs": 2}})
>>> cfg["train"]
{'epochs': 2, 'lr': 0.01}
>>> set_dotted(cfg, "train.lr=0.1")["train"]["lr"]
0.1
>>> set_dotted(cfg, "train.lr=3e-3")["train"]["lr"]
0.003
>>> apply_overrides(cfg, {"train": {"epochs": 3}, "train.lr": 0.5})["train"]
{'epochs': 3, 'lr': 0.5}
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..base.errors import LcdenseError

if TYPE_CHECKING:
    from .variants import CellSpec

RUN_DEFAULTS: dict[str, Any] = {
    "task": None,
    "run": {
        "variants": ["learnable", "frozen", "lc-learnable", "lc-frozen"],
        "E": [8],
        "seeds": [0],
        "baseline_init": "kaiming_uniform",  # the learnable baseline's init (native: the model's own); conversion.init is the others
        "data_seed_offset": 1000,
        "device": "auto",
        "out": "runs",
        "name": None,
        "cache_dir": None,
        "analysis": True,
        "threads": None,
        "max_memory": None,
        "quiet": False,
        "verbose": False,  # show the task framework's own output (else only in cells/<id>/train.log)
        "loggers": [],  # experiment trackers: tensorboard, mlflow, wandb (lcdense.engine.trackers)
        "allow_diverged": False,  # a cell whose loss or metrics went non-finite does not fail the run
    },
    "conversion": {
        "scope": None,  # a named scope of the task (Task.scopes); null: the task's default_scope
        "init": "kaiming_uniform",
        "include": None,
        "exclude": None,
        "stem": True,
        "head": True,
        "mid": None,
        "impl": "auto",
    },
    # the runner's key in the task's section: TF32 for fp32 matmuls and convolutions on CUDA (off: IEEE fp32)
    "train": {"tf32": False},
    # lcdense evaluate (lcdense.engine.suites): the suites to run at the run's end, the files they read
    # (a path, or {suite: path}) and each suite's settings (a task adds sections for its own suites)
    "evaluate": {
        "suites": [],
        "data": None,
        "corruptions": {"names": "all", "severities": [1, 2, 3, 4, 5], "limit": None, "seed": 0},
    },
    # set by `lcdense paper run` (lcdense.paper): which paper experiment this run reproduces, at
    # which scale (full: the paper's recipe; smoke: shortened, never compared), from which recipe,
    # what the user changed on top of it, and the equivalence margin declared before the run (in
    # the published unit; None: no equivalence is claimed)
    "paper": {
        "experiment": None,
        "scale": None,
        "recipe": None,
        "overrides": [],
        "delta": None,
    },
}


def merge(base: dict[str, Any], override: dict[str, Any], *, where: str = "config", strict: bool = True) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``; unknown keys raise when ``strict``."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if strict and key not in out:
            raise LcdenseError(f"unknown key '{key}' in {where}; known: {', '.join(sorted(out))}")
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = merge(out[key], value, where=f"{where}.{key}", strict=strict)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``; a missing or malformed file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise LcdenseError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise LcdenseError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LcdenseError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def set_value(config: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Set the dotted ``key`` (e.g. ``train.lr``) to ``value`` in place; unknown keys are an error."""
    parts = key.strip().split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            raise LcdenseError(f"unknown config section '{'.'.join(parts[:i + 1])}' in '{key}'")
        node = node[part]
    if parts[-1] not in node:
        raise LcdenseError(f"unknown config key '{key}'; known in that section: {', '.join(sorted(node))}")
    node[parts[-1]] = value
    return config


def parse_assignment(assignment: str) -> tuple[str, Any]:
    """``section.key=value`` → (key, value), the value parsed as YAML (``[1,2]``, ``0.1``, ``null``)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise LcdenseError(f"--set expects key=value (e.g. train.lr=0.1), got '{assignment}'")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise LcdenseError(f"cannot parse the value in --set {assignment}") from None
    if isinstance(value, str):  # YAML 1.1 reads 3e-3 as a string; a number is meant
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


def set_dotted(config: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply ``section.key=value`` (value parsed as YAML, e.g. ``[1,2]``, ``0.1``, ``null``) in place."""
    return set_value(config, *parse_assignment(assignment))


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any], *, where: str = "settings") -> dict[str, Any]:
    """Apply ``overrides`` in order, in place: a dotted key sets one value, a section name with a
    dict merges that dict into the section."""
    for key, value in overrides.items():
        if "." in key:
            set_value(config, key, value)
        elif isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = merge(config[key], value, where=f"{where}.{key}")
        else:
            raise LcdenseError(f"unknown setting '{key}'; pass a dotted key (e.g. train.lr) or a section "
                               f"({', '.join(k for k, v in config.items() if isinstance(v, dict))}) as a dict")
    return config


def get_dotted(config: dict[str, Any], key: str) -> Any:
    """Value at ``section.key``."""
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


def resolve(task_defaults: dict[str, Any], file_config: dict[str, Any], overrides: dict[str, Any], *,
            where: str = "config file") -> dict[str, Any]:
    """The final config of a run: defaults, then the config file's mapping, then ``overrides``
    (see :func:`apply_overrides`)."""
    base = merge(RUN_DEFAULTS, task_defaults, where="task defaults", strict=False)
    base = merge(base, file_config, where=where)
    return apply_overrides(base, overrides)


def dump(config: dict[str, Any]) -> str:
    """The config as YAML text (what the run directory keeps as config.yaml)."""
    return yaml.safe_dump(config, sort_keys=False)


def cell_config(config: dict[str, Any], spec: CellSpec, axis_keys: dict[str, str]) -> dict[str, Any]:
    """The run's config with the cell's sweep-axis values applied (a copy).

    >>> from lcdense.engine.variants import CellSpec, Variant
    >>> spec = CellSpec(Variant("frozen"), 0, {"width": 32})
    >>> cell_config({"model": {"width": 16}}, spec, {"width": "model.width"})["model"]
    {'width': 32}
    """
    cfg = copy.deepcopy(config)
    for axis, value in spec.axes.items():
        set_dotted(cfg, f"{axis_keys[axis]}={json.dumps(value)}")
    return cfg
