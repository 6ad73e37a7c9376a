"""Zoo: every torchvision classification model and a representative set of timm CNN families
converts to LC-Blocks, runs, folds back to the same function, and its report adds up.

The default suite converts the cheapest member of each family; ``-m slow`` converts all of them."""
from __future__ import annotations

import math
import re

import pytest
import torch
import torchvision

from lcdense import LCConv, convert, fold

INPUT_SIZE = {"inception_v3": 96}


def _input_size(name: str) -> int:
    """ViT and MaxViT only take 224 px; everything else runs at 64 px (Inception needs 75+)."""
    return 224 if name.startswith(("vit_", "maxvit")) else INPUT_SIZE.get(name, 64)


TORCHVISION = torchvision.models.list_models(module=torchvision.models)  # all of them

#: torchvision's classification models by family: the members of a family share their building
#: blocks and differ in width, depth or resolution, so converting one of them tests the family's
#: code path. A model that matches none (a family new to torchvision) is a family of its own.
TORCHVISION_FAMILIES = {
    "alexnet": r"alexnet",
    "convnext": r"convnext_\w+",
    "densenet": r"densenet\d+",
    "efficientnet": r"efficientnet_b\d",
    "efficientnet_v2": r"efficientnet_v2_\w",
    "googlenet": r"googlenet",
    "inception": r"inception_v\d",
    "maxvit": r"maxvit_\w+",
    "mnasnet": r"mnasnet\d_\d+",
    "mobilenet_v2": r"mobilenet_v2",
    "mobilenet_v3": r"mobilenet_v3_\w+",
    "regnet_x": r"regnet_x_\w+",
    "regnet_y": r"regnet_y_\w+",
    "resnet": r"resnet\d+",
    "resnext": r"resnext\d+_\w+",
    "shufflenet_v2": r"shufflenet_v2_\w+",
    "squeezenet": r"squeezenet\d_\d",
    "swin": r"swin_[tsb]",
    "swin_v2": r"swin_v2_[tsb]",
    "vgg": r"vgg\d+",
    "vgg_bn": r"vgg\d+_bn",
    "vit": r"vit_[bhl]_\d+",
    "wide_resnet": r"wide_resnet\d+_\d",
}


def torchvision_family(name: str) -> str:
    matches = [family for family, pattern in TORCHVISION_FAMILIES.items() if re.fullmatch(pattern, name)]
    assert len(matches) <= 1, f"{name} is in several families: {matches}"
    return matches[0] if matches else name


def _cost(name: str) -> tuple[float, float]:
    """(GFLOPs, parameters) of torchvision's published weights for ``name``: metadata, nothing is built."""
    try:
        meta = next(iter(torchvision.models.get_model_weights(name))).meta
    except (ValueError, StopIteration):  # a model without published weights: no known size
        return math.inf, math.inf
    return meta.get("_ops", math.inf), meta.get("num_params", math.inf)


def smallest_per_family(names: list[str], family) -> set[str]:
    """The cheapest member of each family (by ``_cost``; ties by name)."""
    best: dict[str, str] = {}
    for name in sorted(names):
        key = family(name)
        if key not in best or _cost(name) < _cost(best[key]):
            best[key] = name
    return set(best.values())


#: The default suite converts the cheapest member of each family (resnet18, vit_b_32, ...); the other
#: members (vit_h_14, regnet_y_128gf, ...) run under ``-m slow``.
TORCHVISION_DEFAULT = smallest_per_family(TORCHVISION, torchvision_family)

#: timm models by the timm module that builds them (``timm.list_models(module=...)``): one code path each.
TIMM_FAMILIES = {
    "resnet": ["resnet18", "resnet18d"],
    "byobnet": ["repvgg_a0", "resnext26ts"],
    "efficientnet": ["mobilenetv2_050", "efficientnet_b0", "tf_efficientnet_b0", "mixnet_s"],
    "mobilenetv3": ["mobilenetv3_small_050"],
    "regnet": ["regnetx_002"],
    "convnext": ["convnext_atto"],
    "densenet": ["densenet121"],
    "resnetv2": ["resnetv2_18"],
    "dla": ["dla34"],
    "ghostnet": ["ghostnet_100"],
    "cspnet": ["cspresnet50"],
    "hrnet": ["hrnet_w18_small"],
    "vgg": ["vgg11_bn"],  # slow only: its 7×7 pre-logits conv (512→4096) becomes a 205 M bank at E = 2
}
TIMM = [name for members in TIMM_FAMILIES.values() for name in members]
#: the smallest member of each family (the first listed), vgg aside
TIMM_DEFAULT = {members[0] for family, members in TIMM_FAMILIES.items() if family != "vgg"}


def _check(model: torch.nn.Module, size: int) -> None:
    torch.manual_seed(0)
    model.eval()
    before = sum(p.numel() for p in model.parameters())
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
    # the report counts the model's own tensors: all trainable before, the banks frozen after
    assert report.params_before == {"trainable": before, "frozen": 0, "total": before}
    assert report.params_after["frozen"] == banks > 0
    assert report.params_after["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x)
        folded = fold(model, inplace=True)(x)
    assert not any(isinstance(m, LCConv) for m in model.modules())
    assert float((folded - y).abs().max()) <= 1e-3 * float(y.abs().max()) + 1e-5


def _by_default(names, default) -> list:
    """``names`` as parameters, those outside ``default`` marked slow."""
    return [name if name in default else pytest.param(name, marks=pytest.mark.slow) for name in names]


@pytest.mark.parametrize("name", _by_default(TORCHVISION, TORCHVISION_DEFAULT))
def test_torchvision_model(name):
    _check(torchvision.models.get_model(name, weights=None, num_classes=10), _input_size(name))


@pytest.mark.parametrize("name", _by_default(TIMM, TIMM_DEFAULT))
def test_timm_model(name):
    timm = pytest.importorskip("timm", reason='needs the timm extra: pip install "lcdense[timm]"')
    _check(timm.create_model(name, pretrained=False, num_classes=10), 64)


def test_every_torchvision_family_has_one_default_member_its_cheapest():
    """The default suite keeps each family, through its cheapest member."""
    families = {torchvision_family(name) for name in TORCHVISION}
    assert sorted(torchvision_family(name) for name in TORCHVISION_DEFAULT) == sorted(families)
    assert {"resnet18", "vit_b_32", "regnet_y_400mf", "squeezenet1_1", "efficientnet_b0"} <= TORCHVISION_DEFAULT
    assert not {"vit_h_14", "regnet_y_128gf", "vit_l_16", "wide_resnet101_2"} & TORCHVISION_DEFAULT
    assert torchvision_family("vgg11_bn") == "vgg_bn" and torchvision_family("swin_v2_t") == "swin_v2"
    assert torchvision_family("a_new_net") == "a_new_net"  # a family unknown here stays in the default suite


def test_timm_same_padding_convs_are_skipped_with_their_reason():
    timm = pytest.importorskip("timm", reason='needs the timm extra: pip install "lcdense[timm]"')

    model = timm.create_model("tf_efficientnet_b0", pretrained=False, num_classes=10)
    report = convert(model, "lc", E=2)
    skipped = [r for r in report.layers if r.action == "skipped"]
    assert skipped and all("overrides forward" in r.reason for r in skipped)
