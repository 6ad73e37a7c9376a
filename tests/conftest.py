"""Shared fixtures."""
from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path

import pytest

from lcdense.engine.task import TASKS

PLUGIN_DIR = Path(__file__).parent / "plugin"

#: pyproject's extras and the modules they install: a test marked ``@pytest.mark.extra(NAME)`` is
#: skipped, naming the ``pip install``, when one of them is missing
EXTRAS = {
    "detection": ("ultralytics", "pycocotools"),
    "segmentation": ("segmentation_models_pytorch", "albumentations", "timm"),
    "timm": ("timm",),
    "cluster": ("submitit",),
    "tensorboard": ("tensorboard",),
    "mlflow": ("mlflow", "sqlalchemy"),
    "wandb": ("wandb",),
    "robustness": ("imagecorruptions", "pyautoattack"),
}


def skip_without_extra(extra: str) -> None:
    """Skip the calling test if a module of ``extra`` is missing. The modules are looked up, not
    imported: ultralytics must be imported only after lcdense_tasks.detection switched it offline."""
    if any(find_spec(module) is None for module in EXTRAS[extra]):
        pytest.skip(f'needs the {extra} extra: pip install "lcdense[{extra}]"')


def pytest_runtest_setup(item):
    for mark in item.iter_markers("extra"):
        for extra in mark.args:
            skip_without_extra(extra)


@pytest.fixture
def toy_installed(tmp_path, monkeypatch):
    """Install the toy adapter the way a third-party package would: a dist-info with an entry point."""
    site = tmp_path / "site"
    dist = site / "lcdense_toy-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "lcdense_toy.py").write_text((PLUGIN_DIR / "lcdense_toy.py").read_text())
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lcdense-toy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lcdense.tasks]\ntoy = lcdense_toy:ToyTask\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    TASKS._objects.pop("toy", None)
    yield site
    TASKS._objects.pop("toy", None)
