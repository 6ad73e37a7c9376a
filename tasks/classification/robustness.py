"""Classification after the run: transformed validation images (the corruptions suite), published
corrupted sets read in place, and the ``adversarial`` and ``cifar10.1`` suites.

Every classification model takes [0, 1] pixels (its normalisation is inside, :class:`Normalized`), so
corruptions act on the uint8 images and attacks on [0, 1] pixels, ε = 1/255 as in the paper.

Published files, read in place (nothing is copied or downloaded):

- CIFAR-10-C (RobustBench layout): ``CIFAR-10-C/<corruption>.npy`` (N·5 × 32 × 32 × 3 uint8, the five
  severities stacked, 10 000 each in the official files) and ``CIFAR-10-C/labels.npy``; ``--data`` names
  the ``CIFAR-10-C`` folder or its parent.
- ImageNet-C (RobustBench layout): ``ImageNet-C/<corruption>/<severity>/<wnid>/*.JPEG``; classes are
  matched by their ``<wnid>`` folder names with the run's training classes.
- CIFAR-10.1 v6: ``cifar10.1_v6_data.npy`` (2000 × 32 × 32 × 3 uint8) and ``cifar10.1_v6_labels.npy``
  (2000 int labels in CIFAR-10's class order); ``--data`` names their folder.

>>> sorted(AdversarialSuite.defaults)
['autoattack', 'batch_size', 'eps', 'limit', 'pgd_step_size', 'pgd_steps', 'seed']
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lcdense import Cell, LcdenseError, Suite, SuiteContext, SuiteResult, Task

from .data import TensorData
from .imagenet import check_image_folders
from .scoring import batch_sums, fgsm, metrics_from_sums

Transform = Callable[[np.ndarray, int], np.ndarray]
CIFAR101_FILES = ("cifar10.1_v6_data.npy", "cifar10.1_v6_labels.npy")


# ---- validation images ------------------------------------------------------------------------------

class _FolderImages(torch.utils.data.Dataset):
    """An image folder's samples resized and centre-cropped to the model's input, then ``transform``ed
    as uint8 H×W×3, as [0, 1] CHW tensors."""

    def __init__(self, samples: list[tuple[str, int]], size: int, transform: Transform | None) -> None:
        from torchvision import transforms

        self.samples, self.transform = samples, transform
        self.crop = transforms.Compose([transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        with Image.open(path) as img:
            image = np.asarray(self.crop(img.convert("RGB")))
        if self.transform is not None:
            image = self.transform(image, index)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255), label


def _folder_samples(root: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(path, label) of every image under ``root/<class>/``, labels by the position in ``classes``."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    index = {name: i for i, name in enumerate(classes)}
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    unknown = sorted(set(found) - set(index))
    if not found or unknown:
        raise LcdenseError(f"{root} must hold <class>/ folders of the run's classes"
                           + (f"; unknown: {', '.join(unknown[:5])}" if unknown else " (none found)"))
    return [(str(p), index[c]) for c in found for p in sorted((root / c).iterdir())
            if p.suffix.lower() in IMG_EXTENSIONS]


def _folder_classes(data: Any) -> tuple[list[str], Path]:
    """The training classes and the val folder of image-folder data (either recipe)."""
    if "val_folder" in data:  # an ImageNet-C corruption and severity
        return list(data["classes"]), Path(data["val_folder"])
    if "classes" in data:  # the timm recipe's data
        return list(data["classes"]), Path(data["source"]) / "val"
    root = Path(data["val"].root).parent
    return check_image_folders(root), Path(data["val"].root)


def val_batches(data: Any, config: dict[str, Any], device: torch.device, transform: Transform | None = None,
                limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The validation split as ([0, 1] float NCHW, labels) batches of ``eval.batch_size`` on ``device``:
    the first ``limit`` images, each passed through ``transform(image, index)`` (uint8 H×W×C) first."""
    size = int(config["eval"]["batch_size"])
    if isinstance(data, TensorData):
        count = len(data.val_y) if limit is None else min(limit, len(data.val_y))
        for start in range(0, count, size):
            x = data.val_x[start:min(start + size, count)]
            if transform is not None:
                x = torch.from_numpy(np.stack([transform(img.permute(1, 2, 0).numpy(), start + i).reshape(img.shape[1], img.shape[2], -1)
                                               for i, img in enumerate(x)]).transpose(0, 3, 1, 2).copy())
            yield x.to(device).float().div_(255), data.val_y[start:start + len(x)].to(device)
        return
    classes, folder = _folder_classes(data)
    samples = _folder_samples(folder, classes)
    samples = samples if limit is None else samples[:limit]
    dataset = _FolderImages(samples, int(config["data"]["image_size"]), transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=size, num_workers=int(config["data"]["workers"]))
    for x, y in loader:
        yield x.to(device), y.to(device)


def _classes(data: Any) -> int:
    if isinstance(data, TensorData):
        return len(data.classes) or int(data.train_y.max()) + 1
    return len(_folder_classes(data)[0])


@torch.no_grad()
def image_metrics(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], classes: int) -> dict[str, float]:
    """``top1``, ``val_loss`` (and ``top5`` with ≥ 5 classes) of ``model`` over ``batches``, in fp32."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)
    for x, y in batches:
        sums += batch_sums(model(x), y)
    if not sums[0]:
        raise LcdenseError("no validation image to evaluate")
    return metrics_from_sums(sums, classes)


def evaluate_images(model: nn.Module, data: Any, config: dict[str, Any], cell: Cell, transform: Transform | None,
                    limit: int | None) -> dict[str, float]:
    """:meth:`ClassificationTask.evaluate_images`: top-1/top-5/loss over the (transformed) validation split."""
    cell.provenance.eval_precision = "fp32"
    return image_metrics(model, val_batches(data, config, cell.device, transform, limit), _classes(data))


# ---- published corruption files ---------------------------------------------------------------------

def _npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise LcdenseError(f"missing file {path}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise LcdenseError(f"cannot read {path} ({exc}); the file is corrupt or not a .npy array") from None


def _check_images(array: np.ndarray, path: Path, data: TensorData) -> None:
    want = (data.val_x.shape[2], data.val_x.shape[3], data.channels)
    if array.ndim != 4 or tuple(array.shape[1:]) != want or array.dtype != np.uint8:
        raise LcdenseError(f"{path} holds {array.dtype} images of shape {tuple(array.shape[1:])}; the run's model "
                           f"takes uint8 {want[0]}×{want[1]}×{want[2]}")


def _check_labels(labels: np.ndarray, path: Path, classes: int, count: int) -> None:
    if labels.ndim != 1 or len(labels) != count or not np.issubdtype(labels.dtype, np.integer):
        raise LcdenseError(f"{path} holds {labels.dtype} labels of shape {labels.shape}; expected {count} integers")
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise LcdenseError(f"{path} has labels up to {int(labels.max())}, the run's model has {classes} classes")


def published_corruptions(root: Path, data: Any, *, names: list[str],
                          severities: list[int]) -> Iterator[tuple[str, int, Any]]:
    """:meth:`ClassificationTask.published_corruptions`: CIFAR-10-C (tensor data) or ImageNet-C (image
    folders) under ``root``, read in place."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise LcdenseError(f"corruption files folder {root} does not exist")
    if isinstance(data, TensorData):
        folder = root / "CIFAR-10-C" if (root / "CIFAR-10-C").is_dir() else root
        labels = _npy(folder / "labels.npy")
        present = [n for n in names if (folder / f"{n}.npy").is_file()]
        if not present:
            raise LcdenseError(f"{folder} holds none of {', '.join(names[:3])}...; expected CIFAR-10-C's "
                               f"<corruption>.npy and labels.npy (RobustBench layout)")
        for name in present:
            images = _npy(folder / f"{name}.npy")
            _check_images(images, folder / f"{name}.npy", data)
            if len(images) % 5 or len(labels) != len(images):
                raise LcdenseError(f"{folder / (name + '.npy')} has {len(images)} images and labels.npy "
                                   f"{len(labels)} labels; expected equal counts, five severities stacked")
            per = len(images) // 5
            for severity in severities:
                rows = slice((severity - 1) * per, severity * per)
                y = np.asarray(labels[rows])
                _check_labels(y, folder / "labels.npy", _classes(data), per)
                x = torch.from_numpy(np.ascontiguousarray(np.asarray(images[rows]).transpose(0, 3, 1, 2)))
                yield name, severity, dataclasses.replace(data, val_x=x, val_y=torch.from_numpy(y.astype(np.int64)),
                                                          source=str(folder / f"{name}.npy"))
        return
    folder = root / "ImageNet-C" if (root / "ImageNet-C").is_dir() else root
    classes, _ = _folder_classes(data)
    present = [n for n in names if (folder / n).is_dir()]
    if not present:
        raise LcdenseError(f"{folder} holds none of {', '.join(names[:3])}...; expected ImageNet-C's "
                           f"<corruption>/<severity>/<wnid>/ folders (RobustBench layout)")
    for name in present:
        for severity in severities:
            level = folder / name / str(severity)
            if level.is_dir():
                yield name, severity, {"classes": classes, "source": str(level.parent), "val_folder": level}


# ---- suites -----------------------------------------------------------------------------------------

def _require_classification(task: Task) -> str | None:
    return None if task.name == "classification" else f"it attacks classifiers; task '{task.name}' is not one"


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step: float, steps: int,
        generator: torch.Generator) -> torch.Tensor:
    """ℓ∞ PGD in [0, 1] pixel space: a uniform random start in the ε-ball, then ``steps`` signed-gradient
    steps of size ``step`` on the cross-entropy, each projected back onto the ball and [0, 1]."""
    start = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device) * eps
    adv = (x + start).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv).float(), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = torch.min(torch.max(adv.detach() + step * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return adv.detach()


class AdversarialSuite(Suite):
    """Top-1 under ℓ∞ attacks at ε = 1/255 in [0, 1] pixel space (the paper's; normalisation is inside the
    model): ``fgsm_top1`` (one step), ``pgd_top1`` (``pgd_steps`` steps of ``pgd_step_size``, default ε/4,
    from a seeded random start) and ``autoattack_top1`` (AutoAttack's official code, ``pyautoattack``,
    its ``standard`` version, or ``plus``, ``rand``, or a list of its attacks such as ``[apgd-ce]``;
    ``autoattack: null`` skips it, as does a missing package, with one line).
    ``clean_top1`` is the same images unattacked; ``limit`` takes the first N validation images."""

    name = "adversarial"  # as its entry point in pyproject.toml names it

    defaults: ClassVar[dict[str, Any]] = {"eps": 1 / 255, "pgd_steps": 10, "pgd_step_size": None,
                                          "autoattack": "standard", "limit": None, "batch_size": 250, "seed": 0}

    def unsupported(self, task: Task) -> str | None:
        return _require_classification(task)

    def run(self, task: Task, model: nn.Module, data: Any, context: SuiteContext) -> SuiteResult:
        s, cell, config = context.settings, context.cell, context.config
        eps = float(s["eps"])
        if not 0 < eps < 1:
            raise LcdenseError(f"adversarial eps must lie in (0, 1) (pixels in [0, 1]), got {eps}")
        steps, step = int(s["pgd_steps"]), float(s["pgd_step_size"] or eps / 4)
        limit = None if s["limit"] is None else int(s["limit"])
        config = {**config, "eval": {**config["eval"], "batch_size": int(s["batch_size"])}}
        cell.provenance.eval_precision = "fp32"
        model.eval()

        def attack(name: str, make: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]) -> float:
            correct = total = 0
            for index, (x, y) in enumerate(val_batches(data, config, cell.device, limit=limit)):
                adv = make(x, y, index)
                if (adv - x).abs().max() > eps + 1e-6:
                    raise LcdenseError(f"{name} left the ε-ball ({float((adv - x).abs().max()):.6f} > {eps})")
                with torch.no_grad():
                    correct += int((model(adv).argmax(1) == y).sum())
                total += len(y)
            return correct / total

        seed = int(s["seed"])
        metrics = {
            "clean_top1": context.progress.step("clean", lambda: attack("clean", lambda x, y, i: x)),
            "fgsm_top1": context.progress.step("fgsm", lambda: attack("FGSM", lambda x, y, i: fgsm(model, x, y, eps))),
            "pgd_top1": context.progress.step("pgd", lambda: attack("PGD", lambda x, y, i: pgd(
                model, x, y, eps, step, steps, torch.Generator().manual_seed(seed * 100003 + i)))),
        }
        version = s["autoattack"]
        info: dict[str, Any] = {"eps": eps, "pgd_steps": steps, "pgd_step_size": step, "limit": limit,
                                "space": "[0, 1] pixels, normalisation inside the model"}
        if version:
            try:
                import pyautoattack
            except ImportError:
                context.notes.append('AutoAttack skipped: pyautoattack is not installed (pip install "lcdense[robustness]")')
            else:
                version = list(version) if isinstance(version, (list, tuple)) else str(version)
                metrics["autoattack_top1"] = context.progress.step(
                    "autoattack", lambda: _autoattack(model, data, config, cell, eps, version, seed, limit))
                info["autoattack"] = {"version": version, "package": f"pyautoattack {pyautoattack.__version__}"}
        headline = [k for k in ("fgsm_top1", "pgd_top1", "autoattack_top1") if k in metrics]
        return SuiteResult(metrics, headline, info, list(context.notes))


def _autoattack(model: nn.Module, data: Any, config: dict[str, Any], cell: Cell, eps: float, version: str | list[str],
                seed: int, limit: int | None) -> float:
    """Robust top-1 under AutoAttack (ℓ∞, ``version``) from its official code."""
    import logging

    from pyautoattack import AutoAttack

    batches = list(val_batches(data, config, torch.device("cpu"), limit=limit))
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    custom = {"version": "custom", "attacks": list(version)} if isinstance(version, list) else {"version": version}
    adversary = AutoAttack(model, norm="Linf", eps=eps, seed=seed, device=cell.device, **custom)
    classes = _classes(data)
    adversary.apgd_targeted.n_target_classes = min(adversary.apgd_targeted.n_target_classes, classes - 1)
    adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, classes - 1)
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=int(config["eval"]["batch_size"]))
    if (x_adv - x).abs().max() > eps + 1e-5:
        raise LcdenseError(f"AutoAttack left the ε-ball ({float((x_adv - x).abs().max()):.6f} > {eps})")
    with torch.no_grad():
        hits = sum(int((model(xb.to(cell.device)).argmax(1).cpu() == yb).sum())
                   for xb, yb in zip(x_adv.split(256), y.split(256)))
    return hits / len(y)


class Cifar101Suite(Suite):
    """CIFAR-10.1 v6 (Recht et al. 2018), read in place from its ``.npy`` files (``--data`` names their
    folder): ``top1``, ``top5`` and ``val_loss`` of a model trained on CIFAR-10's ten classes (or
    any 32 × 32 RGB, 10-class model, such as the embedded default's)."""

    name = "cifar10.1"  # as its entry point in pyproject.toml names it

    data_files = "folder of cifar10.1_v6_data.npy and cifar10.1_v6_labels.npy"
    needs_data = True

    def unsupported(self, task: Task) -> str | None:
        return _require_classification(task)

    def run(self, task: Task, model: nn.Module, data: Any, context: SuiteContext) -> SuiteResult:
        if context.data_path is None:
            raise LcdenseError("suite cifar10.1 reads the CIFAR-10.1 v6 files: pass --data PATH (the folder of "
                               f"{CIFAR101_FILES[0]} and {CIFAR101_FILES[1]}; nothing is downloaded)")
        if not isinstance(data, TensorData) or _classes(data) != 10 or data.val_x.shape[1:] != (3, 32, 32):
            raise LcdenseError("suite cifar10.1 needs a model of CIFAR-10's ten classes on 32×32 RGB images")
        folder = Path(context.data_path).expanduser()
        images, labels = _npy(folder / CIFAR101_FILES[0]), _npy(folder / CIFAR101_FILES[1])
        _check_images(images, folder / CIFAR101_FILES[0], data)
        _check_labels(labels, folder / CIFAR101_FILES[1], 10, len(images))
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2)))
        subset = dataclasses.replace(data, val_x=x, val_y=torch.from_numpy(np.asarray(labels).astype(np.int64)))
        context.cell.provenance.eval_precision = "fp32"
        metrics = context.progress.step("cifar10.1", lambda: image_metrics(
            model, val_batches(subset, context.config, context.cell.device), 10))
        return SuiteResult(dict(metrics), ["top1"], {"files": str(folder), "images": len(labels)})


__all__ = ["AdversarialSuite", "Cifar101Suite", "evaluate_images", "image_metrics", "pgd", "published_corruptions",
           "val_batches"]

