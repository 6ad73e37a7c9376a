"""Readers for the official on-disk layouts of Carvana and LGG brain MRI, read in place.

Both return :class:`Sample` lists grouped by car / patient, and :func:`split_by_group` keeps
every group (the 16 views of one car, the slices of one patient) on one side of the split.

>>> samples = [Sample(Path(f"{car}_{v:02d}.jpg"), None, car, v) for car in "abc" for v in (1, 2)]
>>> train, val = split_by_group(samples, val_fraction=0.3, seed=0)
>>> len(train), len(val), {s.group for s in train} & {s.group for s in val}
(4, 2, set())
"""
from __future__ import annotations

import contextlib
import csv
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lcdense import LcdenseError

DATASETS: tuple[str, ...] = ("carvana", "brain-mri")
MASK_SOURCES: tuple[str, ...] = ("gif", "csv")

_CARVANA_IMAGE = re.compile(r"^(?P<car>[^_]+)_(?P<view>\d{2})\.jpg$")
_LGG_SLICE = re.compile(r"^(?P<patient>.+)_(?P<n>\d+)\.tif$")
_LGG_ARCHIVE_DIR = "lgg-mri-segmentation"


@dataclass(frozen=True)
class Sample:
    """One image with its mask (a file, or an RLE string from ``train_masks.csv``)."""

    image: Path
    mask: Path | None
    group: str  # car id or patient id: the unit of the train/val split
    index: int  # view number or slice number (slices are ordered by it)
    rle: str | None = None


@contextlib.contextmanager
def open_image(path: Path, what: str) -> Iterator[Image.Image]:
    """``Image.open`` whose missing or unreadable file is a clear error naming it."""
    try:
        with Image.open(path) as img:
            yield img
    except FileNotFoundError:
        raise LcdenseError(f"{what} not found: {path}") from None
    except (UnidentifiedImageError, OSError, ImportError) as exc:
        # ImportError: where ultralytics is imported it patches Image.open to try a HEIF plugin on failure
        raise LcdenseError(f"cannot read {what} {path} ({type(exc).__name__}); the file is corrupt or not an "
                           "image: re-extract it from the dataset archive") from None


def image_size(path: Path, what: str) -> tuple[int, int]:
    """(width, height) from the file header; a missing or unreadable file is a clear error."""
    with open_image(path, what) as img:
        return img.size


def _require_dir(path: Path, expected: str) -> None:
    if not path.is_dir():
        raise LcdenseError(f"folder not found: {path} (expected {expected}); point --data at the extracted dataset")


def carvana_samples(root: Path, masks: str = "gif") -> list[Sample]:
    """Carvana ``train/<id>_<NN>.jpg`` with ``train_masks/<id>_<NN>_mask.gif`` (or RLE from
    ``train_masks.csv`` when ``masks="csv"``), sorted by car id and view."""
    if masks not in MASK_SOURCES:
        raise LcdenseError(f"unknown data.masks '{masks}'; use one of: {', '.join(MASK_SOURCES)}")
    images_dir = root / "train"
    _require_dir(images_dir, "Carvana train/<id>_<NN>.jpg")
    rles = _carvana_rles(root / "train_masks.csv") if masks == "csv" else {}
    if masks == "gif":
        _require_dir(root / "train_masks", "Carvana train_masks/<id>_<NN>_mask.gif")
    samples = []
    for path in sorted(images_dir.glob("*.jpg")):
        match = _CARVANA_IMAGE.match(path.name)
        if match is None:
            raise LcdenseError(f"unexpected file name {path}: Carvana images are named <car id>_<NN>.jpg")
        car, view = match["car"], int(match["view"])
        if masks == "csv":
            if path.name not in rles:
                raise LcdenseError(f"image without mask: {path} has no row in {root / 'train_masks.csv'}")
            samples.append(Sample(path, None, car, view, rle=rles[path.name]))
            continue
        mask = root / "train_masks" / f"{path.stem}_mask.gif"
        if not mask.is_file():
            raise LcdenseError(f"image without mask: {path} (expected {mask})")
        samples.append(Sample(path, mask, car, view))
    if not samples:
        raise LcdenseError(f"no Carvana images (<id>_<NN>.jpg) in {images_dir}")
    return samples


def _carvana_rles(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise LcdenseError(f"mask file not found: {path} (data.masks=csv reads train_masks.csv; "
                           "use data.masks=gif for train_masks/*.gif)")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"img", "rle_mask"} <= set(reader.fieldnames):
            raise LcdenseError(f"{path} must have the columns img,rle_mask (got {reader.fieldnames})")
        return {row["img"]: row["rle_mask"] for row in reader}


def rle_decode(rle: str, height: int, width: int, *, source: str = "RLE") -> np.ndarray:
    """Carvana RLE (1-based ``start length`` pairs, row-major) → uint8 mask of 0/1.

    >>> rle_decode("2 3 7 1", 2, 4).tolist()
    [[0, 1, 1, 1], [0, 0, 1, 0]]
    """
    try:
        numbers = np.array(rle.split(), dtype=np.int64)
    except ValueError:
        raise LcdenseError(f"malformed RLE for {source}: expected integers 'start length ...'") from None
    if numbers.size % 2 or (numbers.size and (numbers[0::2].min() < 1 or numbers[1::2].min() < 0)):
        raise LcdenseError(f"malformed RLE for {source}: expected pairs 'start length' with start >= 1")
    starts, lengths = numbers[0::2] - 1, numbers[1::2]
    if numbers.size and (starts + lengths).max() > height * width:
        raise LcdenseError(f"RLE for {source} runs past the {width}x{height} image: wrong image size or mask")
    flat = np.zeros(height * width, dtype=np.uint8)
    for start, length in zip(starts, lengths):
        flat[start:start + length] = 1
    return flat.reshape(height, width)


def lgg_slices_dir(root: Path) -> Path:
    """The one ``kaggle_3m`` folder to read: ``root/kaggle_3m`` (else the archive's nested
    ``root/lgg-mri-segmentation/kaggle_3m``, else ``root`` itself when it is ``kaggle_3m``).
    The archive ships both trees with the same slices; only one is ever read."""
    for candidate in (root / "kaggle_3m", root / _LGG_ARCHIVE_DIR / "kaggle_3m"):
        if candidate.is_dir():
            return candidate
    if root.name == "kaggle_3m" and root.is_dir():
        return root
    _require_dir(root, "the LGG folder holding kaggle_3m/TCGA_*/")
    raise LcdenseError(f"no kaggle_3m folder in {root} (expected kaggle_3m/TCGA_<..>/TCGA_<..>_<n>.tif); "
                       "point --data at the extracted lgg-mri-segmentation archive")


def lgg_samples(root: Path) -> list[Sample]:
    """LGG ``kaggle_3m/TCGA_*/TCGA_*_<n>.tif`` with ``…_<n>_mask.tif``; patients sorted by name,
    slices in numeric order (``_2`` before ``_10``)."""
    slices_dir = lgg_slices_dir(root)
    samples = []
    for patient_dir in sorted(p for p in slices_dir.iterdir() if p.is_dir() and p.name.startswith("TCGA_")):
        found = []
        for path in patient_dir.glob("*.tif"):
            if path.stem.endswith("_mask"):
                continue
            match = _LGG_SLICE.match(path.name)
            if match is None or match["patient"] != patient_dir.name:
                raise LcdenseError(f"unexpected file name {path}: LGG slices are named "
                                   f"{patient_dir.name}_<n>.tif")
            mask = path.with_name(f"{path.stem}_mask.tif")
            if not mask.is_file():
                raise LcdenseError(f"image without mask: {path} (expected {mask})")
            found.append(Sample(path, mask, patient_dir.name, int(match["n"])))
        samples.extend(sorted(found, key=lambda s: s.index))
    if not samples:
        raise LcdenseError(f"no LGG slices (TCGA_*/TCGA_*_<n>.tif) in {slices_dir}")
    return samples


def check_sizes(samples: list[Sample]) -> None:
    """Every image and mask file is readable and each mask matches its image's size."""
    for sample in samples:
        size = image_size(sample.image, "image")
        if sample.mask is None:
            continue
        mask_size = image_size(sample.mask, "mask")
        if mask_size != size:
            raise LcdenseError(f"mask {sample.mask} is {mask_size[0]}x{mask_size[1]} but its image "
                               f"{sample.image} is {size[0]}x{size[1]}; masks must match their image")


def split_by_group(samples: list[Sample], *, val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split by group (car / patient): ``ceil(val_fraction × groups)`` groups, drawn with
    ``seed``, go to validation; no group is on both sides."""
    groups = sorted({s.group for s in samples})
    if not 0 < val_fraction < 1:
        raise LcdenseError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
    if len(groups) < 2:
        raise LcdenseError(f"need at least 2 cars/patients to split train/val, found {len(groups)}")
    n_val = min(len(groups) - 1, max(1, math.ceil(val_fraction * len(groups))))
    order = np.random.default_rng(seed).permutation(len(groups))
    val_groups = {groups[i] for i in order[:n_val]}
    return ([s for s in samples if s.group not in val_groups], [s for s in samples if s.group in val_groups])
