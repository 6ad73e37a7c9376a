"""Classification datasets, read in place from their official on-disk layouts:

- ``cifar10``: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` (python pickles)
- ``cifar100``: ``cifar-100-python/{train, test, meta}``
- ``svhn``: ``{train,test}_32x32.mat``
- ``fashion-mnist``: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (upscaled to 32 px)
- ``imagefolder``: ``train/<class>/*`` and ``val/<class>/*`` (ImageNet style; see ``imagenet.py``)
- ``embedded-imagefolder``: a small shapes dataset generated on first use in that layout
- ``embedded`` (default): a small shapes dataset generated on first use *in CIFAR-10's layout*,
  so the real CIFAR reader is what runs.

Pickles are read with an unpickler that only admits the numpy and builtin types the CIFAR files
use, so a tampered batch file cannot run code.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lcdense import LcdenseError

DATASETS = ("embedded", "cifar10", "cifar100", "svhn", "fashion-mnist", "imagefolder", "embedded-imagefolder")
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
EMBEDDED_CLASSES = ("disc", "square", "triangle", "plus", "h-stripes", "v-stripes", "diagonal", "checker", "ring", "x")
EMBEDDED_VERSION = "v1"


@dataclass
class TensorData:
    """A dataset held in memory as uint8 images (N, C, H, W) and int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]


class _SafeUnpickler(pickle.Unpickler):
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("builtins", "dict"), ("builtins", "list"),
               ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict:
    if not path.is_file():
        raise LcdenseError(f"missing file {path}; expected the official python-version archive layout")
    try:
        with path.open("rb") as f:
            data = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as exc:
        raise LcdenseError(f"cannot read {path}: {exc}; the file is corrupt or not a CIFAR python batch") from None
    if not isinstance(data, dict):
        raise LcdenseError(f"{path} is not a CIFAR python batch (expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _cifar_arrays(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path)
    if "data" not in batch or label_key not in batch:
        raise LcdenseError(f"{path} lacks 'data' or '{label_key}'; is it a CIFAR python batch?")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise LcdenseError(f"{path} has data of shape {data.shape} and {len(labels)} labels; expected (N, 3072) and N")
    return data.reshape(-1, 3, 32, 32), labels


def _find(root: Path, *candidates: str) -> Path:
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    return root


def read_cifar10(root: Path) -> TensorData:
    folder = _find(root, "cifar-10-batches-py")
    parts = [_cifar_arrays(folder / f"data_batch_{i}", "labels") for i in range(1, 6)]
    val_x, val_y = _cifar_arrays(folder / "test_batch", "labels")
    meta = _load_pickle(folder / "batches.meta")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get("label_names", [])]
    return TensorData(torch.from_numpy(np.concatenate([p[0] for p in parts])),
                      torch.from_numpy(np.concatenate([p[1] for p in parts])),
                      torch.from_numpy(val_x), torch.from_numpy(val_y), classes, *CIFAR10_STATS, str(folder))


def read_cifar100(root: Path) -> TensorData:
    folder = _find(root, "cifar-100-python")
    train_x, train_y = _cifar_arrays(folder / "train", "fine_labels")
    val_x, val_y = _cifar_arrays(folder / "test", "fine_labels")
    meta = _load_pickle(folder / "meta")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get("fine_label_names", [])]
    mean, std = _channel_stats(train_x)
    return TensorData(torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(val_x),
                      torch.from_numpy(val_y), classes, mean, std, str(folder))


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.astype(np.float64) / 255.0
    return tuple(x.mean(axis=(0, 2, 3)).tolist()), tuple(x.std(axis=(0, 2, 3)).tolist())


def read_svhn(root: Path) -> TensorData:
    from scipy.io import loadmat

    def load(split: str) -> tuple[np.ndarray, np.ndarray]:
        path = root / f"{split}_32x32.mat"
        if not path.is_file():
            raise LcdenseError(f"missing file {path}; SVHN expects train_32x32.mat and test_32x32.mat")
        try:
            mat = loadmat(path)
        except Exception as exc:
            raise LcdenseError(f"cannot read {path}: {exc}") from None
        x = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)), dtype=np.uint8)
        y = mat["y"].reshape(-1).astype(np.int64) % 10  # label 10 means digit 0
        return x, y

    train_x, train_y = load("train")
    val_x, val_y = load("test")
    mean, std = _channel_stats(train_x)
    return TensorData(torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(val_x),
                      torch.from_numpy(val_y), [str(i) for i in range(10)], mean, std, str(root))


def _read_idx(root: Path, stem: str) -> np.ndarray:
    for path in (root / stem, root / f"{stem}.gz", root / "FashionMNIST" / "raw" / stem):
        if path.is_file():
            raw = path.read_bytes()
            if path.suffix == ".gz":
                raw = gzip.decompress(raw)
            ndim = raw[3]
            shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
            data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
            if data.size != int(np.prod(shape)):
                raise LcdenseError(f"{path} is truncated or corrupt ({data.size} values for shape {shape})")
            return data.reshape(shape)
    raise LcdenseError(f"missing file {root / stem}[.gz]; Fashion-MNIST expects the four idx-ubyte files")


def read_fashion_mnist(root: Path) -> TensorData:
    def images(stem: str) -> torch.Tensor:
        x = torch.from_numpy(_read_idx(root, stem).copy()).unsqueeze(1).float()
        x = torch.nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False)
        return x.round().clamp(0, 255).to(torch.uint8)

    train_x, val_x = images("train-images-idx3-ubyte"), images("t10k-images-idx3-ubyte")
    mean, std = _channel_stats(train_x.numpy())
    return TensorData(train_x, torch.from_numpy(_read_idx(root, "train-labels-idx1-ubyte").astype(np.int64)),
                      val_x, torch.from_numpy(_read_idx(root, "t10k-labels-idx1-ubyte").astype(np.int64)),
                      ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"],
                      mean, std, str(root))


# ---- embedded default ---------------------------------------------------------------------------

def _draw(kind: int, rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """One binary shape mask of class ``kind`` at a random position, scale and phase."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = rng.uniform(11, size - 11, 2)
    r = rng.uniform(6, 10)
    dy, dx = yy - cy, xx - cx
    period, phase = rng.uniform(4, 7), rng.uniform(0, 2 * np.pi)
    if kind == 0:
        mask = dy**2 + dx**2 <= r**2
    elif kind == 1:
        mask = (np.abs(dy) <= r * 0.8) & (np.abs(dx) <= r * 0.8)
    elif kind == 2:
        mask = (dy <= r * 0.7) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    elif kind == 3:
        w = r * 0.3
        mask = ((np.abs(dy) <= w) & (np.abs(dx) <= r)) | ((np.abs(dx) <= w) & (np.abs(dy) <= r))
    elif kind == 4:
        mask = np.sin(2 * np.pi * yy / period + phase) > 0
    elif kind == 5:
        mask = np.sin(2 * np.pi * xx / period + phase) > 0
    elif kind == 6:
        mask = np.sin(2 * np.pi * (xx + yy) / (period * 1.4) + phase) > 0
    elif kind == 7:
        mask = (np.sin(2 * np.pi * xx / period + phase) > 0) ^ (np.sin(2 * np.pi * yy / period + phase) > 0)
    elif kind == 8:
        dist = np.sqrt(dy**2 + dx**2)
        mask = (dist <= r) & (dist >= r * 0.55)
    else:
        w = r * 0.28
        mask = ((np.abs(dy - dx) <= w * 1.4) | (np.abs(dy + dx) <= w * 1.4)) & (np.abs(dy) <= r) & (np.abs(dx) <= r)
    return mask, rng.random(3)


def _embedded_images(count: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    images = np.empty((count, 3, 32, 32), dtype=np.uint8)
    labels = []
    for i in range(count):
        kind = i % 10
        mask, fg = _draw(kind, rng)
        bg = rng.random(3)
        while np.abs(fg - bg).sum() < 0.6:  # keep foreground and background distinguishable
            bg = rng.random(3)
        img = np.where(mask[None], fg[:, None, None], bg[:, None, None])
        img = img + rng.normal(0, 0.08, img.shape)
        images[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
        labels.append(kind)
    order = rng.permutation(count)
    return images[order], [labels[j] for j in order]


def _write_pickle(path: Path, obj: dict) -> None:
    buffer = io.BytesIO()
    pickle.dump(obj, buffer, protocol=2)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def ensure_embedded(cache_dir: Path, train_per_batch: int = 600, test: int = 1000) -> Path:
    """Generate (once) the embedded shapes dataset as ``cifar-10-batches-py`` under ``cache_dir``;
    returns the dataset root. Deterministic: the same bytes on every machine."""
    root = Path(cache_dir) / f"classification-embedded-{EMBEDDED_VERSION}"
    folder = root / "cifar-10-batches-py"
    if (folder / "batches.meta").is_file():
        return root
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        x, y = _embedded_images(train_per_batch, seed=i)
        _write_pickle(folder / f"data_batch_{i}", {b"batch_label": f"training batch {i} of 5".encode(),
                                                   b"labels": y, b"data": x.reshape(len(x), -1)})
    x, y = _embedded_images(test, seed=100)
    _write_pickle(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": y,
                                          b"data": x.reshape(len(x), -1)})
    _write_pickle(folder / "batches.meta", {b"label_names": [c.encode() for c in EMBEDDED_CLASSES],
                                            b"num_cases_per_batch": train_per_batch, b"num_vis": 3072})
    return root


def fingerprint(data: TensorData) -> str:
    """A short hash of the images and labels (recorded so runs can be matched to their data)."""
    h = hashlib.sha256()
    for t in (data.train_x, data.train_y, data.val_x, data.val_y):
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


READERS = {"cifar10": read_cifar10, "cifar100": read_cifar100, "svhn": read_svhn,
           "fashion-mnist": read_fashion_mnist}


def load_tensor_dataset(dataset: str, root: Path) -> TensorData:
    """Read one of the in-memory datasets from ``root``."""
    if not root.exists():
        raise LcdenseError(f"data directory {root} does not exist; pass --data PATH to the {dataset} files")
    if not root.is_dir():
        raise LcdenseError(f"--data {root} is not a directory")
    return READERS[dataset](root)
