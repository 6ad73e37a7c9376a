"""The common corruptions (Hendrycks & Dietterich, ImageNet-C/CIFAR-10-C) of validation images, at
five severities, generated with ``imagecorruptions`` (extra ``robustness``).

The original ``imagecorruptions`` 1.1.2 wheel calls scikit-image's ``gaussian(..., multichannel=True)``,
which scikit-image ≥ 0.19 rejects (``gaussian_blur`` and ``glass_blur`` fail); lcdense uses the
maintained fork ``imagecorruptions-imaug`` (same functions, same import name, current scikit-image,
its glass blur through numba). Every image is corrupted with its own seed, derived from
(``seed``, corruption, severity, image index), so a corrupted validation set is the same in every cell,
every process and on resume.

>>> CORRUPTIONS[:3], len(CORRUPTIONS), len(COMMON)
(('gaussian_noise', 'shot_noise', 'impulse_noise'), 19, 15)
>>> corruption_names("noise"), corruption_names(["fog", "snow"])
(['gaussian_noise', 'shot_noise', 'impulse_noise'], ['fog', 'snow'])
>>> image_seed(0, "fog", 3, 7) == image_seed(0, "fog", 3, 7), image_seed(0, "fog", 3, 7) == image_seed(0, "fog", 3, 8)
(True, False)
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..base.errors import LcdenseError, require_extra, unknown_name

#: The 15 corruptions of ImageNet-C's benchmark, then its 4 held-out ones: CIFAR-10-C's 19.
COMMON: tuple[str, ...] = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
                           "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
                           "elastic_transform", "pixelate", "jpeg_compression")
CORRUPTIONS: tuple[str, ...] = (*COMMON, "speckle_noise", "gaussian_blur", "spatter", "saturate")
#: Named groups of :func:`corruption_names`.
GROUPS: dict[str, tuple[str, ...]] = {
    "all": CORRUPTIONS, "common": COMMON, "noise": COMMON[0:3], "blur": COMMON[3:7], "weather": COMMON[7:11],
    "digital": COMMON[11:15], "extra": CORRUPTIONS[15:],
}
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
_SEEDED = ("impulse_noise", "glass_blur")  # take a seed argument; the others draw from numpy's global generator


def corruption_names(value: Any) -> list[str]:
    """The corruptions a setting names: a group of :data:`GROUPS`, a comma-separated string or a list.

    Args:
        value: ``"all"``, ``"common"``, ``"noise,fog"``, ``["fog", "snow"]``...

    Returns:
        The corruption names, in the order given (groups expanded).

    Raises:
        LcdenseError: An unknown name.
    """
    items = value.split(",") if isinstance(value, str) else list(value or [])
    out: list[str] = []
    for item in (str(i).strip() for i in items if str(i).strip()):
        if item in GROUPS:
            out += [c for c in GROUPS[item] if c not in out]
        elif item in CORRUPTIONS:
            out += [] if item in out else [item]
        else:
            raise unknown_name("corruption", item, [*GROUPS, *CORRUPTIONS])
    if not out:
        raise LcdenseError("no corruption named; use all, common, a group (noise, blur, weather, digital) or names")
    return out


def severities(value: Any) -> list[int]:
    """The severities a setting names (a list, or a comma-separated string), each 1-5.

    Args:
        value: e.g. ``[1, 3, 5]`` or ``"1,3,5"``.

    Returns:
        The severities.

    Raises:
        LcdenseError: A severity outside 1-5.
    """
    items = value.split(",") if isinstance(value, str) else list(value or [])
    try:
        out = [int(str(i).strip()) for i in items if str(i).strip()]
    except ValueError:
        raise LcdenseError(f"corruption severities must be integers 1-5, got {value!r}") from None
    if not out or any(s not in SEVERITIES for s in out):
        raise LcdenseError(f"corruption severities must be integers 1-5, got {value!r}")
    return out


def image_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    """The seed of one image's corruption, from the suite's seed, the corruption, severity and image index."""
    digest = hashlib.sha256(f"{seed}|{corruption}|{severity}|{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def corrupt_image(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """``image`` (uint8, H×W×C with C 1 or 3, or H×W) with ``corruption`` at ``severity``, drawn from ``seed``.

    Images smaller than 32 pixels a side (the library's minimum) are corrupted at 32 and scaled
    back. The global numpy generator is left as it was.

    Args:
        image: The image.
        corruption: A name of :data:`CORRUPTIONS`.
        severity: 1-5.
        seed: The seed of the corruption's randomness.

    Returns:
        The corrupted image, uint8, of the input's shape.
    """
    require_extra("robustness", "imagecorruptions", what="the corruptions suite")
    from imagecorruptions import corrupt

    if corruption not in CORRUPTIONS:
        raise unknown_name("corruption", corruption, CORRUPTIONS)
    shape = image.shape
    rgb = image if image.ndim == 3 and image.shape[2] == 3 else np.repeat(image.reshape(*shape[:2], 1), 3, axis=2)
    small = min(rgb.shape[:2]) < 32
    if small:
        import cv2

        rgb = cv2.resize(rgb, (max(32, rgb.shape[1]), max(32, rgb.shape[0])), interpolation=cv2.INTER_LINEAR)
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        extra = {"seed": seed} if corruption in _SEEDED else {}
        out = corrupt(np.ascontiguousarray(rgb), severity=severity, corruption_name=corruption, **extra)
    finally:
        np.random.set_state(state)
    if small:
        import cv2

        out = cv2.resize(out, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    if len(shape) == 2 or shape[2] == 1:  # grey in, grey out (the library made it RGB)
        out = np.round(out.astype(np.float32).mean(axis=2)).astype(np.uint8).reshape(shape)
    return out


@dataclass(frozen=True)
class Corruption:
    """One corruption at one severity, as a transform of a split's images: ``corruption(image, index)``.

    ``key`` names it for caches of corrupted copies (e.g. detection's image folders).

    Attributes:
        name: The corruption.
        severity: 1-5.
        seed: The suite's seed (each image's seed derives from it, the name, severity and index).
    """

    name: str
    severity: int
    seed: int = 0

    @property
    def key(self) -> str:
        """``<name>-<severity>-seed<seed>``."""
        return f"{self.name}-{self.severity}-seed{self.seed}"

    def __call__(self, image: np.ndarray, index: int) -> np.ndarray:
        """Image ``index`` of the split, corrupted (see :func:`corrupt_image`)."""
        return corrupt_image(image, self.name, self.severity, image_seed(self.seed, self.name, self.severity, index))


__all__ = ["COMMON", "CORRUPTIONS", "GROUPS", "SEVERITIES", "Corruption", "corrupt_image", "corruption_names",
           "image_seed", "severities"]
