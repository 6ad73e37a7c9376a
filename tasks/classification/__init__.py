"""Image classification: the paper's own setting (CIFAR ResNet-D-W, or any torchvision/timm model).

Metrics: ``top1`` (primary), ``top5`` (with ≥ 5 classes), ``val_loss`` and ``fgsm_top1`` — top-1
under an ℓ∞ FGSM attack with ε = 1/255 in [0, 1] pixel space (normalization is inside the model),
i.e. 1 − the attack's success rate over the validation set.

``train.recipe`` picks the training loop: ``lcdense`` (the shared SGD/AdamW loop, the paper's CIFAR
recipe) or ``timm`` (timm's training stack, the paper's ImageNet recipe: see ``timm_recipe.py``),
which reads image folders in the ImageNet layout (``imagenet.py``) and reports the best epoch's
top-1 as ``top1`` and the last epoch's as ``top1_last``.

>>> task = ClassificationTask()
>>> task.primary_metric, task.default_config()["model"]["name"]
('top1', 'resnet_lc')
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lcdense import (Cell, Footprint, LcdenseError, Scope, Task, TrainSettings, cifar_resnet, create_model, epoch_generator,
                     epoch_seed, preconditioned_inexact, require_extra, train_loop, unknown_name)

from . import robustness, timm_recipe
from .data import DATASETS, TensorData, ensure_embedded, fingerprint, load_tensor_dataset
from .export import export_model
from .imagenet import check_image_folders, ensure_embedded_imagefolder, image_folders
from .models import Normalized
from .scoring import batch_sums, class_hits, fgsm, metrics_from_sums, per_class_top1

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: The conversion scopes: name → (what it converts, convert's ``stem``); the stem is :func:`lcdense.stem_convs`'s.
SCOPES: dict[str, tuple[str, bool | str]] = {
    "all": ("every spatial conv, the stem included (the paper's setting; the classifier is linear and learnable)", True),
    "stem": ("the stem alone (e.g. ResNet-D's three 3x3 convs); every other spatial conv stays learnable", "only"),
    "body": ("every spatial conv but the stem, which stays learnable", False),
}
RECIPES = ("lcdense", "timm")  # the shared SGD/AdamW loop, or timm's training stack (tasks/classification/timm_recipe.py)


class ClassificationTask(Task):
    name = "classification"
    primary_metric = "top1"
    higher_is_better = True
    sweep_axes = {"width": "model.width", "depth": "model.depth", "kernel_size": "model.kernel_size",
                  "model": "model.name"}
    scopes = {name: text for name, (text, _) in SCOPES.items()}
    default_scope = "all"
    data_parallel = "torchrun"

    def scope(self, name: str, model: nn.Module) -> Scope:
        """The scope ``name`` of :data:`SCOPES`."""
        text, stem = SCOPES[name]
        return Scope(name, text, stem=stem)

    def __init__(self) -> None:
        self._fitted: dict[Path, timm_recipe.Fitted] = {}  # timm recipe: fit's results, until evaluate

    def default_config(self) -> dict[str, Any]:
        """The embedded-default setting: a ResNet-8-16 on the generated CIFAR-format shapes.

        The paper's recipe lives in configs/classification/cifar10_resnet_lc_20_16.yaml.
        """
        return {
            "data": {"dataset": "embedded", "root": None, "workers": 0,
                     "image_size": 224, "train_limit": None, "val_limit": None},
            "model": {"name": "resnet_lc", "depth": 8, "width": 16, "kernel_size": 3},
            "train": {"epochs": 4, "batch_size": 128, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9,
                      "nesterov": True, "weight_decay": 5e-4, "wd_norm_bias": True, "schedule": "cosine",
                      "warmup_epochs": 0.0,
                      "label_smoothing": 0.1, "augment": True, "amp": True, "sync_bn": False, "eval_every": 1,
                      "recipe": "lcdense", "timm": dict(timm_recipe.TIMM_DEFAULTS)},
            "eval": {"batch_size": 500, "fgsm_eps": 1 / 255},
            "evaluate": {"adversarial": dict(robustness.AdversarialSuite.defaults)},
        }

    # ---- data ------------------------------------------------------------------------------
    def prepare_data(self, config: dict[str, Any], cache_dir: Path) -> TensorData | dict[str, Any]:
        cfg = config["data"]
        dataset = cfg["dataset"]
        if dataset not in DATASETS:
            raise unknown_name("classification dataset", dataset, DATASETS)
        recipe = _recipe(config)
        if dataset.startswith("embedded") and cfg["root"]:
            raise LcdenseError(f"data.dataset '{dataset}' is generated; pass --dataset imagefolder, cifar10 (etc.) with --data")
        folders = dataset in ("imagefolder", "embedded-imagefolder")
        if recipe == "timm" and not folders:
            raise LcdenseError(f"train.recipe 'timm' reads image folders (train/<wnid>/, val/<wnid>/); use --dataset "
                               f"imagefolder --data PATH or --dataset embedded-imagefolder, not '{dataset}'")
        if dataset == "embedded-imagefolder":
            root = ensure_embedded_imagefolder(cache_dir)
            return image_folders(root) if recipe == "timm" else _image_folders(root, int(cfg["image_size"]))
        if dataset == "embedded":
            data = load_tensor_dataset("cifar10", ensure_embedded(cache_dir))
        elif not cfg["root"]:
            hint = "" if folders else f"; fetch it once with: python scripts/fetch_dataset.py {dataset} PATH --download"
            raise LcdenseError(f"dataset '{dataset}' needs its files: pass --data PATH (nothing is downloaded{hint})")
        elif dataset == "imagefolder":
            root = Path(cfg["root"])
            return image_folders(root) if recipe == "timm" else _image_folders(root, int(cfg["image_size"]))
        else:
            data = load_tensor_dataset(dataset, Path(cfg["root"]))
        if cfg.get("train_limit"):  # the first N images of each split (shortened runs)
            n = int(cfg["train_limit"])
            data.train_x, data.train_y = data.train_x[:n], data.train_y[:n]
        if cfg.get("val_limit"):
            n = int(cfg["val_limit"])
            data.val_x, data.val_y = data.val_x[:n], data.val_y[:n]
        return data

    def build_model(self, config: dict[str, Any], data: Any) -> nn.Module:
        return self.model_from_facts(config, self.model_facts(config, data))

    def model_facts(self, config: dict[str, Any], data: Any) -> dict[str, Any]:
        """The classes, input channels and normalisation the model is built for."""
        classes, channels, mean, std = _data_shape(data)
        return {"classes": classes, "channels": channels, "mean": list(mean), "std": list(std)}

    def model_from_facts(self, config: dict[str, Any], facts: dict[str, Any]) -> nn.Module:
        m = config["model"]
        classes, channels, mean, std = facts["classes"], facts["channels"], facts["mean"], facts["std"]
        if m["name"] == "resnet_lc":
            net = cifar_resnet(int(m["depth"]), int(m["width"]), int(m["kernel_size"]), classes, channels)
        else:
            drop_path = float(config["train"]["timm"]["drop_path"]) if _recipe(config) == "timm" else 0.0
            net = create_model(m["name"], num_classes=classes, **({"drop_path_rate": drop_path} if drop_path else {}))
        return Normalized(net, mean, std)

    def export(self, model: nn.Module, config: dict[str, Any], facts: dict[str, Any], folder: Path) -> dict[str, Path]:
        """The folded network as a timm, torchvision or (``resnet_lc``) lcdense checkpoint (see ``export.py``)."""
        return export_model(model, config, facts, folder)

    def input_size(self, config: dict[str, Any]) -> tuple[int, ...]:
        if config["data"]["dataset"] in ("imagefolder", "embedded-imagefolder"):
            size = int(config["data"]["image_size"])
            return (3, size, size)
        return (1 if config["data"]["dataset"] == "fashion-mnist" else 3, 32, 32)

    def footprint(self, config: dict[str, Any]) -> Footprint:
        """train_loop's step, plus the evaluation: clean at eval.batch_size, then FGSM (a backward to the
        input); the timm recipe's step is its own (:func:`timm_recipe.footprint`)."""
        fp = timm_recipe.footprint(config, super().footprint(config)) if _recipe(config) == "timm" \
            else super().footprint(config)
        fp.eval_batch_size, fp.eval_input_grad = int(config["eval"]["batch_size"]), True
        return fp

    # ---- training ----------------------------------------------------------------------------
    def fit(self, model: nn.Module, data: Any, config: dict[str, Any], cell: Cell) -> tuple[nn.Module, list[dict[str, float]]]:
        if _recipe(config) == "timm":
            model, fitted = timm_recipe.fit(model, data, config, cell)
            self._fitted[cell.dir] = fitted
            return model, fitted.history
        settings = TrainSettings.from_config(config["train"])
        train = config["train"]
        batch_size = int(train["batch_size"])
        smoothing = float(train.get("label_smoothing", 0.0))

        def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(model(x), y, label_smoothing=smoothing)

        if isinstance(data, TensorData):
            steps = math.ceil(len(data.train_y) / batch_size)

            def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
                return _tensor_batches(data, batch_size, epoch, cell, bool(train.get("augment", True)))
        else:
            world = cell.world
            loader_args = {"batch_size": batch_size // world.size, "drop_last": True,
                           **loader_options(config, cell.device)}
            steps = len(data["train"]) // batch_size

            def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
                sampler = torch.utils.data.DistributedSampler(  # one shared order, a shard per rank
                    data["train"], num_replicas=world.size, rank=world.rank, shuffle=True,
                    seed=epoch_seed(cell.data_seed, epoch), drop_last=True)
                loader = torch.utils.data.DataLoader(data["train"], sampler=sampler, **loader_args,
                                                     generator=epoch_generator(cell.data_seed + world.rank, epoch))
                return ((x.to(cell.device, non_blocking=True), y.to(cell.device, non_blocking=True)) for x, y in loader)

        history = train_loop(model, batches=batches, steps_per_epoch=steps, loss=loss, settings=settings, cell=cell,
                             evaluate=lambda m: _clean_metrics(m, data, config, cell.device))
        return model, history

    def preconditioned_inexact(self, config: dict[str, Any]) -> str | None:
        if _recipe(config) == "timm":
            return f"train.recipe 'timm' trains with timm's optimizer '{config['train']['optimizer']}'"
        return preconditioned_inexact(TrainSettings.from_config(config["train"]))

    def evaluate(self, model: nn.Module, data: Any, config: dict[str, Any], cell: Cell) -> dict[str, float]:
        if _recipe(config) == "timm":
            return timm_recipe.summarize(self._fitted.pop(cell.dir), model, data, config, cell)
        cell.provenance.eval_precision = "fp32"  # no autocast in evaluation or the attack
        metrics = _clean_metrics(model, data, config, cell.device, per_class=True)
        metrics["fgsm_top1"] = _fgsm_top1(model, data, config, cell.device)
        if isinstance(data, TensorData):
            metrics["data_fingerprint"] = fingerprint(data)
        return metrics


    def evaluate_images(self, model: nn.Module, data: Any, config: dict[str, Any], cell: Cell,
                        transform: Any = None, limit: int | None = None) -> dict[str, float]:
        """Top-1, top-5 and loss over the validation split (image folders: resized and centre-cropped to
        ``data.image_size`` before ``transform``), in fp32."""
        return robustness.evaluate_images(model, data, config, cell, transform, limit)

    def published_corruptions(self, root: Path, data: Any, config: dict[str, Any], *, names: list[str],
                              severities: list[int]) -> Iterator[tuple[str, int, Any]]:
        """CIFAR-10-C (CIFAR-format runs) or ImageNet-C (image-folder runs), read in place in their
        RobustBench layout (see :mod:`lcdense_tasks.classification.robustness`)."""
        return robustness.published_corruptions(root, data, names=names, severities=severities)


def _recipe(config: dict[str, Any]) -> str:
    recipe = config["train"]["recipe"]
    if recipe not in RECIPES:
        raise unknown_name("train.recipe", recipe, RECIPES)
    if recipe == "timm":
        require_extra("timm", "timm", what="train.recipe 'timm'")
    return recipe


def _data_shape(data: Any) -> tuple[int, int, tuple[float, ...], tuple[float, ...]]:
    if isinstance(data, TensorData):
        return len(data.classes) or int(data.train_y.max()) + 1, data.channels, data.mean, data.std
    return len(data["train"].classes), 3, *IMAGENET_STATS


def _image_folders(root: Path, size: int) -> dict[str, Any]:
    from torchvision import datasets, transforms

    check_image_folders(root)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor()])
    val_tf = transforms.Compose([transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size),
                                 transforms.ToTensor()])
    return {"train": datasets.ImageFolder(root / "train", train_tf), "val": datasets.ImageFolder(root / "val", val_tf)}


def loader_options(config: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The image-folder DataLoaders' workers and memory pinning: batches bound for a GPU are
    collated into pinned (page-locked) memory, so their copies to the device run asynchronously.

    >>> cfg = {"data": {"workers": 4}}
    >>> loader_options(cfg, torch.device("cuda")), loader_options(cfg, torch.device("cpu"))
    ({'num_workers': 4, 'pin_memory': True}, {'num_workers': 4, 'pin_memory': False})
    """
    return {"num_workers": int(config["data"]["workers"]), "pin_memory": device.type == "cuda"}


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """CIFAR augmentation on a uint8 batch: 4-pixel zero padding, random 32-px crop, horizontal flip."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=gen)
    dx = torch.randint(0, 9, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None])
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    index = torch.arange(n)[:, None, None, None]
    channel = torch.arange(x.shape[1])[None, :, None, None]
    return padded[index, channel, rows, cols]


def _tensor_batches(data: TensorData, batch_size: int, epoch: int, cell: Cell,
                    augment: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of each global batch. Order and augmentation come from the data seed alone,
    so any number of ranks trains on the same augmented global batches as one process (except that
    data-parallel training drops the last partial batch, whose shards would be unequal)."""
    gen = epoch_generator(cell.data_seed, epoch)
    order = torch.randperm(len(data.train_y), generator=gen)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        if cell.world.active and len(idx) < batch_size:
            break
        x = data.train_x[idx]
        if augment:
            x = _augment(x, gen)
        mine = cell.world.shard(torch.arange(len(idx)))
        yield x[mine].to(cell.device).float().div_(255), data.train_y[idx[mine]].to(cell.device)


def _val_batches(data: Any, config: dict[str, Any], device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    size = int(config["eval"]["batch_size"])
    if isinstance(data, TensorData):
        for start in range(0, len(data.val_y), size):
            yield (data.val_x[start:start + size].to(device).float().div_(255), data.val_y[start:start + size].to(device))
    else:
        loader = torch.utils.data.DataLoader(data["val"], batch_size=size, **loader_options(config, device))
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@torch.no_grad()
def _clean_metrics(model: nn.Module, data: Any, config: dict[str, Any], device: torch.device,
                   per_class: bool = False) -> dict[str, Any]:
    """Top-1, top-5 and loss over the validation set; with ``per_class``, ``per_class`` top-1 too."""
    model.eval()
    classes = _data_shape(data)[0]
    sums, hits = torch.zeros(4, dtype=torch.float64), torch.zeros(2, classes, dtype=torch.float64)
    for x, y in _val_batches(data, config, device):
        logits = model(x)
        sums += batch_sums(logits, y)
        hits += class_hits(logits, y, classes)
    metrics: dict[str, Any] = metrics_from_sums(sums, classes)
    if per_class:
        names = data.classes if isinstance(data, TensorData) else data["val"].classes
        metrics["per_class"] = per_class_top1(hits, names if len(names) == classes else [str(c) for c in range(classes)])
    return metrics


def _fgsm_top1(model: nn.Module, data: Any, config: dict[str, Any], device: torch.device) -> float:
    model.eval()
    eps = float(config["eval"]["fgsm_eps"])
    correct = total = 0
    for x, y in _val_batches(data, config, device):
        adv = fgsm(model, x, y, eps)
        with torch.no_grad():
            correct += int((model(adv).argmax(1) == y).sum())
        total += len(y)
    return correct / total
