"""Folding an LC-Block gives exactly the unfolded block (float64), over a grid of conv settings."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from lcdense import LCConv, LcdenseError, PreconditionedConv, combine_filters, convert, fold, fold_block


@pytest.fixture(autouse=True)
def float64_default():
    """Every tensor in this module is float64 (restored afterwards)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _block(E: int, k, stride, dilation, padding, groups, bias, padding_mode, dims=2, mid=None) -> LCConv:
    torch.manual_seed(0)
    block = LCConv(4, 8, k, expansion=E, stride=stride, padding=padding, dilation=dilation, groups=groups,
                   bias=bias, padding_mode=padding_mode, dims=dims, mid=mid, dtype=torch.float64)
    with torch.no_grad():
        block.spatial_weight.copy_(torch.randn_like(block.spatial_weight))
        block.combine_weight.copy_(torch.randn_like(block.combine_weight))
        if bias:
            block.bias.copy_(torch.randn_like(block.bias))
    return block


GRID = list(itertools.product(
    [2, 3, 5, 7, (3, 5)],            # kernel (incl. non-square)
    [1, 2],                          # stride
    [1, 2],                          # dilation
    ["int", "tuple", "same"],        # padding
    [1, 2, 4],                       # groups (4 = depthwise: c_in = 4)
    [True, False],                   # bias
    ["zeros", "reflect"],            # padding_mode
    [1, 2, 8],                       # E
))


def _padding(kind: str, k) -> int | tuple | str:
    ks = k if isinstance(k, tuple) else (k, k)
    if kind == "int":
        return ks[0] // 2
    if kind == "tuple":
        return (ks[0] // 2, ks[1] // 2 + 1)
    return "same"


@pytest.mark.parametrize("k,stride,dilation,pad,groups,bias,mode,E", [g for g in GRID if not (g[3] == "same" and g[1] == 2)])
def test_fold_matches_two_conv_block(k, stride, dilation, pad, groups, bias, mode, E):
    block = _block(E, k, stride, dilation, _padding(pad, k), groups, bias, mode)
    x = torch.randn(2, 4, 17, 19)
    naive = block.naive_forward(x)
    assert _rel_err(block.fold_forward(x), naive) < 1e-10
    assert _rel_err(fold_block(block)(x), naive) < 1e-10


@pytest.mark.parametrize("dims", [1, 3])
def test_fold_conv1d_and_conv3d(dims):
    block = _block(4, 3, 2, 1, 1, 2, True, "zeros", dims=dims)
    x = torch.randn(2, 4, *([9] * dims))
    folded = fold_block(block)
    assert isinstance(folded, {1: nn.Conv1d, 3: nn.Conv3d}[dims])
    assert _rel_err(folded(x), block.naive_forward(x)) < 1e-10


def test_fold_and_naive_gradients_agree():
    block = _block(8, 3, 1, 1, 1, 2, True, "zeros")
    block.spatial = "learnable"
    block.spatial_weight = nn.Parameter(block.spatial_weight.detach().clone())
    x = torch.randn(2, 4, 10, 10)
    grads = []
    for forward in (block.naive_forward, block.fold_forward):
        block.zero_grad()
        (forward(x) ** 2).sum().backward()
        grads.append([p.grad.clone() for p in (block.spatial_weight, block.combine_weight, block.bias)])
    for naive, folded in zip(*grads):
        assert _rel_err(folded, naive) < 1e-10


def test_weight_is_the_combined_filter_and_differentiable():
    block = _block(2, 3, 1, 1, 1, 1, False, "zeros")
    w = block.weight
    assert w.shape == (8, 4, 3, 3) and w.requires_grad
    expected = block.combine_weight @ block.spatial_weight.reshape(16, -1)
    assert torch.allclose(w.reshape(8, -1), expected, atol=1e-14)
    assert torch.equal(combine_filters(block.spatial_weight, block.combine_weight), w)


def test_auto_picks_the_cheaper_form():
    block = _block(8, 3, 1, 1, 1, 1, False, "zeros")
    fold_cost, naive_cost = block.step_macs((256, 4, 32, 32))
    assert fold_cost < naive_cost and block.choose_impl((256, 4, 32, 32)) == "fold"
    wide = LCConv(512, 512, 3, expansion=128, padding=1)
    assert wide.choose_impl((1, 512, 1, 1)) == "naive"  # fold of 512·65536·4608 MACs vs one pixel
    assert wide.choose_impl((256, 512, 7, 7)) == "fold"


def test_mid_blocks_are_not_foldable():
    block = _block(2, 3, 1, 1, 1, 1, True, "zeros", mid="relu")
    with pytest.raises(Exception, match="cannot fold"):
        fold_block(block)
    with pytest.raises(Exception, match="no single weight"):
        _ = block.weight
    x = torch.randn(1, 4, 8, 8)
    assert block(x).shape == (1, 8, 8, 8)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "densenet121"])
def test_fold_whole_models_float64(name):
    import torchvision

    model = torchvision.models.get_model(name, weights=None, num_classes=10).double()
    convert(model, "lc", E=2, spatial="frozen", seed=3)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        after = fold(model, inplace=True)(x)
    assert not any(isinstance(m, LCConv) for m in model.modules())
    assert _rel_err(after, before) < 1e-10


@pytest.mark.parametrize("impl", ["auto", "preconditioned"])
def test_timm_reparameterize_model_folds_exactly_as_fold(impl):
    """timm's own deploy tool (it replaces a child by ``child.fuse()``) gives lcdense.fold's model, bit for bit."""
    timm = pytest.importorskip("timm")
    from timm.utils import reparameterize_model

    model = timm.create_model("resnet18d", num_classes=10).double()
    convert(model, "lc", E=2, spatial="frozen", seed=1, impl=impl, input_size=(3, 32, 32))
    model.eval()
    kind = PreconditionedConv if impl == "preconditioned" else LCConv
    blocks = sum(isinstance(m, kind) for m in model.modules())
    assert blocks > 10
    folded = fold(model)
    by_timm = reparameterize_model(model)  # a deep copy, folded
    assert sum(isinstance(m, kind) for m in model.modules()) == blocks  # the original is untouched
    assert not any(isinstance(m, (LCConv, PreconditionedConv)) for m in by_timm.modules())
    assert [type(m) for m in by_timm.modules()] == [type(m) for m in folded.modules()]
    ours, theirs = folded.state_dict(), by_timm.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        assert torch.equal(by_timm(x), folded(x))
        assert _rel_err(by_timm(x), reference) < 1e-10


def _converted(impl: str = "auto") -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Sequential(nn.Conv2d(8, 4, 3, padding=1)))
    return convert(model, "lc", E=2, spatial="frozen", seed=5, impl=impl).model.eval()


@pytest.mark.parametrize("impl", ["auto", "preconditioned"])
def test_fold_copies_by_default_and_leaves_the_model_untouched(impl):
    model = _converted(impl)
    before = {name: (t, t.clone()) for name, t in model.state_dict(keep_vars=True).items()}
    types = [type(m) for m in model.modules()]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        folded = fold(model)
        assert folded is not model and _rel_err(folded(x), expected) < 1e-12
    assert [type(m) for m in model.modules()] == types
    after = model.state_dict(keep_vars=True)
    assert after.keys() == before.keys()
    for name, (tensor, values) in before.items():
        assert after[name] is tensor and torch.equal(tensor, values)  # the same tensors, bitwise as before
    assert not any(isinstance(m, (LCConv, PreconditionedConv)) for m in folded.modules())
    assert {t.untyped_storage().data_ptr() for t in folded.state_dict().values()}.isdisjoint(
        t.untyped_storage().data_ptr() for t in after.values())


def test_fold_inplace_returns_the_model_itself():
    model = _converted()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        inner = model[2]
        assert fold(model, inplace=True) is model and model[2] is inner
        assert [type(m) for m in model if not isinstance(m, nn.ReLU)] == [nn.Conv2d, nn.Sequential]
        assert type(model[2][0]) is nn.Conv2d and _rel_err(model(x), expected) < 1e-12


def test_fold_of_a_block_itself():
    block = _converted()[0]
    assert type(fold(block)) is nn.Conv2d and isinstance(block, LCConv)
    with pytest.raises(LcdenseError, match=r"^fold\(inplace=True\) cannot replace the model itself, a LCConv; "
                                           r"use fold_block\(model\) for a single block$"):
        fold(block, inplace=True)
