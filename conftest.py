"""Collection rules for the whole repository (the tests themselves live in tests/).

The doctests of a built-in task whose extra is not installed cannot even be imported (its package
raises MissingExtra): they are left out of collection, so the suite runs with the core install.

Torch runs one CPU thread per process unless OMP_NUM_THREADS says otherwise: the suite's tensors
are small, and on a shared or small machine extra threads only wait on each other (a zoo model
converts 5-8x faster with one thread while other processes keep the cores busy). The variable is
set before torch is imported, so the CLI subprocesses the tests start inherit it too."""
from __future__ import annotations

import os
from importlib.util import find_spec

os.environ.setdefault("OMP_NUM_THREADS", "1")

#: task package -> the modules its extra installs (pyproject's [detection] and [segmentation])
TASK_EXTRAS = {
    "tasks/detection": ("ultralytics", "pycocotools"),
    "tasks/segmentation": ("segmentation_models_pytorch", "albumentations", "timm"),
}

collect_ignore_glob = [f"{folder}/*.py" for folder, modules in TASK_EXTRAS.items()
                       if any(find_spec(m) is None for m in modules)]
