"""PASCAL VOC reader: VOCdevkit XML annotations → YOLO labels + an ultralytics data yaml.

The user's VOCdevkit is only read. Labels go to a content-keyed directory in the cache dir
(keyed by the annotation bytes, image sizes/mtimes, splits, classes and the difficult policy),
with symlinks to the original JPEGs, so ultralytics finds ``images/…`` next to ``labels/…``.

Coordinates: VOC pixel indices are 1-based and inclusive, so a box covers the continuous
interval [xmin - 1, xmax] × [ymin - 1, ymax] in 0-based pixel-edge coordinates; YOLO rows
are ``class cx cy w h`` of that interval, normalised by the image width/height.

Difficult objects (``data.difficult``): ``"exclude"`` (default) drops them from the training
labels and from the evaluation ground truth, so a detection of a difficult object counts as a
false positive (the VOC devkit would ignore it instead); ``"include"`` treats them as ordinary
objects. Images left without objects stay in the split as background images and are counted
in the summary (``images_without_objects``).

>>> box = VocObject("cat", (1.0, 1.0, 50.0, 100.0), difficult=False, truncated=False)
>>> yolo_row(box, 0, width=100, height=200)
(0, 0.25, 0.25, 0.5, 0.5)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from lcdense import LcdenseError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
DIFFICULT_POLICIES: tuple[str, ...] = ("exclude", "include")
_FORMAT_VERSION = "1"


@dataclass(frozen=True)
class VocObject:
    """One ``<object>``: class name, VOC box (xmin, ymin, xmax, ymax; 1-based inclusive) and flags."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool
    truncated: bool

    def pixel_box(self) -> tuple[float, float, float, float]:
        """The box as 0-based pixel edges (x0, y0, x1, y1)."""
        xmin, ymin, xmax, ymax = self.box
        return xmin - 1.0, ymin - 1.0, xmax, ymax


@dataclass(frozen=True)
class VocAnnotation:
    """One annotation file: image size and objects."""

    path: Path
    width: int
    height: int
    objects: tuple[VocObject, ...]


@dataclass
class YoloDataset:
    """The converted dataset: ultralytics data yaml, class names, per-split ground truth and counts."""

    yaml_path: Path
    names: tuple[str, ...]
    ground_truth: dict[str, list[dict]] = field(repr=False)  # split → [{"image", "width", "height", "boxes", "classes"}]
    summary: dict[str, dict[str, int]] = field(default_factory=dict)


def _text(element: ET.Element, tag: str, path: Path) -> str:
    found = element.find(tag)
    if found is None or found.text is None or not found.text.strip():
        raise LcdenseError(f"{path}: missing <{tag}> in <{element.tag}>; the annotation is incomplete")
    return found.text.strip()


def _number(element: ET.Element, tag: str, path: Path) -> float:
    value = _text(element, tag, path)
    try:
        return float(value)
    except ValueError:
        raise LcdenseError(f"{path}: <{tag}> is '{value}', not a number") from None


def parse_annotation(path: Path) -> VocAnnotation:
    """Read one VOC XML file; broken XML, missing fields and boxes outside the image raise LcdenseError."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise LcdenseError(f"annotation {path} not found; every listed image needs Annotations/<id>.xml") from None
    except ET.ParseError as error:
        raise LcdenseError(f"{path}: broken XML ({error}); fix or regenerate the annotation") from None
    size = root.find("size")
    if size is None:
        raise LcdenseError(f"{path}: missing <size>; the annotation is incomplete")
    width, height = int(_number(size, "width", path)), int(_number(size, "height", path))
    if width < 1 or height < 1:
        raise LcdenseError(f"{path}: image size {width}x{height} is empty")
    objects = []
    for index, obj in enumerate(root.findall("object")):
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise LcdenseError(f"{path}: object {index} has no <bndbox>")
        box = tuple(_number(bndbox, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax"))
        xmin, ymin, xmax, ymax = box
        if not (1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height):
            raise LcdenseError(
                f"{path}: object {index} box (xmin={xmin:g}, ymin={ymin:g}, xmax={xmax:g}, ymax={ymax:g}) lies "
                f"outside the {width}x{height} image or is inverted; VOC boxes are 1-based and inclusive"
            )
        flags = {tag: obj.findtext(tag, "0").strip() == "1" for tag in ("difficult", "truncated")}
        objects.append(VocObject(_text(obj, "name", path), box, **flags))  # type: ignore[arg-type]
    return VocAnnotation(path, width, height, tuple(objects))


def yolo_row(obj: VocObject, class_id: int, *, width: int, height: int) -> tuple[int, float, float, float, float]:
    """``(class, cx, cy, w, h)`` normalised to [0, 1]."""
    x0, y0, x1, y1 = obj.pixel_box()
    return class_id, (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height


def split_members(devkit: Path, split: str) -> list[tuple[Path, str]]:
    """``"VOC2007/trainval"`` → [(VOC2007 dir, image id), …] from ImageSets/Main/trainval.txt."""
    year, _, name = split.partition("/")
    if not name:
        raise LcdenseError(f"split '{split}' must look like 'VOC2007/trainval' (year directory / ImageSets name)")
    year_dir = devkit / year
    listing = year_dir / "ImageSets" / "Main" / f"{name}.txt"
    if not listing.is_file():
        known = sorted(p.stem for p in listing.parent.glob("*.txt") if "_" not in p.stem) if listing.parent.is_dir() else []
        raise LcdenseError(f"split file {listing} not found; known splits there: {', '.join(known) or '(none)'}")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    return [(year_dir, image_id) for image_id in ids]


def _cache_key(devkit: Path, splits: dict[str, list[str]], classes: tuple[str, ...], difficult: str,
               members: dict[str, list[tuple[Path, str]]]) -> str:
    digest = hashlib.sha256(json.dumps([_FORMAT_VERSION, str(devkit.resolve()), splits, classes, difficult]).encode())
    for split in sorted(members):
        for year_dir, image_id in members[split]:
            xml = year_dir / "Annotations" / f"{image_id}.xml"
            image = year_dir / "JPEGImages" / f"{image_id}.jpg"
            digest.update(f"{split}|{year_dir.name}|{image_id}|".encode())
            digest.update(xml.read_bytes() if xml.is_file() else b"<missing>")
            stat = image.stat() if image.is_file() else None
            digest.update(f"|{stat.st_size}|{stat.st_mtime_ns}".encode() if stat else b"|<missing>")
    return digest.hexdigest()[:16]


def _link(source: Path, target: Path) -> None:
    try:
        os.symlink(source.resolve(), target)
    except OSError:
        shutil.copyfile(source, target)


def _write_split(devkit: Path, out: Path, split: str, members: list[tuple[Path, str]],
                 classes: tuple[str, ...], difficult: str) -> tuple[list[dict], dict[str, int]]:
    """Write images/labels/<split>.txt for one ultralytics split; return its ground truth and counts."""
    (out / "images" / split).mkdir(parents=True)
    (out / "labels" / split).mkdir(parents=True)
    index = {name: i for i, name in enumerate(classes)}
    counts = {"images": 0, "objects": 0, "difficult_dropped": 0, "truncated": 0, "images_without_objects": 0}
    ground_truth, listing = [], []
    for year_dir, image_id in members:
        annotation = parse_annotation(year_dir / "Annotations" / f"{image_id}.xml")
        image = year_dir / "JPEGImages" / f"{image_id}.jpg"
        if not image.is_file():
            raise LcdenseError(f"image {image} not found but listed in split {split}; restore it or fix the ImageSets file")
        with Image.open(image) as im:
            if im.size != (annotation.width, annotation.height):
                raise LcdenseError(f"{annotation.path}: size {annotation.width}x{annotation.height} does not match "
                                   f"the image {image} ({im.size[0]}x{im.size[1]})")
        rows, boxes, labels = [], [], []
        for obj in annotation.objects:
            if obj.name not in index:
                raise LcdenseError(f"{annotation.path}: unknown class '{obj.name}'; known: {', '.join(classes)}")
            if obj.difficult and difficult == "exclude":
                counts["difficult_dropped"] += 1
                continue
            counts["truncated"] += obj.truncated
            rows.append(yolo_row(obj, index[obj.name], width=annotation.width, height=annotation.height))
            boxes.append(list(obj.pixel_box()))
            labels.append(index[obj.name])
        stem = f"{year_dir.name}_{image_id}"
        target = out / "images" / split / f"{stem}.jpg"
        _link(image, target)
        (out / "labels" / split / f"{stem}.txt").write_text(
            "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in rows))
        listing.append(str(target))
        ground_truth.append({"image": target.name, "width": annotation.width, "height": annotation.height,
                             "boxes": boxes, "classes": labels})
        counts["images"] += 1
        counts["objects"] += len(rows)
        counts["images_without_objects"] += not rows
    (out / f"{split}.txt").write_text("".join(f"{p}\n" for p in listing))
    return ground_truth, counts


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A new folder beside ``out`` to fill; when the block ends it becomes ``out`` in one rename. If
    another process published ``out`` first (its ``data.yaml`` is there), that copy is kept.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "converted"
    >>> with staged_folder(out) as tmp:
    ...     _ = (tmp / "data.yaml").write_text("{}")
    >>> sorted(p.name for p in out.parent.iterdir()), (out / "data.yaml").read_text()
    (['converted'], '{}')
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield tmp
        os.replace(tmp, out)
    except OSError:
        if not (out / "data.yaml").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_yolo_dataset(devkit: Path, splits: dict[str, list[str]], cache_dir: Path, *,
                       classes: tuple[str, ...] = VOC_CLASSES, difficult: str = "exclude") -> YoloDataset:
    """Convert ``splits`` (e.g. ``{"train": ["VOC2007/trainval"], "val": ["VOC2007/test"]}``) once into the cache."""
    devkit = Path(devkit).expanduser()
    if not devkit.is_dir():
        raise LcdenseError(f"VOC root {devkit} not found; point data.root (--data) at a VOCdevkit directory")
    if difficult not in DIFFICULT_POLICIES:
        raise LcdenseError(f"data.difficult must be one of {', '.join(DIFFICULT_POLICIES)}, got '{difficult}'")
    if set(splits) != {"train", "val"}:
        raise LcdenseError(f"data.splits needs exactly the keys train and val, got: {', '.join(splits) or '(none)'}")
    members = {split: [m for name in names for m in split_members(devkit, name)] for split, names in splits.items()}
    for split, found in members.items():
        if not found:
            raise LcdenseError(f"split '{split}' ({', '.join(splits[split])}) lists no images")
    out = Path(cache_dir).resolve() / f"voc-yolo-{_cache_key(devkit, splits, classes, difficult, members)}"
    if not (out / "data.yaml").is_file():
        with staged_folder(out) as tmp:
            ground_truth, summary = {}, {}
            for split, found in members.items():
                ground_truth[split], summary[split] = _write_split(devkit, tmp, split, found, classes, difficult)
            (tmp / "ground_truth.json").write_text(json.dumps(ground_truth))
            (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
            (tmp / "data.yaml").write_text(json.dumps({  # JSON is valid YAML; paths below are inside `out`
                "path": str(out), "train": str(out / "train.txt"), "val": str(out / "val.txt"),
                "names": dict(enumerate(classes)),
            }, indent=1))
            for split in members:  # list files name their final location
                listing = tmp / f"{split}.txt"
                listing.write_text(listing.read_text().replace(str(tmp), str(out)))
    return YoloDataset(
        yaml_path=out / "data.yaml", names=tuple(classes),
        ground_truth=json.loads((out / "ground_truth.json").read_text()),
        summary=json.loads((out / "summary.json").read_text()),
    )
