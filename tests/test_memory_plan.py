"""The memory plan on a GPU (issue 21, item 6): planned against the device's free memory, not its
total, and the timm recipe plans what it trains: LAMB's two moments, channels_last and the EMA's copy
of the model, frozen banks included (before, lc-learnable@128 ResNet-18d had over 5.9 GiB unplanned)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lcdense import LcdenseError, Task, convert
from lcdense.cost.estimate import check_cell, estimate
from lcdense.cost.memory import available_memory
from lcdense.engine.config import load_yaml, resolve
from lcdense.engine.task import get_task

A2 = "configs/classification/imagenet_resnet18d_rsb_a2.yaml"
GiB = 2**30


def _config(ema: bool) -> dict:
    task = get_task("classification")
    cfg = resolve(task.default_config(), load_yaml(A2), {}, where=A2)
    cfg["data"]["image_size"], cfg["train"]["batch_size"], cfg["eval"]["batch_size"] = 32, 8, 8
    cfg["train"]["timm"]["ema"] = ema
    return cfg


@pytest.fixture(scope="module")
def plans():
    """The tiny A2 cell (ResNet-18d, 32 px, batch 8, lc-frozen@2) planned as the timm recipe trains it, and as
    the shared loop's footprint alone planned it before."""
    task = get_task("classification")
    cfg = _config(ema=True)
    torch.manual_seed(0)
    model = task.build_model(cfg, {"train": SimpleNamespace(classes=[str(i) for i in range(10)])})
    lc = lambda m: convert(m, "lc", E=2, spatial="frozen", seed=0)  # noqa: E731
    timm_fp = task.footprint(cfg)
    loop_fp = Task.footprint(task, cfg)  # what was planned before: SGD, no channels_last, no EMA copy
    loop_fp.eval_batch_size, loop_fp.eval_input_grad = timm_fp.eval_batch_size, True
    real = lc(model).model
    trainable = sum(p.numel() * p.element_size() for p in real.parameters() if p.requires_grad)
    banks = sum(b.numel() * b.element_size() for n, b in real.named_buffers() if "spatial" in n or "weight" in n)
    return {"timm": estimate(model, timm_fp, convert=lc, name="timm"), "loop": estimate(model, loop_fp, convert=lc, name="loop"),
            "fp": timm_fp, "trainable": trainable, "banks": banks}


def test_the_timm_recipe_plans_lamb_ema_and_channels_last(plans):
    timm, loop, fp = plans["timm"], plans["loop"], plans["fp"]
    assert fp.optimizer == "lamb" and fp.channels_last is True and fp.model_copies == 1
    assert timm.optimizer == "lamb" and timm.trainable_params == loop.trainable_params
    assert timm.optimizer_bytes == 2 * plans["trainable"]  # exp_avg and exp_avg_sq of every trainable parameter
    assert loop.optimizer_bytes == plans["trainable"]  # SGD's momentum only: half of it went unplanned
    assert plans["banks"] > 0 and timm.buffers_bytes >= plans["banks"]
    assert timm.copies_bytes == timm.params_bytes + timm.buffers_bytes  # the EMA, frozen banks included
    assert loop.copies_bytes == 0
    unplanned = timm.train_peak_bytes - loop.train_peak_bytes
    assert unplanned >= timm.copies_bytes + plans["trainable"], unplanned


def test_no_ema_plans_no_copy():
    task = get_task("classification")
    fp = task.footprint(_config(ema=False))
    assert fp.model_copies == 0 and fp.optimizer == "lamb"


@pytest.fixture
def gpu(monkeypatch):
    """A GPU with 80 GiB of which 3 GiB are free, and 1.5 GiB held by this process's cache, 0.5 GiB of it in use."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: int(1.5 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: GiB // 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(total_memory=80 * GiB, name="NVIDIA H100 80GB HBM3"))


def test_the_plan_uses_the_gpus_free_memory_not_its_total(gpu):
    free, source = available_memory(torch.device("cuda:0"))
    assert free == 4 * GiB  # 3 GiB free on the device + 1 GiB cached by this process and unused
    assert source == "free memory of NVIDIA H100 80GB HBM3 (4.00 GiB of 80.00 GiB)"


def test_a_cell_that_fits_the_total_but_not_the_free_memory_is_refused(gpu):
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 64 * 64, 10))
    task = get_task("classification")
    cfg = {"run": {"max_memory": None}}
    fp = Task.footprint(task, {"train": {"batch_size": 8192, "optimizer": "sgd", "amp": True}, "data": {"dataset": "imagefolder", "image_size": 64}})
    planned = estimate(model, fp, convert=lambda m: convert(m, "frozen", seed=0), device="cuda:0", memory=80 * GiB)
    assert 4 * GiB < planned.peak_bytes < 80 * GiB  # it would fit the GPU's total memory
    with pytest.raises(LcdenseError) as err:
        check_cell(model, fp, cfg, lambda m: convert(m, "frozen", seed=0), torch.device("cuda:0"), name="frozen__seed0",
                   expansion=None, spatial=None)
    message = str(err.value)
    assert "\n" not in message and "but 4.00 GiB is available (free memory of NVIDIA H100 80GB HBM3" in message
