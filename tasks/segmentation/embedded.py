"""Small synthetic stand-ins for Carvana and LGG brain MRI, written in the official layouts.

Generated once into ``<cache_dir>/<dataset>-embedded-v1/`` (atomically: built in a temporary
folder, then renamed) and read back by the same readers as the real data. Deterministic: the
same files, byte for byte, on every machine with the same Pillow.

- carvana: ``train/<12-hex id>_<NN>.jpg`` (16 views per car, 240×160 JPEG), masks
  ``train_masks/<id>_<NN>_mask.gif`` (palette 0/1) and the same masks as RLE in
  ``train_masks.csv``. A car-like body, cabin, windows and wheels seen from 16 angles, with a
  shadow (not in the mask) on varied studio backgrounds with clutter.
- brain-mri: ``kaggle_3m/TCGA_<inst>_<pid>_<date>/TCGA_…_<n>.tif`` (3-channel 128×128 slices,
  12–20 per patient) with ``…_<n>_mask.tif`` (0/255). A head-like ellipse with skull, texture
  and ventricles; a tumour-like blob, bright in the FLAIR channel, through the middle slices;
  the outer slices have empty masks.

>>> from tempfile import mkdtemp
>>> root = ensure_embedded("brain-mri", Path(mkdtemp()))
>>> root.name, len(list(root.glob("kaggle_3m/TCGA_*")))
('brain-mri-embedded-v1', 16)
"""
from __future__ import annotations

import csv
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lcdense import LcdenseError

VERSION = "v1"
CARVANA_CARS = 16
CARVANA_SIZE = (240, 160)  # (W, H): the real 1918x1280 aspect ratio
LGG_PATIENTS = 16
LGG_SIZE = 128


def embedded_root(dataset: str, cache_dir: Path) -> Path:
    """Where the embedded ``dataset`` lives under ``cache_dir``."""
    return Path(cache_dir) / f"{dataset}-embedded-{VERSION}"


def ensure_embedded(dataset: str, cache_dir: Path) -> Path:
    """The embedded ``dataset``'s root, generating it first if it is not there yet."""
    generators = {"carvana": generate_carvana, "brain-mri": generate_lgg}
    if dataset not in generators:
        raise LcdenseError(f"no embedded dataset '{dataset}'; use one of: {', '.join(generators)}")
    root = embedded_root(dataset, cache_dir)
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        generators[dataset](tmp)
        os.replace(tmp, root)
    except OSError:
        if not root.is_dir():  # not a lost race with another process generating the same data
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def rle_encode(mask: np.ndarray) -> str:
    """Carvana RLE of a 0/1 mask: 1-based ``start length`` pairs over the row-major pixels."""
    flat = np.concatenate([[0], mask.reshape(-1).astype(np.int8), [0]])
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges[1::2] -= edges[0::2]
    return " ".join(map(str, edges))


# ---------------------------------------------------------------- Carvana

_CAR_COLOURS = [(235, 235, 235), (25, 25, 30), (160, 165, 170), (170, 30, 30), (30, 60, 150),
                (40, 110, 60), (200, 160, 40), (90, 90, 95)]


def _car_shapes(rng: np.random.Generator, view: int, width: int, height: int, scale: float) -> dict[str, list]:
    """Polygons/ellipses of one view: 'body' parts (in the mask) and their decoration."""
    angle = 2 * math.pi * (view - 1) / 16
    side, front = abs(math.sin(angle)), abs(math.cos(angle))
    cx = width / 2 + rng.uniform(-0.05, 0.05) * width
    ground = height * (0.78 + rng.uniform(-0.03, 0.03))
    length = width * (0.32 + 0.36 * side) * scale
    wheel = 0.08 * height * scale
    bottom = ground - 0.8 * wheel
    top = bottom - 0.2 * height * scale
    roof = top - 0.17 * height * scale
    lean = 0.1 * length * math.sin(angle) * math.cos(angle)
    cabin = [(cx - 0.4 * length + lean, top), (cx - 0.24 * length + lean, roof),
             (cx + 0.22 * length + lean, roof), (cx + 0.38 * length + lean, top)]
    window = [(x + (cx + lean - x) * 0.15, y + (0.15 * (top - roof) if y == roof else -2)) for x, y in cabin]
    axle = (0.5 * length - 1.4 * wheel) if side > 0.35 else 0.36 * length
    squash = 0.35 + 0.65 * side
    wheels = [(cx + s * axle - wheel * squash, ground - 2 * wheel, cx + s * axle + wheel * squash, ground)
              for s in (-1, 1)]
    return {"body": [(cx - length / 2, top, cx + length / 2, bottom)], "cabin": [cabin], "window": [window],
            "wheels": wheels, "shadow": [(cx - 0.6 * length, ground - 0.03 * height, cx + 0.6 * length,
                                          ground + 0.05 * height)],
            "lights": [(cx + s * 0.35 * length - 3, top + 4, cx + s * 0.35 * length + 3, top + 9)
                       for s in (-1, 1)] if front > 0.6 else []}


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    top, bottom = rng.integers(60, 250, 3), rng.integers(40, 230, 3)
    ramp = np.linspace(0, 1, height)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp) * np.ones((1, width, 1))
    horizon = int(height * rng.uniform(0.45, 0.65))
    pixels[horizon:] = pixels[horizon:] * rng.uniform(0.6, 0.9) + rng.integers(0, 40, 3)
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):  # studio clutter: panels, stands, lamps
        x0, y0 = rng.uniform(0, width), rng.uniform(0, horizon)
        box = (x0, y0, x0 + rng.uniform(8, 50), y0 + rng.uniform(8, 60))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.6 else draw.ellipse)(box, fill=colour)
    return image


def _carvana_view(rng: np.random.Generator, car_colour: tuple[int, ...], background: Image.Image,
                  view: int, scale: float) -> tuple[Image.Image, np.ndarray]:
    width, height = background.size
    image = background.copy()
    mask = Image.new("P", (width, height), 0)
    mask.putpalette([0, 0, 0, 255, 255, 255])
    shapes = _car_shapes(rng, view, width, height, scale)
    draw, paint = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    draw.ellipse(shapes["shadow"][0], fill=tuple(int(c * 0.45) for c in background.getpixel((0, height - 1))))
    shade = tuple(int(c * 0.8) for c in car_colour)
    for box in shapes["body"]:
        draw.rounded_rectangle(box, radius=6, fill=car_colour)
        paint.rounded_rectangle(box, radius=6, fill=1)
    for polygon in shapes["cabin"]:
        draw.polygon(polygon, fill=shade)
        paint.polygon(polygon, fill=1)
    for polygon in shapes["window"]:
        draw.polygon(polygon, fill=(40, 55, 70))
    for box in shapes["wheels"]:
        draw.ellipse(box, fill=(20, 20, 20))
        paint.ellipse(box, fill=1)
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        draw.ellipse((cx - (box[2] - box[0]) / 4, cy - 3, cx + (box[2] - box[0]) / 4, cy + 3), fill=(150, 150, 150))
    for box in shapes["lights"]:
        draw.ellipse(box, fill=(250, 245, 200))
    noise = rng.normal(0, 5, (height, width, 3))
    image = Image.fromarray((np.asarray(image, dtype=np.float64) + noise).clip(0, 255).astype(np.uint8))
    return image, mask


def generate_carvana(root: Path, cars: int = CARVANA_CARS, size: tuple[int, int] = CARVANA_SIZE) -> None:
    """Write the embedded Carvana layout under ``root``."""
    rng = np.random.default_rng(20170927)
    (root / "train").mkdir(parents=True)
    (root / "train_masks").mkdir()
    rows = []
    ids = sorted({f"{int(rng.integers(0, 2**48)):012x}" for _ in range(cars)})
    for car in ids:
        colour = _CAR_COLOURS[int(rng.integers(len(_CAR_COLOURS)))]
        colour = tuple(int(c) for c in np.clip(np.array(colour) + rng.integers(-15, 16, 3), 0, 255))
        background, scale = _background(rng, *size), rng.uniform(0.85, 1.05)
        for view in range(1, 17):
            image, mask = _carvana_view(rng, colour, background, view, scale)
            name = f"{car}_{view:02d}"
            image.save(root / "train" / f"{name}.jpg", quality=90)
            mask.save(root / "train_masks" / f"{name}_mask.gif")
            rows.append((f"{name}.jpg", rle_encode(np.asarray(mask))))
    with (root / "train_masks.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["img", "rle_mask"])
        writer.writerows(rows)


# ---------------------------------------------------------------- LGG brain MRI

def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    coarse = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(coarse.resize((size, size), Image.BILINEAR), dtype=np.float64) / 255


def _lgg_slice(rng: np.random.Generator, patient: dict, t: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One 3-channel slice (pre-contrast, FLAIR, post-contrast) at depth ``t`` in (0, 1), and its mask."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    extent = math.sqrt(max(0.05, 1 - 0.85 * (2 * t - 1) ** 2))
    cy, cx = patient["centre"]
    ry, rx = patient["radii"][0] * extent * size, patient["radii"][1] * extent * size
    head = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    brain = head < 0.82
    skull = (head >= 0.82) & (head < 1.0)
    texture = _smooth_noise(rng, size, 12)
    ventricles = ((((yy - cy) / (0.18 * ry)) ** 2 + ((xx - cx + 0.12 * rx) / (0.08 * rx)) ** 2 < 1)
                  | (((yy - cy) / (0.18 * ry)) ** 2 + ((xx - cx - 0.12 * rx) / (0.08 * rx)) ** 2 < 1))
    ventricles &= abs(t - 0.5) < 0.25
    tumour = np.zeros((size, size), dtype=bool)
    depth = (t - patient["tumour_t"]) / patient["tumour_w"]
    if abs(depth) < 1:
        shrink = math.sqrt(1 - depth ** 2)
        for (dy, dx, r) in patient["blobs"]:
            ty, tx = cy + dy * ry, cx + dx * rx
            tumour |= (yy - ty) ** 2 + (xx - tx) ** 2 < (r * shrink * size) ** 2
        tumour &= brain
    channels = []
    for base, skull_level, vent_level, tumour_level in ((0.45, 0.9, 0.2, 0.5), (0.4, 0.3, 0.15, 0.85),
                                                         (0.45, 0.85, 0.2, 0.6)):
        img = np.zeros((size, size))
        img[brain] = base + 0.2 * (texture[brain] - 0.5)
        img[skull] = skull_level
        img[brain & ventricles] = vent_level
        img[tumour] = tumour_level + 0.1 * (texture[tumour] - 0.5)
        channels.append(img * patient["gain"])
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 0.03, (size, size, 3))
    return (pixels.clip(0, 1) * 255).astype(np.uint8), tumour.astype(np.uint8) * 255


def generate_lgg(root: Path, patients: int = LGG_PATIENTS, size: int = LGG_SIZE) -> None:
    """Write the embedded LGG layout (``kaggle_3m/TCGA_*``) under ``root``."""
    rng = np.random.default_rng(20190409)
    slices_dir = root / "kaggle_3m"
    slices_dir.mkdir(parents=True)
    names = set()
    while len(names) < patients:
        inst = ("CS", "DU", "EZ", "FG", "HT")[int(rng.integers(5))]
        date = f"{int(rng.integers(1995, 2005))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
        names.add(f"TCGA_{inst}_{int(rng.integers(1000, 10000))}_{date}")
    for name in sorted(names):
        patient = {
            "centre": (size * rng.uniform(0.46, 0.54), size * rng.uniform(0.46, 0.54)),
            "radii": (rng.uniform(0.36, 0.42), rng.uniform(0.3, 0.36)),
            "gain": rng.uniform(0.85, 1.1),
            "tumour_t": rng.uniform(0.4, 0.6), "tumour_w": rng.uniform(0.2, 0.32),
            "blobs": [(rng.uniform(-0.45, 0.45), rng.uniform(-0.45, 0.45), rng.uniform(0.05, 0.1))],
        }
        dy, dx, r = patient["blobs"][0]
        patient["blobs"] += [(dy + rng.uniform(-0.12, 0.12), dx + rng.uniform(-0.12, 0.12), r * rng.uniform(0.5, 0.9))
                             for _ in range(2)]
        folder = slices_dir / name
        folder.mkdir()
        count = int(rng.integers(12, 21))
        for n in range(1, count + 1):
            image, mask = _lgg_slice(rng, patient, (n - 0.5) / count, size)
            Image.fromarray(image, "RGB").save(folder / f"{name}_{n}.tif")
            Image.fromarray(mask, "L").save(folder / f"{name}_{n}_mask.tif")
