"""ImageNet-layout image folders read with timm's dataset factory, and their embedded stand-in.

Layout (read in place, never copied): ``ROOT/train/<wnid>/*.JPEG`` and ``ROOT/val/<wnid>/*.JPEG``.
The official validation archive unpacks as 50,000 loose files; it must be sorted into class
folders first, and a val folder without class subfolders is refused with a line saying so.
Class indices come from the train folders (sorted, as timm does) and the val set uses the same
map. A file that cannot be decoded stops the run with its path, instead of timm's default of
skipping it with a warning (which would silently train the variants on different data).

``embedded-imagefolder`` is a small shapes dataset generated once in exactly that layout (10
classes with wnid-style names, 32-px JPEGs), so CI runs the timm path end to end.

>>> import tempfile
>>> root = ensure_embedded_imagefolder(Path(tempfile.mkdtemp()), train_per_class=2, val_per_class=1)
>>> sorted(p.name for p in root.iterdir())
['train', 'val']
>>> sorted(p.name for p in (root / "val" / "n90000000").iterdir())
['ILSVRC2012_val_00000001.JPEG']
>>> data = image_folders(root)
>>> len(data["train"]), len(data["val"]), data["classes"][:2]
(20, 10, ['n90000000', 'n90000001'])
"""
from __future__ import annotations

import io
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lcdense import LcdenseError

from .data import EMBEDDED_CLASSES, _draw

EMBEDDED_IMAGEFOLDER_VERSION = "v1"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


class CorruptImage(LcdenseError):
    """An image file that cannot be decoded. Raised in a loader worker, torch re-raises it in the
    main process with the worker's traceback as the message; only the last line is kept."""

    def __init__(self, message: str) -> None:
        line = message.strip().splitlines()[-1]
        super().__init__(line.split(f"{type(self).__name__}: ", 1)[-1])


class _SkipWarnings(logging.Filter):
    """timm logs 'Skipped sample' before giving up on a file; lcdense raises instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Skipped sample")


_SKIP_WARNINGS = _SkipWarnings()


class StrictImages(torch.utils.data.Dataset):
    """A timm ``ImageDataset`` that raises :class:`CorruptImage` naming the file it cannot decode.

    ``transform`` passes through, so ``timm.data.create_loader`` sets the transforms on the timm
    dataset itself.
    """

    def __init__(self, images: Any) -> None:
        self.images = images
        images._max_retries = 1  # one attempt per file: a failure is an error, not a skip
        logging.getLogger("timm.data.dataset").addFilter(_SKIP_WARNINGS)  # added once

    @property
    def transform(self) -> Any:
        return self.images.transform

    @transform.setter
    def transform(self, value: Any) -> None:
        self.images.transform = value

    @property
    def classes(self) -> list[str]:
        return sorted(self.images.reader.class_to_idx, key=self.images.reader.class_to_idx.get)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.images[index]
        except RuntimeError:
            path = self.images.filename(index, absolute=True)
            raise CorruptImage(f"cannot decode image {path}; replace or remove the file") from None


def _class_folders(split: Path) -> list[str]:
    """The class folders of ``split``; refuses a missing split and loose (unsorted) images."""
    if not split.is_dir():
        raise LcdenseError(f"ImageNet-layout data needs {split}/<wnid>/<images>; {split} is missing")
    entries = list(os.scandir(split))
    folders = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    loose = sum(1 for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))
    if loose:
        raise LcdenseError(
            f"{split} holds {loose} images directly, not in class subfolders; sort them into "
            f"{split}/<wnid>/ first (for ImageNet's val: move each ILSVRC2012_val_*.JPEG into the folder of its "
            f"wnid from the devkit's ground truth, e.g. with the widely used valprep.sh)")
    if not folders:
        raise LcdenseError(f"{split} has no class subfolders <wnid>/ with images")
    return folders


def check_image_folders(root: Path) -> list[str]:
    """The class names of ``root/train``, after checking that ``root/val`` is sorted into a subset of them."""
    root = Path(root)
    if not root.is_dir():
        raise LcdenseError(f"data directory {root} does not exist; pass --data PATH to the train/ and val/ folders")
    train_classes = _class_folders(root / "train")
    extra = sorted(set(_class_folders(root / "val")) - set(train_classes))
    if extra:
        raise LcdenseError(f"{root / 'val'} has classes that train/ lacks: {', '.join(extra[:5])}; "
                           "both splits must use the same <wnid> folders")
    return train_classes


def image_folders(root: Path) -> dict[str, Any]:
    """timm datasets for ``root/train`` and ``root/val`` (val mapped with train's classes)."""
    from timm.data import create_dataset

    root = Path(root)
    train_classes = check_image_folders(root)
    class_map = {name: i for i, name in enumerate(train_classes)}
    train = create_dataset("", root=str(root / "train"), split="train", is_training=True, class_map=class_map)
    val = create_dataset("", root=str(root / "val"), split="validation", class_map=class_map)
    for split, dataset in (("train", train), ("val", val)):
        if len(dataset) == 0:
            raise LcdenseError(f"{root / split} has class folders but no images in them")
    return {"train": StrictImages(train), "val": StrictImages(val), "classes": train_classes, "source": str(root)}


def _jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _shape_image(kind: int, rng: np.random.Generator, size: int) -> np.ndarray:
    mask, fg = _draw(kind, rng, size)
    bg = rng.random(3)
    while np.abs(fg - bg).sum() < 0.6:  # keep foreground and background distinguishable
        bg = rng.random(3)
    img = np.where(mask[None], fg[:, None, None], bg[:, None, None]) + rng.normal(0, 0.08, (3, size, size))
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def ensure_embedded_imagefolder(cache_dir: Path, train_per_class: int = 20, val_per_class: int = 5,
                                size: int = 32) -> Path:
    """Generate (once) the embedded ImageFolder under ``cache_dir``; returns its root.

    Deterministic: the pixels come from fixed seeds; the folder appears atomically (written
    aside, then renamed).
    """
    name = f"classification-imagefolder-{EMBEDDED_IMAGEFOLDER_VERSION}-{train_per_class}-{val_per_class}-{size}"
    root = Path(cache_dir) / name
    if (root / "val").is_dir():
        return root
    tmp = Path(cache_dir) / f".{name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    val_index = 0
    for kind in range(len(EMBEDDED_CLASSES)):
        wnid = f"n{90000000 + kind:08d}"
        rng = np.random.default_rng(kind)
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            folder = tmp / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                if split == "train":
                    file = f"{wnid}_{i + 1}.JPEG"
                else:
                    val_index += 1
                    file = f"ILSVRC2012_val_{val_index:08d}.JPEG"
                (folder / file).write_bytes(_jpeg(_shape_image(kind, rng, size)))
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return root
