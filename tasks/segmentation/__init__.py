"""Segmentation task: a binary U-Net (smp) on Carvana or LGG brain MRI, real data read in place
or small embedded stand-ins generated on first use.

>>> from lcdense_tasks.segmentation import SegmentationTask
>>> SegmentationTask.primary_metric
'dice'
"""
import os

from lcdense import require_extra

require_extra("segmentation", "segmentation_models_pytorch", "albumentations", "timm", what="task 'segmentation'")

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations' import-time update check needs the network

from .task import PROFILES, SegmentationData, SegmentationTask

__all__ = ["PROFILES", "SegmentationData", "SegmentationTask"]
