"""convert(): what it changes, what it reports, seeding across variants, and bad input."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from lcdense import (
    INITS,
    LCConv,
    LcdenseError,
    convert,
    fold,
    frozen_tensors,
    seeded_filters,
)
from lcdense.core.inits import layer_seed


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


def test_frozen_mode_turns_spatial_weights_into_buffers():
    model = _tiny()
    report = convert(model, "frozen", input_size=(3, 16, 16))
    assert [r.action for r in report.layers] == ["frozen", "frozen"]
    assert "weight" not in dict(model[0].named_parameters())
    assert "0.weight" in dict(model.named_buffers())
    assert isinstance(model[3].weight, nn.Parameter)  # 1x1 stays learnable
    assert set(frozen_tensors(model)) == {"0.weight", "4.weight"}
    assert report.params_after["frozen"] == 8 * 3 * 9 + 8 * 25
    assert report.params_after["trainable"] == report.params_before["trainable"] - report.params_after["frozen"]
    assert report.macs_before == report.macs_after > 0


def test_lc_mode_replaces_convs_and_counts_add_up():
    model = _tiny()
    report = convert(model, "lc", E=4, spatial="frozen", input_size=(3, 16, 16))
    assert isinstance(model[0], LCConv) and isinstance(model[4], LCConv)
    assert model[0].spatial_weight.shape == (32, 3, 3, 3)
    assert model[4].spatial_weight.shape == (32, 1, 5, 5) and model[4].combine_weight.shape == (8, 4)
    frozen = 32 * 27 + 32 * 25
    assert report.params_after["frozen"] == frozen
    # trainable: the two spatial convs lose their weights and gain P (8x32 and 8x4)
    lost = 8 * 27 + 8 * 25
    assert report.params_after["trainable"] == report.params_before["trainable"] - lost + 8 * 32 + 8 * 4
    assert report.params_after["total"] == report.params_before["total"] - lost + 8 * 32 + 8 * 4 + frozen
    text = str(report)
    assert "impl=" in text and "trainable parameters" in text and "forward MACs" in text


def test_bias_lives_on_the_combination_only():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True))
    bias = model[0].bias.detach().clone()
    convert(model, "lc", E=2)
    block = model[0]
    assert torch.equal(block.bias, bias)
    assert sum(p.numel() for p in block.parameters()) == 4 * 8 + 4  # P and bias; spatial is a buffer


def test_identical_filters_across_variants_and_construction_order():
    base, frozen = _tiny(), _tiny()
    convert(base, "learnable", seed=7)
    convert(frozen, "frozen", seed=7)
    assert torch.equal(base[0].weight.detach(), frozen[0].weight)
    # a model built with a different module order still gets the same filters per layer name
    other = nn.Sequential()
    other.add_module("4", nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False))
    other.add_module("0", nn.Conv2d(3, 8, 3, padding=1))
    convert(other, "frozen", seed=7)
    assert torch.equal(other.get_submodule("0").weight, frozen[0].weight)
    lc_frozen, lc_learnable = _tiny(), _tiny()
    convert(lc_frozen, "lc", E=4, spatial="frozen", seed=7)
    convert(lc_learnable, "lc", E=4, spatial="learnable", seed=7)
    assert torch.equal(lc_frozen[0].spatial_weight, lc_learnable[0].spatial_weight.detach())
    assert torch.equal(lc_frozen[0].combine_weight, lc_learnable[0].combine_weight)
    assert isinstance(lc_learnable[0].spatial_weight, nn.Parameter)
    different = _tiny()
    convert(different, "frozen", seed=8)
    assert not torch.equal(different[0].weight, frozen[0].weight)


@pytest.mark.parametrize("kwargs", [{"mode": "learnable"}, {"mode": "frozen"}, {"mode": "lc", "E": 4},
                                    {"mode": "lc", "E": 2, "spatial": "learnable", "mid": "bn_relu"},
                                    {"mode": "lc", "E": 4, "impl": "preconditioned"}])
def test_conversion_never_touches_the_global_rng(kwargs):
    """Every variant leaves torch's global generator where it was (its filters come from their own
    seeded generators), so nothing drawn after the conversion differs between variants; folding
    draws nothing either."""
    model = _tiny()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    model = convert(model, **kwargs, seed=7).model
    assert torch.equal(torch.get_rng_state(), state)
    if kwargs.get("mid") is None:
        fold(model)
        assert torch.equal(torch.get_rng_state(), state)


def test_a_folded_conv_owns_its_tensors():
    """fold_block copies: training the folded conv leaves the block it came from as it was."""
    model = convert(_tiny(), "lc", E=4, impl="preconditioned", seed=7).model
    block = model[0]
    folded = fold(convert(_tiny(), "lc", E=4, seed=7).model)[0], block.fuse()
    for conv in folded:
        assert conv.weight.untyped_storage().data_ptr() != block.weight.untyped_storage().data_ptr()
        assert conv.bias.untyped_storage().data_ptr() != block.bias.untyped_storage().data_ptr()
        assert torch.equal(conv.weight, block.weight.detach())


def test_layer_seed_depends_only_on_its_key():
    assert layer_seed(0, "a", (1, 2), "binary") == layer_seed(0, "a", (1, 2), "binary")
    assert len({layer_seed(0, "a", (1, 2), "binary"), layer_seed(1, "a", (1, 2), "binary"),
                layer_seed(0, "b", (1, 2), "binary"), layer_seed(0, "a", (2, 2), "binary"),
                layer_seed(0, "a", (1, 2), "ternary")}) == 5


@pytest.mark.parametrize("init", INITS)
def test_inits_match_kaiming_std(init):
    shape = (256, 64, 3, 3)
    w = seeded_filters(init, shape, seed=0, name="x", dtype=torch.float64)
    fan_in = 64 * 9
    target = 1 / (3 * fan_in) ** 0.5
    if init.startswith("glorot"):
        target = 1 / (3 * (fan_in + 256 * 9) / 2) ** 0.5
    assert abs(float(w.std()) / target - 1) < 0.03
    values = w.unique()
    if init == "binary":
        assert len(values) == 2
    if init == "ternary":
        assert len(values) == 3 and 0 in values.tolist()


def test_orthogonal_rows_are_orthogonal():
    w = seeded_filters("orthogonal", (16, 4, 3, 3), seed=0, name="x", dtype=torch.float64).reshape(16, -1)
    gram = w @ w.T
    assert torch.allclose(gram, torch.diag(torch.diagonal(gram)), atol=1e-12)
    assert torch.allclose(torch.diagonal(gram), torch.diagonal(gram)[0].expand(16), rtol=1e-10)


def test_include_exclude_stem_head():
    model = torchvision.models.resnet18(num_classes=10)
    report = convert(model, "frozen", exclude=["layer4.*"], stem=False)
    actions = {r.name: (r.action, r.reason) for r in report.layers}
    assert actions["conv1"] == ("skipped", "stem excluded (stem=False)")
    assert actions["layer4.0.conv1"][1] == "matched by exclude"
    assert actions["layer1.0.conv1"][0] == "frozen"
    model = torchvision.models.resnet18(num_classes=10)
    report = convert(model, "lc", E=2, include=["layer1.*"])
    assert report.counts() == {"lc": 4, "skipped": 13}
    head = nn.Sequential()
    head.add_module("body", nn.Conv2d(3, 4, 3))
    head.add_module("head", nn.Conv2d(4, 2, 3))
    report = convert(head, "frozen", head=False)
    assert [r.action for r in report.layers] == ["frozen", "skipped"]


def test_stem_false_skips_the_whole_stem_of_resnet_d_and_of_torchvision_resnet():
    """ResNet-D's stem is three 3x3 convs (timm conv1.0/.3/.6); stem=False leaves all three learnable,
    stem='only' converts those alone; torchvision's ResNet has one 7x7 conv1."""
    timm = pytest.importorskip("timm", reason='needs the timm extra: pip install "lcdense[timm]"')
    from lcdense import stem_convs

    resnet_d = timm.create_model("resnet18d", num_classes=10)
    assert stem_convs(resnet_d) == ["conv1.0", "conv1.3", "conv1.6"]
    report = convert(resnet_d, "frozen", stem=False)
    actions = {r.name: (r.action, r.reason) for r in report.layers}
    assert [n for n, (a, _) in actions.items() if a == "skipped"] == ["conv1.0", "conv1.3", "conv1.6"]
    assert actions["conv1.6"] == ("skipped", "stem excluded (stem=False)")
    assert actions["layer1.0.conv1"][0] == "frozen" and report.counts() == {"skipped": 3, "frozen": 16}
    assert all(m.weight.requires_grad for m in resnet_d.conv1 if isinstance(m, nn.Conv2d))
    report = convert(timm.create_model("resnet18d", num_classes=10), "frozen", stem="only")
    assert [r.name for r in report.layers if r.action == "frozen"] == ["conv1.0", "conv1.3", "conv1.6"]
    assert report.layers[3].reason == "outside the stem (stem='only')"
    assert report.selection["stem"] == "only" and "stem=only" in str(report)

    resnet = torchvision.models.resnet18(num_classes=10)
    assert stem_convs(resnet) == ["conv1"]
    report = convert(resnet, "lc", E=2, stem=False)
    assert [r.name for r in report.layers if r.action == "skipped"] == ["conv1"]
    assert report.counts() == {"skipped": 1, "lc": 16}
    wrapped = nn.Sequential()
    wrapped.add_module("net", timm.create_model("resnet18d", num_classes=10))
    assert stem_convs(wrapped) == ["net.conv1.0", "net.conv1.3", "net.conv1.6"]
    assert stem_convs(_tiny()) == ["0"]  # a flat model: its first conv alone
    with pytest.raises(LcdenseError, match="stem must be true, false or 'only', got 'first'"):
        convert(_tiny(), "frozen", stem="first")


def test_conv_subclass_with_own_forward_is_skipped_with_reason():
    pytest.importorskip("timm", reason='needs the timm extra: pip install "lcdense[timm]"')
    import timm.layers

    model = nn.Sequential(timm.layers.Conv2dSame(3, 4, 3, stride=2), nn.Conv2d(4, 4, 3))
    report = convert(model, "lc", E=2)
    assert report.layers[0].action == "skipped" and "overrides forward" in report.layers[0].reason
    assert report.layers[1].action == "lc"
    assert model(torch.randn(1, 3, 9, 9)).shape == (1, 4, 3, 3)
    report = convert(nn.Sequential(timm.layers.Conv2dSame(3, 4, 3, stride=2)), "frozen")
    assert report.layers[0].action == "frozen"  # frozen keeps the subclass's forward


@pytest.mark.parametrize("kwargs,message", [
    ({"mode": "lc", "E": 0}, "E must be a positive integer"),
    ({"mode": "lc", "E": -3}, "E must be a positive integer"),
    ({"mode": "lc", "E": 2.5}, "E must be a positive integer"),
    ({"mode": "lcc"}, "unknown mode 'lcc'"),
    ({"mode": "lc", "init": "kaiming"}, "unknown init 'kaiming'; did you mean 'kaiming_"),
    ({"mode": "frozen", "E": 4}, "E and mid only apply to mode 'lc'"),
    ({"mode": "lc", "mid": "gelu"}, "unknown mid op 'gelu'"),
    ({"mode": "lc", "spatial": "random"}, "spatial must be 'frozen' or 'learnable'"),
])
def test_bad_input_gives_clear_errors(kwargs, message):
    with pytest.raises(LcdenseError, match=message):
        convert(_tiny(), **kwargs)


def test_unknown_mode_is_one_line_naming_the_known_ones():
    with pytest.raises(LcdenseError) as error:
        convert(_tiny(), "lcc")
    assert str(error.value) == "unknown mode 'lcc'; did you mean 'lc'? Known: frozen, lc, learnable"


def test_a_registered_mode_is_one_entry_for_convert_and_the_variants(monkeypatch):
    """A new mode (here: the frozen filters at half scale) registered in one place: convert, variant
    parsing, the runner's conversion and the figures' colours take it, nothing else changes."""
    from lcdense.core.convert import MODES, ConversionMode, variant_kinds
    from lcdense.engine.variants import Variant, parse_variants
    from lcdense.reporting.style import OTHER, color

    def halve(module, name, settings):
        frozen = MODES.get("frozen").convert_layer(module, name, settings)
        frozen.weight.mul_(0.5)
        return frozen

    monkeypatch.setitem(MODES._objects, "half", ConversionMode("half", "halved", halve))
    assert list(variant_kinds())[-1] == "half"
    report = convert(_tiny(), "half", seed=3)
    assert {r.action for r in report.layers} == {"halved"} and report.settings == {"init": "kaiming_uniform", "seed": 3}
    reference = convert(_tiny(), "frozen", seed=3).model
    assert torch.equal(report.model[0].weight, reference[0].weight * 0.5)
    with pytest.raises(LcdenseError, match="E and mid only apply to mode 'lc'"):
        convert(_tiny(), "half", E=2)
    assert [v.name for v in parse_variants(["half", "lc-frozen"], [4])] == ["half", "lc-frozen@4"]
    assert (Variant.parse("half").mode, Variant.parse("half").spatial) == ("half", None)
    with pytest.raises(LcdenseError, match="variant 'half' takes no expansion"):
        Variant.parse("half@4")
    assert color("half") != OTHER



def test_counting_macs_combines_no_filters_and_keeps_the_blocks_state(monkeypatch):
    """The MAC count runs one zero sample in which LC-Blocks give zeros of their output's shape:
    no W' = P·W is combined (at a large E that costs more than the model), and each block keeps
    the form its last forward took (which :func:`lcdense.prefold` reads)."""
    import lcdense.core.blocks as blocks
    from lcdense import forward_macs

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    combine = blocks.combine_filters
    monkeypatch.setattr(blocks, "combine_filters", lambda *a: pytest.fail("the count combined filters"))
    report = convert(model, "lc", E=4, spatial="frozen", input_size=(3, 8, 8))
    (block,) = [m for m in report.model.modules() if isinstance(m, LCConv)]
    macs = 8 * 8 * 8 * 27 + 8 * (8 * 4) * 27 + 8 * 2  # the folded conv, W' = P·W once, the head
    assert report.macs_after == forward_macs(report.model, (3, 8, 8)) == macs
    assert report.macs_before == 8 * 8 * 8 * 27 + 8 * 2
    assert report.model.training and block._last_impl is None
    monkeypatch.setattr(blocks, "combine_filters", combine)
    y = report.model(torch.rand(2, 3, 8, 8))
    assert block._last_impl == "fold" and y.shape == (2, 2)
    monkeypatch.setattr(blocks, "combine_filters", lambda *a: pytest.fail("the count combined filters"))
    assert forward_macs(report.model, (3, 8, 8)) == macs
    assert block._last_impl == "fold" and report.model.training
