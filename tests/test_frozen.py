"""Frozen filters really stay frozen: optimizers with momentum and weight decay, an EMA copy,
checkpoint round trips; BN layers keep training (documented behaviour)."""
from __future__ import annotations

import copy
import io
from importlib.util import find_spec

import pytest
import torch
import torchvision
from torch import nn

from lcdense import convert, frozen_digest, frozen_tensors


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3, ema: nn.Module | None = None) -> None:
    model.train()
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(4, 3, 32, 32, generator=gen)
        loss = model(x).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model)


@pytest.mark.parametrize("mode,spatial", [("frozen", None), ("lc", "frozen")])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_training_leaves_frozen_tensors_bitwise_unchanged(mode, spatial, optimizer):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    kwargs = {"E": 2, "spatial": spatial} if mode == "lc" else {}
    convert(model, mode, **kwargs)
    before = frozen_digest(model)
    bn_before = model.bn1.running_mean.clone()
    fc_before = model.fc.weight.detach().clone()
    params = [p for p in model.parameters() if p.requires_grad]
    # even an optimizer handed *every* parameter cannot reach the frozen filters: they are buffers
    assert all(p.requires_grad for p in model.parameters())
    opt = (torch.optim.SGD(params, lr=0.5, momentum=0.9, nesterov=True, weight_decay=0.1)
           if optimizer == "sgd" else torch.optim.AdamW(params, lr=0.1, weight_decay=0.1))
    ema = None
    if find_spec("timm") is not None:  # with the timm extra, its EMA trains alongside (core install: no EMA)
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=0.9)
    _train(model, opt, ema=ema)
    assert frozen_digest(model) == before
    if ema is not None:
        assert frozen_digest(ema.module) == before  # timm's EMA copies buffers, so the copy stays frozen too
    assert not torch.equal(model.fc.weight, fc_before)  # the rest did train
    assert not torch.equal(model.bn1.running_mean, bn_before)  # BN statistics keep updating


def test_requires_grad_true_on_everything_cannot_unfreeze():
    """ultralytics sets requires_grad=True on every parameter; frozen filters are not parameters."""
    model = torchvision.models.resnet18(num_classes=10)
    convert(model, "lc", E=2, spatial="frozen")
    for p in model.parameters():
        p.requires_grad_(True)
    names = {n for n, _ in model.named_parameters()}
    assert not names & set(frozen_tensors(model))


def test_checkpoint_round_trip_keeps_digest():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    convert(model, "lc", E=2, spatial="frozen", seed=5)
    digest = frozen_digest(model)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    fresh = torchvision.models.resnet18(num_classes=10)
    convert(fresh, "lc", E=2, spatial="frozen", seed=5)
    with torch.no_grad():
        for t in frozen_tensors(fresh).values():
            t.add_(1.0)  # spoil them, so the load must restore them
    assert frozen_digest(fresh) != digest
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert frozen_digest(fresh) == digest
    assert frozen_digest(copy.deepcopy(fresh)) == digest


def test_digest_detects_a_single_bit():
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    convert(model, "frozen")
    digest = frozen_digest(model)
    w = model[0].weight
    w.view(-1).view(torch.int32)[0] ^= 1
    assert frozen_digest(model) != digest
