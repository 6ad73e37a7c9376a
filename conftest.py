"""Collection rules for the whole repository (the tests themselves live in tests/).

The doctests of a built-in task whose extra is not installed cannot even be imported (its package
raises MissingExtra): they are left out of collection, so the suite runs with the core install."""
from __future__ import annotations

import os
from importlib.util import find_spec

import torch

#: task package -> the modules its extra installs (pyproject's [detection] and [segmentation])
TASK_EXTRAS = {
    "tasks/detection": ("ultralytics", "pycocotools"),
    "tasks/segmentation": ("segmentation_models_pytorch", "albumentations", "timm"),
}

collect_ignore_glob = [f"{folder}/*.py" for folder, modules in TASK_EXTRAS.items()
                       if any(find_spec(m) is None for m in modules)]


def pytest_configure(config):
    """Under pytest-xdist (``-n auto``, the default), share the cores between the workers: torch's
    threads, and those of the processes a test starts, are the cores per worker."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        torch.set_num_threads(threads)
