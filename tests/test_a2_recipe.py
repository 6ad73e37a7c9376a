"""The RSB A2 recipe as timm's train.py ran it in 2021-22 (issue 22): the config's values and their
cited sources, the LR scaling for other global batches, the cooldown, fp16 AMP with a gradient
scaler, and the baseline's native init. All cheap: no training run."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from lcdense import LcdenseError, convert, frozen_digest
from lcdense.engine.provenance import autocast_precision
from lcdense.engine.training import LoopRecipe, TrainSettings, autocast, grad_scaler

A2 = Path(__file__).parents[1] / "configs" / "classification" / "imagenet_resnet18d_rsb_a2.yaml"
needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="needs the timm extra")


def _a2() -> dict:
    """The A2 config as a run resolves it (the task's defaults under the file)."""
    from lcdense_tasks.classification import ClassificationTask

    from lcdense.engine.config import load_yaml, resolve

    return resolve(ClassificationTask().default_config(), load_yaml(A2), {})


def test_a2_config_is_the_2021_22_recipe_and_cites_its_sources():
    text = A2.read_text()
    config = yaml.safe_load(text)
    train, opts = config["train"], config["train"]["timm"]
    assert (opts["bce_target_thresh"], opts["warmup_lr"], opts["min_lr"], opts["cooldown_epochs"]) == (0.2, 1e-4, 1e-6, 10)
    assert (train["lr"], train["batch_size"], opts["lr_base_size"], opts["lr_base_scale"]) == (5e-3, 2048, 2048, "sqrt")
    assert train["amp"] == "fp16" and config["run"]["baseline_init"] == "native"
    commits = set(re.findall(r"\b[0-9a-f]{40}\b", text))
    assert {"e0c4eec4b66dc14ae96097c7b4a7ef2af45ba309", "ce4d3485b690837ba4e1cb4e0e6c4ed415e36cea",
            "b1b024dfed5870cb1238c8c7c326d6ea8ef67300"} <= commits
    for key in ("warmup_lr", "min_lr", "cooldown_epochs", "bce_target_thresh", "lr_base_scale"):
        line = next(l for l in text.splitlines() if l.strip().startswith(f"{key}:"))
        assert "#" in line, key  # every value says where it comes from


@needs_timm
@pytest.mark.parametrize("batch,expected", [(2048, 5e-3), (1024, 5e-3 * 0.5 ** 0.5), (256, 5e-3 / 8 ** 0.5)])
def test_lr_scales_with_the_square_root_of_the_global_batch(batch, expected):
    from lcdense_tasks.classification.timm_recipe import optimizer_and_schedule, scaled_lr

    train = _a2()["train"] | {"batch_size": batch}
    assert scaled_lr(train) == {"lr": pytest.approx(expected), "configured": 5e-3, "base_batch": 2048,
                                "global_batch": batch, "scale": "sqrt"}
    optimizer, _, _ = optimizer_and_schedule(nn.Conv2d(3, 4, 3), train, steps=10)
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(expected)
    linear = train | {"timm": train["timm"] | {"lr_base_scale": "linear"}}
    assert scaled_lr(linear)["lr"] == pytest.approx(5e-3 * batch / 2048)
    unscaled = train | {"timm": train["timm"] | {"lr_base_size": None}}
    assert scaled_lr(unscaled) == {"lr": 5e-3, "configured": 5e-3, "base_batch": None, "global_batch": batch,
                                   "scale": None}
    with pytest.raises(LcdenseError, match="unknown train.timm.lr_base_scale 'squared'"):
        scaled_lr(train | {"timm": train["timm"] | {"lr_base_scale": "squared"}})


@needs_timm
def test_cooldown_adds_ten_epochs_at_min_lr_and_warmup_starts_at_1e_4():
    from lcdense_tasks.classification.timm_recipe import optimizer_and_schedule

    train = _a2()["train"]
    optimizer, scheduler, epochs = optimizer_and_schedule(nn.Conv2d(3, 4, 3), train, steps=10)
    assert epochs == 310  # timm@2022: create_scheduler returns epochs + cooldown_epochs
    lr = {}
    for epoch in (0, 5, 299, 300, 309):
        scheduler.step(epoch)
        lr[epoch] = optimizer.param_groups[0]["lr"]
    assert lr[0] == pytest.approx(1e-4) and lr[5] == pytest.approx(5e-3, rel=1e-3)
    assert lr[300] == lr[309] == pytest.approx(1e-6) and lr[299] > 1e-6


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled, but CUDA is not available")
def test_fp16_amp_is_offered_and_named():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert [autocast_precision(a, cuda) for a in (True, "bf16", "fp16", False)] == ["bf16", "bf16", "fp16", "fp32"]
    assert autocast_precision("fp16", cpu) == "fp32" and grad_scaler("fp16", cpu) is None  # CPU: fp32, no scaler
    assert grad_scaler("bf16", cuda) is None and isinstance(grad_scaler("fp16", cuda), torch.amp.GradScaler)
    assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(LcdenseError, match="train.amp must be one of true, false, bf16, fp16; got 'fp8'"):
        TrainSettings.from_config({"epochs": 1, "lr": 0.1, "amp": "fp8"})
    with autocast(cpu, "fp16"):
        assert not torch.is_autocast_enabled("cpu")


def test_the_gradient_scaler_steps_skips_and_resumes_exactly():
    """fp16's scaler path of the shared loop's recipe, on a CPU scaler: a finite step goes through
    (unscaled: the same update as without scaling), an inf gradient is skipped, and the scaler's
    state is checkpointed and restored."""
    def recipe(scaler: bool) -> LoopRecipe:
        torch.manual_seed(0)
        r = LoopRecipe(TrainSettings(epochs=1, lr=0.1, optimizer="sgd", grad_clip=1.0), steps_per_epoch=4)
        r.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if scaler else None
        r.setup(nn.Linear(3, 1))
        return r

    plain, scaled = recipe(False), recipe(True)
    x = torch.ones(2, 3)
    for r in (plain, scaled):
        loss = r.model(x).sum()
        (loss if r.scaler is None else r.scaler.scale(loss)).backward()
        r.update(1)
    assert torch.allclose(plain.model.weight, scaled.model.weight, atol=1e-6)
    before = scaled.model.weight.detach().clone()
    scaled.optimizer.zero_grad()
    scaled.model.weight.grad = torch.full_like(before, float("inf"))
    scaled.model.bias.grad = torch.zeros_like(scaled.model.bias)
    scaled.update(2)
    assert torch.equal(scaled.model.weight, before) and scaled.scaler.get_scale() == 2.0**9  # skipped, scale halved
    state = scaled.state()
    resumed = recipe(True)
    resumed.restore(state)
    assert resumed.scaler.get_scale() == 2.0**9 and "scaler" not in plain.state()


def test_native_init_keeps_the_architectures_own_filters():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    nn.init.normal_(model[0].weight, std=0.5)  # an init of the architecture's own, not any of lcdense's
    own = [m.weight.detach().clone() for m in (model[0], model[2])]
    import copy

    learnable = convert(copy.deepcopy(model), "learnable", init="native").model
    frozen = convert(copy.deepcopy(model), "frozen", init="native").model
    assert all(torch.equal(m.weight, w) for m, w in zip((learnable[0], learnable[2]), own))
    assert isinstance(learnable[0].weight, nn.Parameter) and learnable[0].weight.requires_grad
    assert all(torch.equal(m.weight, w) for m, w in zip((frozen[0], frozen[2]), own))
    assert "weight" in dict(frozen[0].named_buffers()) and frozen_digest(frozen)
    drawn = convert(copy.deepcopy(model), "learnable", init="kaiming_uniform").model
    assert not torch.equal(drawn[0].weight, own[0])
    with pytest.raises(LcdenseError, match="init 'native' keeps a conv's own filters; mode 'lc' draws new banks"):
        convert(copy.deepcopy(model), "lc", E=2, init="native")
