"""The embedded default dataset: coloured shapes on textured backgrounds, as a real VOCdevkit tree.

Generated once into the cache dir (deterministic: same seed, same bytes), then read by the same
VOC reader as real PASCAL VOC. Objects are circles, squares and triangles of 14–52 px on
128 px images; shapes that cross the image border are clipped and flagged ``truncated``,
and the smallest ones (under 12 px) are flagged ``difficult``.

>>> import tempfile, pathlib
>>> root = generate_shapes_voc(pathlib.Path(tempfile.mkdtemp()), n_trainval=4, n_test=2)
>>> sorted(p.name for p in (root / "VOC2007" / "ImageSets" / "Main").iterdir())
['test.txt', 'train.txt', 'trainval.txt', 'val.txt']
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")
DIFFICULT_BELOW_PX = 12


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour gradient plus pixel noise, uint8 (size, size, 3)."""
    corners = rng.uniform(40, 215, size=(2, 2, 3))
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    s = np.linspace(0.0, 1.0, size)[None, :, None]
    top = corners[0, 0] * (1 - s) + corners[0, 1] * s
    bottom = corners[1, 0] * (1 - s) + corners[1, 1] * s
    image = top * (1 - t) + bottom * t + rng.normal(0.0, 12.0, size=(size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[float, float, float, float], colour: tuple[int, ...]) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)


def _annotation_xml(image_id: str, size: int, objects: list[dict]) -> str:
    parts = [
        "<annotation>", "\t<folder>VOC2007</folder>", f"\t<filename>{image_id}.jpg</filename>",
        "\t<source><database>lcdense shapes</database></source>",
        f"\t<size><width>{size}</width><height>{size}</height><depth>3</depth></size>",
        "\t<segmented>0</segmented>",
    ]
    for obj in objects:
        xmin, ymin, xmax, ymax = obj["bndbox"]
        parts += [
            "\t<object>", f"\t\t<name>{escape(obj['name'])}</name>", "\t\t<pose>Unspecified</pose>",
            f"\t\t<truncated>{obj['truncated']}</truncated>", f"\t\t<difficult>{obj['difficult']}</difficult>",
            f"\t\t<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>",
            "\t</object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def _render(rng: np.random.Generator, size: int, max_objects: int) -> tuple[bytes, list[dict]]:
    """One JPEG image and its VOC objects (1-based inclusive pixel boxes)."""
    image = Image.fromarray(_background(rng, size))
    draw = ImageDraw.Draw(image)
    objects: list[dict] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        kind = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        side = int(rng.integers(8, 13)) if rng.random() < 0.1 else int(rng.integers(14, 53))
        x0, y0 = (int(v) for v in rng.integers(-side // 3, size - 2 * side // 3, size=2))
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        _draw_shape(draw, kind, (x0, y0, x0 + side - 1, y0 + side - 1), colour)
        left, top = max(x0, 0), max(y0, 0)
        right, bottom = min(x0 + side, size), min(y0 + side, size)  # exclusive, 0-based
        objects.append({
            "name": kind,
            "bndbox": (left + 1, top + 1, right, bottom),  # VOC: 1-based, inclusive
            "truncated": int((left, top, right, bottom) != (x0, y0, x0 + side, y0 + side)),
            "difficult": int(min(right - left, bottom - top) < DIFFICULT_BELOW_PX),
        })
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), objects


def generate_shapes_voc(
    cache_dir: Path, *, n_trainval: int = 240, n_test: int = 80, size: int = 128, max_objects: int = 4, seed: int = 0,
) -> Path:
    """Write (once) a VOCdevkit tree of shape images under ``cache_dir``; return the VOCdevkit path.

    The tree is keyed by its settings and built in a temporary directory that is renamed into
    place, so an interrupted generation never leaves a half-written dataset behind.
    """
    key = f"shapes-voc-n{n_trainval}+{n_test}-s{size}-o{max_objects}-seed{seed}"
    devkit = Path(cache_dir) / key / "VOCdevkit"
    if devkit.is_dir():
        return devkit
    devkit.parent.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=devkit.parent.parent))
    try:
        voc = tmp / "VOCdevkit" / "VOC2007"
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (voc / sub).mkdir(parents=True)
        rng = np.random.default_rng(seed)
        ids = [f"{i:06d}" for i in range(1, n_trainval + n_test + 1)]
        for image_id in ids:
            jpeg, objects = _render(rng, size, max_objects)
            (voc / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg)
            (voc / "Annotations" / f"{image_id}.xml").write_text(_annotation_xml(image_id, size, objects))
        trainval, test = ids[:n_trainval], ids[n_trainval:]
        half = n_trainval // 2
        splits = {"train": trainval[:half], "val": trainval[half:], "trainval": trainval, "test": test}
        for name, members in splits.items():
            (voc / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{m}\n" for m in members))
        os.replace(tmp, devkit.parent)
    except OSError:
        if not devkit.is_dir():  # else another process finished first: keep theirs
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return devkit
