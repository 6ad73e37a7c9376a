"""Loading, fitting to the network size and augmenting image/mask pairs, reproducibly.

Every training sample is requested as ``(index, seed)``; the seed (drawn from the epoch's
generator in the main process) seeds albumentations for that sample alone, so an epoch's
augmentations are identical with any number of DataLoader workers and on resume.

>>> import numpy as np
>>> image, mask = np.zeros((128, 191, 3), np.uint8), np.ones((128, 191), np.uint8)
>>> x, y = apply(build_transform((64, 96), augment=True), image, mask, seed=3)
>>> tuple(x.shape), tuple(y.shape), str(x.dtype)
((3, 64, 96), (1, 64, 96), 'torch.float32')
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from lcdense import LcdenseError, World

from .layouts import Sample, open_image, rle_decode

#: Per-channel normalisation after scaling to [0, 1] (the ImageNet statistics smp encoders expect).
MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def read_pair(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 HxWx3, binary uint8 HxW mask of 0/1); any unreadable file names itself."""
    image = _read(sample.image, "RGB", "image")
    if sample.rle is not None:
        mask = rle_decode(sample.rle, image.shape[0], image.shape[1], source=str(sample.image))
    else:
        mask = (_read(sample.mask, "L", "mask") > 0).astype(np.uint8)
        if mask.shape != image.shape[:2]:
            raise LcdenseError(f"mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]} but its image "
                               f"{sample.image} is {image.shape[1]}x{image.shape[0]}; masks must match their image")
    return image, mask


def _read(path: Path, mode: str, what: str) -> np.ndarray:
    with open_image(path, what) as img:
        # palette masks (Carvana GIFs) hold 0/1 indices: read the indices, not the colours
        return np.asarray(img if img.mode == "P" and mode == "L" else img.convert(mode))


def build_transform(size: Sequence[int], *, augment: bool) -> A.Compose:
    """Scale to fit ``size`` (H, W) keeping the aspect ratio, zero-pad to it, optionally augment
    (flip, shift-scale-rotate, brightness/contrast), normalise."""
    height, width = size
    steps: list[A.BasicTransform] = [
        A.LongestMaxSize(max_size_hw=(height, width), area_for_downscale="image"),
        A.PadIfNeeded(min_height=height, min_width=width, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
    ]
    if augment:
        steps += [
            A.HorizontalFlip(p=0.5),
            A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=(-15, 15),
                     border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        ]
    steps.append(A.Normalize(mean=MEAN, std=STD))
    return A.Compose(steps)


def apply(transform: A.Compose, image: np.ndarray, mask: np.ndarray, seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``transform`` with its randomness drawn from ``seed`` alone; CHW float tensors out."""
    if seed is not None:
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
    out = transform(image=image, mask=mask)
    x = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
    y = torch.from_numpy(np.ascontiguousarray(out["mask"][None].astype(np.float32)))
    return x, y


@dataclass
class PairDataset:
    """Map-style dataset keyed by ``(index, seed)``; ``seed=None`` means no augmentation."""

    samples: list[Sample]
    size: tuple[int, int]
    augment: bool
    #: Applied to each image as read (RGB uint8 H×W×3) with its index, before scaling (the corruptions suite).
    transform: Callable[[np.ndarray, int], np.ndarray] | None = None
    _train: A.Compose = field(init=False, repr=False)
    _plain: A.Compose = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._train = build_transform(self.size, augment=self.augment)
        self._plain = build_transform(self.size, augment=False)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int | None]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key
        image, mask = read_pair(self.samples[index])
        if self.transform is not None:
            image = self.transform(image, index)
        return apply(self._plain if seed is None else self._train, image, mask, seed)


def train_batches(dataset: PairDataset, generator: torch.Generator, *, batch_size: int, workers: int,
                  pin_memory: bool = False, world: World | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled, augmented, full batches; order and augmentation come from ``generator``.

    With several ranks (``world``), each yields its share of every global batch of ``batch_size``.
    """
    world = world or World()
    order = torch.randperm(len(dataset), generator=generator).tolist()
    seeds = torch.randint(0, 2**62, (len(dataset),), generator=generator).tolist()
    keys = list(zip(order, seeds))
    mine = world.shard(torch.arange(batch_size)).tolist()
    keys = [keys[start + i] for start in range(0, len(keys) - batch_size + 1, batch_size) for i in mine]
    return iter(DataLoader(dataset, batch_size=len(mine), sampler=keys, drop_last=True,
                           num_workers=workers, pin_memory=pin_memory))


def eval_batches(dataset: PairDataset, *, batch_size: int, workers: int,
                 pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The dataset in its stored order, unaugmented, every sample once."""
    keys = [(i, None) for i in range(len(dataset))]
    return iter(DataLoader(dataset, batch_size=batch_size, sampler=keys, num_workers=workers,
                           pin_memory=pin_memory))
