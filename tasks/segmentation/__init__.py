"""Segmentation task: a binary U-Net (smp) on Carvana or LGG brain MRI, real data read in place
or small embedded stand-ins generated on first use.

>>> from tasks.segmentation import SegmentationTask
>>> SegmentationTask.primary_metric
'dice'
"""
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations' import-time update check needs the network

from .task import PROFILES, SegmentationData, SegmentationTask

__all__ = ["PROFILES", "SegmentationData", "SegmentationTask"]
