"""Every shipped config names its task and resolves against that task's defaults (no unknown key)."""
from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest

from lcdense.engine.config import load_yaml, resolve
from lcdense.engine.task import get_task
from lcdense.engine.variants import parse_expansions, parse_seeds, parse_variants

ROOT = Path(__file__).parents[1] / "configs"
CONFIGS = sorted(p for p in ROOT.glob("*/*.yaml") if p.parent.name != "executors")
#: the modules each built-in task's extra installs (the classification task needs none)
TASK_EXTRAS = {"detection": ("ultralytics", "pycocotools"),
               "segmentation": ("segmentation_models_pytorch", "albumentations", "timm")}


def _needs_extra(extra: str, modules) -> None:
    """Skip unless ``modules`` are installed (looked up, not imported: see tests/conftest.py)."""
    if any(find_spec(module) is None for module in modules):
        pytest.skip(f'needs the {extra} extra: pip install "lcdense[{extra}]"')


def test_every_task_has_configs():
    assert {p.parent.name for p in CONFIGS} == {"classification", "detection", "segmentation"}


@pytest.mark.parametrize("path", sorted((ROOT / "executors").glob("*.yaml")), ids=lambda p: p.name)
def test_executor_configs_load(path):
    from lcdense.engine.executors import executor_settings

    _needs_extra("cluster", ["submitit"])  # the executors are submitit's
    settings = executor_settings(path.stem, path, {})
    assert int(settings["timeout_min"]) >= 60


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_resolves(path):
    data = load_yaml(path)
    assert data["task"] == path.parent.name
    _needs_extra(data["task"], TASK_EXTRAS.get(data["task"], ()))
    task = get_task(data["task"])
    config = resolve(task.default_config(), data, {}, where=str(path))
    assert parse_variants(config["run"]["variants"], parse_expansions(config["run"]["E"]))
    assert parse_seeds(config["run"]["seeds"])
    assert int(config["train"]["epochs"] or 1) >= 1


def test_set_parses_numbers_lists_and_null():
    from lcdense.engine.config import set_dotted

    cfg = {"train": {"lr": 0.1, "epochs": 1, "clip": 1.0}, "run": {"E": [8]}}
    set_dotted(cfg, "train.lr=3e-3")
    set_dotted(cfg, "train.epochs=5")
    set_dotted(cfg, "train.clip=null")
    set_dotted(cfg, "run.E=[1, 8]")
    assert cfg == {"train": {"lr": 0.003, "epochs": 5, "clip": None}, "run": {"E": [1, 8]}}
