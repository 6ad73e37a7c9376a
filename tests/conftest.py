"""Shared fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from lcdense.engine.task import TASKS

PLUGIN_DIR = Path(__file__).parent / "plugin"


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
