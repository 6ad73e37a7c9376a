"""Transformed copies of a detection validation split (the corruptions suite): every image of the
converted dataset's ``val`` list passed through a transform and saved as PNG (no second JPEG loss),
next to a copy of its YOLO labels, with an ultralytics data yaml of its own. A copy is written once
into the dataset's cache folder (``corrupted/<key>/``), atomically, and shared by every cell.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from lcdense import LcdenseError

from .voc import YoloDataset, staged_folder


def transformed_split(dataset: YoloDataset, transform: Callable[[np.ndarray, int], np.ndarray] | None,
                      limit: int | None) -> YoloDataset:
    """``dataset`` with its ``val`` split replaced by the first ``limit`` images (all if None), each
    passed through ``transform(image, index)`` (RGB uint8 H×W×3); its ground truth follows."""
    if transform is None and limit is None:
        return dataset
    root = dataset.yaml_path.parent
    listing = [line for line in (root / "val.txt").read_text().splitlines() if line.strip()]
    truth = dataset.ground_truth["val"]
    if len(listing) != len(truth):
        raise LcdenseError(f"{root / 'val.txt'} lists {len(listing)} images, its ground truth {len(truth)}; "
                           f"delete {root} to convert the dataset again")
    count = len(listing) if limit is None else min(int(limit), len(listing))
    key = (getattr(transform, "key", None) or "identity") if transform is not None else "clean"
    if transform is not None and not getattr(transform, "key", None):
        raise LcdenseError("a transform of detection images needs a key naming it (its cached copy's folder)")
    out = root / "corrupted" / f"{key}-first{count}"
    if not (out / "data.yaml").is_file():
        with staged_folder(out) as tmp:
            (tmp / "images" / "val").mkdir(parents=True)
            (tmp / "labels" / "val").mkdir(parents=True)
            paths = []
            for index, source in enumerate(listing[:count]):
                source_path = Path(source)
                with Image.open(source_path) as img:
                    image = np.asarray(img.convert("RGB"))
                if transform is not None:
                    image = transform(image, index)
                target = tmp / "images" / "val" / f"{source_path.stem}.png"
                Image.fromarray(image).save(target)
                label = root / "labels" / "val" / f"{source_path.stem}.txt"
                shutil.copyfile(label, tmp / "labels" / "val" / label.name)
                paths.append(str(out / "images" / "val" / target.name))
            (tmp / "val.txt").write_text("".join(f"{p}\n" for p in paths))
            data = json.loads(dataset.yaml_path.read_text())
            (tmp / "data.yaml").write_text(json.dumps({**data, "path": str(out), "val": str(out / "val.txt")}, indent=1))
    val = [{**item, "image": f"{Path(item['image']).stem}.png"} for item in truth[:count]]
    return dataclasses.replace(dataset, yaml_path=out / "data.yaml", ground_truth={**dataset.ground_truth, "val": val})
