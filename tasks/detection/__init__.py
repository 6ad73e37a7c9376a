"""Object detection task adapter (ultralytics YOLOv5u on PASCAL VOC or the embedded shapes set).

Importing this package switches ultralytics to offline mode (see :mod:`lcdense_tasks.detection.offline`)
before anything imports ultralytics; ultralytics itself is imported lazily.

>>> DetectionTask().primary_metric
'map50_95'
"""
from __future__ import annotations

from lcdense import require_extra

require_extra("detection", "ultralytics", "pycocotools", what="task 'detection'")

from . import offline  # noqa: F401  (sets YOLO_OFFLINE / YOLO_AUTOINSTALL before any ultralytics import)
from .task import SCOPES, DetectionTask, layer_parts

__all__ = ["SCOPES", "DetectionTask", "layer_parts"]
