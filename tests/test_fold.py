"""Folding an LC-Block gives exactly the unfolded block (float64), over an all-pairs design of conv settings
(every two settings meet in some case; the full grid runs under ``-m slow``)."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lcdense import LCConv, LcdenseError, PreconditionedConv, convert, fold, fold_block


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


#: The conv settings the fold must reproduce: kernel (incl. non-square), stride, dilation, padding,
#: groups (4 = depthwise: c_in = 4), bias, padding_mode and E.
PARAMS = {
    "k": [2, 3, 5, 7, (3, 5)],
    "stride": [1, 2],
    "dilation": [1, 2],
    "pad": ["int", "tuple", "same"],
    "groups": [1, 2, 4],
    "bias": [True, False],
    "mode": ["zeros", "reflect"],
    "E": [1, 2, 8],
}


def _valid(case: dict) -> bool:
    """PyTorch refuses padding='same' with a stride; every other combination is a legal conv."""
    return not (case.get("pad") == "same" and case.get("stride") == 2)


def all_pairs(params: dict[str, list], valid=lambda case: True) -> list[tuple]:
    """A small set of cases (tuples in ``params``' order) in which every valid pair of values of
    every two parameters occurs at least once (a pairwise covering design), built greedily and
    deterministically: each new case starts from the first pair still uncovered, then takes for
    each other parameter the first value that covers the most uncovered pairs. ``valid`` judges a
    partial case (a dict of the parameters set so far); pairs it rejects need not be covered."""
    names = list(params)
    uncovered = set()
    for a, b in itertools.combinations(range(len(names)), 2):
        for va, vb in itertools.product(range(len(params[names[a]])), range(len(params[names[b]]))):
            if valid({names[a]: params[names[a]][va], names[b]: params[names[b]][vb]}):
                uncovered.add((a, va, b, vb))
    cases = []
    while uncovered:
        a, va, b, vb = min(uncovered)
        chosen = {a: va, b: vb}
        for i in range(len(names)):
            if i in chosen:
                continue
            best, best_gain = None, -1
            for v in range(len(params[names[i]])):
                trial = {**chosen, i: v}
                if not valid({names[j]: params[names[j]][trial[j]] for j in trial}):
                    continue
                gain = sum((min(i, j), trial[min(i, j)], max(i, j), trial[max(i, j)]) in uncovered for j in chosen)
                if gain > best_gain:
                    best, best_gain = v, gain
            if best is None:
                raise ValueError(f"no valid value of {names[i]!r} completes {chosen}")
            chosen[i] = best
        uncovered -= {(i, chosen[i], j, chosen[j]) for i, j in itertools.combinations(range(len(names)), 2)}
        cases.append(tuple(params[names[i]][chosen[i]] for i in range(len(names))))
    return cases


PAIRWISE = all_pairs(PARAMS, _valid)
#: The full Cartesian grid (1,800 valid cases) runs under ``-m slow``.
FULL_GRID = [g for g in itertools.product(*PARAMS.values()) if _valid(dict(zip(PARAMS, g)))]


def _pairs(case: tuple) -> set:
    return {(a, case[a], b, case[b]) for a, b in itertools.combinations(range(len(case)), 2)}


def test_all_pairs_covers_every_valid_pair_of_every_two_parameters():
    covered = set().union(*map(_pairs, PAIRWISE))
    names = list(PARAMS)
    for a, b in itertools.combinations(range(len(names)), 2):
        for va, vb in itertools.product(PARAMS[names[a]], PARAMS[names[b]]):
            if _valid({names[a]: va, names[b]: vb}):
                assert (a, va, b, vb) in covered, f"{names[a]}={va!r} with {names[b]}={vb!r} is never tested"
    assert all(_valid(dict(zip(names, case))) for case in PAIRWISE)
    assert len(set(PAIRWISE)) == len(PAIRWISE) and len(PAIRWISE) <= 30  # vs 1,800 grid cases
    assert all_pairs(PARAMS, _valid) == PAIRWISE  # deterministic: the same cases on every run


def test_all_pairs_of_small_designs():
    # three binary parameters: 4 cases cover all 12 pairs (the grid has 8)
    three = all_pairs({"a": [0, 1], "b": [0, 1], "c": [0, 1]})
    assert len(three) == 4 and set().union(*map(_pairs, three)) == set().union(*map(_pairs, itertools.product([0, 1], repeat=3)))
    # two parameters: the design is the grid itself
    assert sorted(all_pairs({"a": [0, 1, 2], "b": "xy"})) == sorted(itertools.product([0, 1, 2], "xy"))
    # an excluded pair is never generated, but each of its values still meets every other value
    cases = all_pairs({"a": [0, 1], "b": [0, 1], "c": [0, 1]}, lambda c: not (c.get("a") == 1 and c.get("b") == 1))
    assert (1, 1) not in {case[:2] for case in cases}
    assert {(case[0], case[2]) for case in cases} == {(0, 0), (0, 1), (1, 0), (1, 1)}


def _padding(kind: str, k) -> int | tuple | str:
    ks = k if isinstance(k, tuple) else (k, k)
    if kind == "int":
        return ks[0] // 2
    if kind == "tuple":
        return (ks[0] // 2, ks[1] // 2 + 1)
    return "same"


@pytest.mark.parametrize("k,stride,dilation,pad,groups,bias,mode,E", PAIRWISE + [
    pytest.param(*case, marks=pytest.mark.slow) for case in FULL_GRID if case not in PAIRWISE])
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
    # it is the filter of the block: one conv with it computes the two-conv block, and the gradient
    # that reaches P through it is the one the two-conv block gives P
    x = torch.randn(2, 4, 9, 9)
    assert _rel_err(F.conv2d(x, w, padding=1), block.naive_forward(x)) < 1e-10
    (through_weight,) = torch.autograd.grad(F.conv2d(x, w, padding=1).square().sum(), block.combine_weight)
    (through_block,) = torch.autograd.grad(block.naive_forward(x).square().sum(), block.combine_weight)
    assert through_weight.abs().max() > 0 and _rel_err(through_weight, through_block) < 1e-10


def test_auto_picks_the_cheaper_form():
    block = _block(8, 3, 1, 1, 1, 1, False, "zeros")
    fold_cost, naive_cost = block.step_macs((256, 4, 32, 32))
    assert fold_cost < naive_cost and block.choose_impl((256, 4, 32, 32)) == "fold"
    wide = LCConv(512, 512, 3, expansion=128, padding=1, device="meta")  # the choice reads shapes only
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
    x = torch.randn(2, 3, 32, 32)
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

    model = timm.create_model("test_resnet", num_classes=10).double()  # timm's small ResNet, deep 3x3 stem
    convert(model, "lc", E=2, spatial="frozen", seed=1, impl=impl, input_size=(3, 32, 32))
    model.eval()
    kind = PreconditionedConv if impl == "preconditioned" else LCConv
    blocks = sum(isinstance(m, kind) for m in model.modules())
    assert blocks >= 8
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
