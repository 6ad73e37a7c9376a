"""Run configuration: task defaults ← YAML file ← CLI flags ← ``--set key=value``.

Sections ``data``, ``model`` and ``train`` belong to the task; ``run`` and ``conversion`` to the
runner. Unknown keys are an error (a typo must not silently do nothing).

>>> cfg = merge({"train": {"epochs": 75, "lr": 0.01}}, {"train": {"epochs": 2}})
>>> cfg["train"]
{'epochs': 2, 'lr': 0.01}
>>> set_dotted(cfg, "train.lr=0.1")["train"]["lr"]
0.1
>>> set_dotted(cfg, "train.lr=3e-3")["train"]["lr"]
0.003
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .errors import LcdenseError

RUN_DEFAULTS: dict[str, Any] = {
    "task": None,
    "run": {
        "variants": ["learnable", "frozen", "lc-learnable", "lc-frozen"],
        "E": [8],
        "seeds": [0],
        "data_seed_offset": 1000,
        "device": "auto",
        "out": "runs",
        "name": None,
        "cache_dir": None,
        "analysis": True,
        "threads": None,
        "max_memory": None,
        "quiet": False,
    },
    "conversion": {
        "init": "kaiming_uniform",
        "include": None,
        "exclude": None,
        "stem": True,
        "head": True,
        "mid": None,
        "impl": "auto",
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


def set_dotted(config: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply ``section.key=value`` (value parsed as YAML, e.g. ``[1,2]``, ``0.1``, ``null``) in place."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise LcdenseError(f"--set expects key=value (e.g. train.lr=0.1), got '{assignment}'")
    parts = key.strip().split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            raise LcdenseError(f"unknown config section '{'.'.join(parts[:i + 1])}' in --set {assignment}")
        node = node[part]
    if parts[-1] not in node:
        raise LcdenseError(f"unknown config key '{key}' in --set; known in that section: {', '.join(sorted(node))}")
    try:
        value = yaml.safe_load(raw)
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 as a string; a number is meant
            try:
                value = float(value)
            except ValueError:
                pass
        node[parts[-1]] = value
    except yaml.YAMLError:
        raise LcdenseError(f"cannot parse the value in --set {assignment}") from None
    return config


def get_dotted(config: dict[str, Any], key: str) -> Any:
    """Value at ``section.key``."""
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


def resolve(task_defaults: dict[str, Any], file_config: dict[str, Any], flags: dict[str, Any],
            assignments: list[str], *, where: str = "config file") -> dict[str, Any]:
    """The final config of a run: defaults, then the config file's mapping, then CLI flags, then ``--set``."""
    base = merge(RUN_DEFAULTS, task_defaults, where="task defaults", strict=False)
    base = merge(base, file_config, where=where)
    base = merge(base, flags, where="command-line flags")
    for assignment in assignments:
        set_dotted(base, assignment)
    return base


def dump(config: dict[str, Any]) -> str:
    """The config as YAML text (what the run directory keeps as config.yaml)."""
    return yaml.safe_dump(config, sort_keys=False)
