"""Collection rules for the whole repository (the tests themselves live in tests/).

The doctests of a built-in task whose extra is not installed cannot even be imported (its package
raises MissingExtra): they are left out of collection, so the suite runs with the core install."""
from __future__ import annotations

from importlib.util import find_spec

#: task package -> the modules its extra installs (pyproject's [detection] and [segmentation])
TASK_EXTRAS = {
    "tasks/detection": ("ultralytics", "pycocotools"),
    "tasks/segmentation": ("segmentation_models_pytorch", "albumentations", "timm"),
}

collect_ignore_glob = [f"{folder}/*.py" for folder, modules in TASK_EXTRAS.items()
                       if any(find_spec(m) is None for m in modules)]
