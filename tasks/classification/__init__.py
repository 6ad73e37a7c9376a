"""Image classification: the paper's own setting (CIFAR ResNet-D-W, or any torchvision/timm model).

Metrics: ``top1`` (primary), ``top5`` (with ≥ 5 classes), ``val_loss`` and ``fgsm_top1`` — top-1
under an ℓ∞ FGSM attack with ε = 1/255 in [0, 1] pixel space (normalization is inside the model),
i.e. 1 − the attack's success rate over the validation set.

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

from lcdense import Cell, LcdenseError, Task
from lcdense.estimate import Footprint
from lcdense.models import cifar_resnet, create_model
from lcdense.training import TrainSettings, epoch_generator, epoch_seed, train_loop

from .data import DATASETS, TensorData, ensure_embedded, fingerprint, load_tensor_dataset
from .models import Normalized

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class ClassificationTask(Task):
    name = "classification"
    primary_metric = "top1"
    higher_is_better = True
    sweep_axes = {"width": "model.width", "depth": "model.depth", "kernel_size": "model.kernel_size"}
    data_parallel = "torchrun"

    def default_config(self) -> dict[str, Any]:
        """The embedded-default setting: a ResNet-8-16 on the generated CIFAR-format shapes.

        The paper's recipe lives in configs/classification/cifar10_resnet_lc_20_16.yaml.
        """
        return {
            "data": {"dataset": "embedded", "root": None, "workers": 0,
                     "image_size": 224, "train_limit": None},
            "model": {"name": "resnet_lc", "depth": 8, "width": 16, "kernel_size": 3},
            "train": {"epochs": 4, "batch_size": 128, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9,
                      "nesterov": True, "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 0.0,
                      "label_smoothing": 0.1, "augment": True, "amp": True, "sync_bn": False, "eval_every": 1},
            "eval": {"batch_size": 500, "fgsm_eps": 1 / 255},
        }

    # ---- data ------------------------------------------------------------------------------
    def prepare_data(self, config: dict[str, Any], cache_dir: Path) -> TensorData | dict[str, Any]:
        cfg = config["data"]
        dataset = cfg["dataset"]
        if dataset not in DATASETS:
            from lcdense.errors import unknown_name

            raise unknown_name("classification dataset", dataset, DATASETS)
        if dataset == "embedded":
            if cfg["root"]:
                raise LcdenseError("data.dataset 'embedded' is generated; pass --dataset cifar10 (etc.) with --data")
            data = load_tensor_dataset("cifar10", ensure_embedded(cache_dir))
        elif not cfg["root"]:
            raise LcdenseError(f"dataset '{dataset}' needs its files: pass --data PATH (nothing is downloaded; "
                               f"fetch it once with: python scripts/fetch_dataset.py {dataset} PATH)")
        elif dataset == "imagefolder":
            return _image_folders(Path(cfg["root"]), int(cfg["image_size"]))
        else:
            data = load_tensor_dataset(dataset, Path(cfg["root"]))
        if cfg.get("train_limit"):
            n = int(cfg["train_limit"])
            data.train_x, data.train_y = data.train_x[:n], data.train_y[:n]
        return data

    def build_model(self, config: dict[str, Any], data: Any) -> nn.Module:
        m = config["model"]
        classes, channels, mean, std = _data_shape(data)
        if m["name"] == "resnet_lc":
            net = cifar_resnet(int(m["depth"]), int(m["width"]), int(m["kernel_size"]), classes, channels)
        else:
            net = create_model(m["name"], num_classes=classes)
        return Normalized(net, mean, std)

    def input_size(self, config: dict[str, Any]) -> tuple[int, ...]:
        if config["data"]["dataset"] == "imagefolder":
            size = int(config["data"]["image_size"])
            return (3, size, size)
        return (1 if config["data"]["dataset"] == "fashion-mnist" else 3, 32, 32)

    def footprint(self, config: dict[str, Any]) -> Footprint:
        """train_loop's step, plus the evaluation: clean at eval.batch_size, then FGSM (a backward to the input)."""
        fp = super().footprint(config)
        fp.eval_batch_size, fp.eval_input_grad = int(config["eval"]["batch_size"]), True
        return fp

    # ---- training ----------------------------------------------------------------------------
    def fit(self, model: nn.Module, data: Any, config: dict[str, Any], cell: Cell) -> tuple[nn.Module, list[dict[str, float]]]:
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
            loader_args = {"batch_size": batch_size // world.size, "num_workers": int(config["data"]["workers"]),
                           "drop_last": True}
            steps = len(data["train"]) // batch_size

            def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
                sampler = torch.utils.data.DistributedSampler(  # one shared order, a shard per rank
                    data["train"], num_replicas=world.size, rank=world.rank, shuffle=True,
                    seed=epoch_seed(cell.data_seed, epoch), drop_last=True)
                loader = torch.utils.data.DataLoader(data["train"], sampler=sampler, **loader_args,
                                                     generator=epoch_generator(cell.data_seed + world.rank, epoch))
                return ((x.to(cell.device), y.to(cell.device)) for x, y in loader)

        history = train_loop(model, batches=batches, steps_per_epoch=steps, loss=loss, settings=settings, cell=cell,
                             evaluate=lambda m: _clean_metrics(m, data, config, cell.device))
        return model, history

    def evaluate(self, model: nn.Module, data: Any, config: dict[str, Any], cell: Cell) -> dict[str, float]:
        metrics = _clean_metrics(model, data, config, cell.device)
        metrics["fgsm_top1"] = _fgsm_top1(model, data, config, cell.device)
        if isinstance(data, TensorData):
            metrics["data_fingerprint"] = fingerprint(data)
        return metrics


def _data_shape(data: Any) -> tuple[int, int, tuple[float, ...], tuple[float, ...]]:
    if isinstance(data, TensorData):
        return len(data.classes) or int(data.train_y.max()) + 1, data.channels, data.mean, data.std
    return len(data["train"].classes), 3, *IMAGENET_STATS


def _image_folders(root: Path, size: int) -> dict[str, Any]:
    from torchvision import datasets, transforms

    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise LcdenseError(f"ImageFolder data needs {root / split}/<class>/<images>; it is missing")
    train_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor()])
    val_tf = transforms.Compose([transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size),
                                 transforms.ToTensor()])
    return {"train": datasets.ImageFolder(root / "train", train_tf), "val": datasets.ImageFolder(root / "val", val_tf)}


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
        loader = torch.utils.data.DataLoader(data["val"], batch_size=size, num_workers=int(config["data"]["workers"]))
        for x, y in loader:
            yield x.to(device), y.to(device)


@torch.no_grad()
def _clean_metrics(model: nn.Module, data: Any, config: dict[str, Any], device: torch.device) -> dict[str, float]:
    model.eval()
    total = correct1 = correct5 = 0
    loss = 0.0
    for x, y in _val_batches(data, config, device):
        logits = model(x).float()
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(dim=1).sum())
        total += len(y)
    metrics = {"top1": correct1 / total, "val_loss": loss / total}
    if logits.shape[1] >= 5:
        metrics["top5"] = correct5 / total
    return metrics


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One ℓ∞ FGSM step of size ``eps`` in [0, 1] pixel space (model in eval mode)."""
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x).float(), y)
    (grad,) = torch.autograd.grad(loss, x)
    return (x + eps * grad.sign()).clamp_(0, 1).detach()


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
