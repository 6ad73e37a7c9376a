"""A complete third-party task adapter (the "Add a task" example of docs/plugins.md): is the bright square
in the left or the right half of a noisy 16x16 image?"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lcdense import Task, TrainSettings, epoch_generator, train_loop


class ToyTask(Task):
    name = "toy"
    primary_metric = "accuracy"
    sweep_axes = {"width": "model.width", "norm_groups": "model.norm_groups"}  # lcdense sweep --axis norm_groups=1,4
    data_parallel = "torchrun"  # fit trains on this rank's share of each batch, so `--ddp N` works

    def default_config(self):
        return {"data": {"samples": 512}, "model": {"width": 8, "norm_groups": 2},
                "train": {"epochs": 3, "batch_size": 32, "lr": 0.02, "optimizer": "sgd"}}

    def prepare_data(self, config, cache_dir):
        gen = torch.Generator().manual_seed(0)
        n = config["data"]["samples"]
        x = torch.randn(n, 1, 16, 16, generator=gen) * 0.3
        y = torch.randint(0, 2, (n,), generator=gen)
        for i in range(n):
            col = int(torch.randint(0, 5, (1,), generator=gen)) + 8 * int(y[i])
            x[i, 0, 6:10, col:col + 3] += 1.0
        return {"train": (x[: n * 3 // 4], y[: n * 3 // 4]), "val": (x[n * 3 // 4:], y[n * 3 // 4:])}

    def build_model(self, config, data):
        w, g = config["model"]["width"], config["model"]["norm_groups"]
        return nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.GroupNorm(g, w), nn.ReLU(),
                             nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(g, w), nn.ReLU(), nn.AdaptiveAvgPool2d((1, 2)),
                             nn.Flatten(), nn.Linear(2 * w, 2))

    def input_size(self, config):
        return (1, 16, 16)

    def fit(self, model, data, config, cell):
        x, y = data["train"]
        size = config["train"]["batch_size"]

        def batches(epoch):
            order = torch.randperm(len(y), generator=epoch_generator(cell.data_seed, epoch))
            for i in range(0, len(y), size):
                mine = cell.world.shard(order[i:i + size])  # this rank's share of the global batch
                yield x[mine], y[mine]

        history = train_loop(model, batches=batches, steps_per_epoch=-(-len(y) // size),
                             loss=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
                             settings=TrainSettings.from_config(config["train"]), cell=cell)
        return model, history

    def evaluate(self, model, data, config, cell):
        x, y = data["val"]
        model.eval()
        cell.provenance.eval_precision = "fp32"  # what the record says it was evaluated in (no autocast here)
        with torch.no_grad():
            return {"accuracy": float((model(x).argmax(1) == y).float().mean())}
