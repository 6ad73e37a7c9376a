"""Zoo: every torchvision classification model and a representative set of timm CNN families
converts to LC-Blocks, runs, folds back to the same function, and its report adds up."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision

from lcdense import LCConv, convert, fold

INPUT_SIZE = {"inception_v3": 96}


def _input_size(name: str) -> int:
    """ViT and MaxViT only take 224 px; everything else runs at 64 px (Inception needs 75+)."""
    return 224 if name.startswith(("vit_", "maxvit")) else INPUT_SIZE.get(name, 64)


TORCHVISION = torchvision.models.list_models(module=torchvision.models)  # all of them
#: Models of hundreds of millions of parameters: converted only under ``-m slow`` (the default suite
#: keeps every family through its smaller members: vit_b_16, regnet_y_32gf, ...).
GIANTS = {"vit_h_14", "regnet_y_128gf", "vit_l_16", "vit_l_32"}  # 633 M, 645 M, 304 M, 306 M parameters
TIMM_GIANTS = {"vgg11_bn"}  # its 7×7 pre-logits conv (512→4096) becomes a 205 M bank at E = 2
GIANT_THRESHOLD = 250e6
TIMM = ["resnet18", "resnet18d", "resnext26ts", "mobilenetv2_050", "mobilenetv3_small_050", "efficientnet_b0",
        "regnetx_002", "convnext_atto", "densenet121", "vgg11_bn", "repvgg_a0", "tf_efficientnet_b0",
        "resnetv2_18", "dla34", "ghostnet_100", "mixnet_s", "cspresnet50", "hrnet_w18_small"]


def _check(model: torch.nn.Module, size: int, giant: bool = False) -> None:
    torch.manual_seed(0)
    model.eval()
    report = convert(model, "lc", E=2, spatial="frozen", seed=0, input_size=(3, size, size))
    model = report.model
    counts = report.counts()
    assert counts.get("lc", 0) > 0
    assert counts.get("lc", 0) + counts.get("skipped", 0) == len(report.layers)
    assert all(r.reason for r in report.layers if r.action == "skipped")
    assert sum(isinstance(m, LCConv) for m in model.modules()) == counts["lc"]
    # the counts agree with the blocks themselves: each LC layer's weight became a bank W and a combination P
    added = sum(m.spatial_weight.numel() + m.combine_weight.numel() for m in model.modules() if isinstance(m, LCConv))
    removed = sum(math.prod(r.shape) for r in report.layers if r.action == "lc")
    assert report.params_after["total"] - report.params_before["total"] == added - removed
    banks = sum(m.spatial_weight.numel() for m in model.modules() if isinstance(m, LCConv))
    assert report.params_after["frozen"] >= banks > 0
    # the slow marker is earned: a giant has hundreds of millions of parameters, before or after conversion
    if giant:
        assert max(report.params_before["total"], report.params_after["total"]) > GIANT_THRESHOLD
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x)
        folded = fold(model, inplace=True)(x)
    assert not any(isinstance(m, LCConv) for m in model.modules())
    assert float((folded - y).abs().max()) <= 1e-3 * float(y.abs().max()) + 1e-5


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in GIANTS else n for n in TORCHVISION])
def test_torchvision_model(name):
    _check(torchvision.models.get_model(name, weights=None, num_classes=10), _input_size(name), name in GIANTS)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in TIMM_GIANTS else n for n in TIMM])
def test_timm_model(name):
    import timm

    _check(timm.create_model(name, pretrained=False, num_classes=10), 64, name in TIMM_GIANTS)


def test_timm_same_padding_convs_are_skipped_with_their_reason():
    import timm

    model = timm.create_model("tf_efficientnet_b0", pretrained=False, num_classes=10)
    report = convert(model, "lc", E=2)
    skipped = [r for r in report.layers if r.action == "skipped"]
    assert skipped and all("overrides forward" in r.reason for r in skipped)
