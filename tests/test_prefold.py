"""``prefold``: a converted model combines every LC-Block's filters before its first layer runs.
Only the order of the work changes: values and gradients are bitwise those of combining layer by
layer, copies and pickles leave the graph node out, a stale W' is never used, and activation
checkpointing still works."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lcdense import LCConv, convert, prefold
from lcdense.core.models import cifar_resnet


def _model(spatial: str) -> nn.Module:
    torch.manual_seed(0)
    return convert(cifar_resnet(8, 4, num_classes=3), "lc", E=4, spatial=spatial).model


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 3, (4,), generator=g)


def _grads(model: nn.Module, call) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x, y = _batch()
    out = call(x)
    F.cross_entropy(out, y).backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    return out.detach(), grads


def _blocks(model: nn.Module) -> list[LCConv]:
    return [m for m in model.modules() if isinstance(m, LCConv)]


@pytest.mark.parametrize("spatial", ["frozen", "learnable"])
def test_prefolded_step_is_bitwise_the_layer_by_layer_step(spatial: str) -> None:
    model = _model(spatial)
    assert list(model._forward_pre_hooks.values()) == [prefold]
    _grads(model, model)  # the first forward learns each block's form
    x, _ = _batch()
    out = model(x)
    blocks = _blocks(model)
    assert len(blocks) == 7 and all(b._prefolded is not None for b in blocks)
    out.sum().backward()
    assert all(b._prefolded is None for b in blocks)  # let go once its gradient is computed
    model.zero_grad(set_to_none=True)
    out_pre, grads_pre = _grads(model, model)
    out_inline, grads_inline = _grads(model, model.forward)  # .forward() skips the model's own hooks
    assert torch.equal(out_pre, out_inline)
    assert len(grads_pre) == len(grads_inline) and all(torch.equal(a, b) for a, b in zip(grads_pre, grads_inline))


def test_convert_registers_the_hook_once_and_only_with_lc_blocks() -> None:
    model = _model("frozen")
    convert(model, "lc", E=2, include=["nothing*"])  # a second conversion of an LC model
    assert list(model._forward_pre_hooks.values()) == [prefold]
    frozen = convert(cifar_resnet(8, 4), "frozen").model
    assert not frozen._forward_pre_hooks


def test_copies_and_pickles_leave_out_a_prefolded_weight() -> None:
    model = _model("learnable")
    _grads(model, model)
    x, _ = _batch()
    out = model(x)  # every block now holds a W' with a graph
    twin = copy.deepcopy(model)
    loaded = pickle.loads(pickle.dumps(model))
    assert all(b._prefolded is None for b in _blocks(twin) + _blocks(loaded))
    assert all(b._prefolded is not None for b in _blocks(model))
    for other in (twin, loaded):
        assert torch.equal(other(x), out.detach())
    out.sum().backward()


def test_a_stale_prefolded_weight_is_never_used() -> None:
    model = _model("learnable")
    _grads(model, model)
    x, _ = _batch()
    before = model(x).detach()  # prefolded, and no backward follows
    with torch.no_grad():
        _blocks(model)[-1].combine_weight.mul_(2)  # an in-place update (an optimizer step) bumps the version
    # .forward() skips the model's hook, so its blocks hold the W' of the old P; a deep copy holds none
    # and combines the new P: the two agree only if the stale W' is not used
    after = model.forward(x)
    assert torch.equal(after, copy.deepcopy(model).forward(x)) and not torch.allclose(after, before)
    model(x)  # prefolded again
    model.double()  # new tensors: a prefolded W' of the old ones is not used either
    after = model.forward(x.double())
    assert after.dtype == torch.float64 and torch.equal(after, copy.deepcopy(model).forward(x.double()))


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_recomputes_with_the_prefolded_weight(reentrant: bool) -> None:
    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return checkpoint(self.b, h, use_reentrant=reentrant).mean((2, 3))

    torch.manual_seed(0)
    model = convert(Checkpointed(), "lc", E=3, spatial="learnable").model
    _grads(model, model)
    out, grads = _grads(model, model)
    out_inline, grads_inline = _grads(model, model.forward)
    assert torch.equal(out, out_inline) and all(torch.equal(a, b) for a, b in zip(grads, grads_inline))
    assert all(b._prefolded is None for b in _blocks(model))


def test_no_prefold_without_grad_mode_or_before_the_first_forward() -> None:
    model = _model("frozen")
    x, _ = _batch()
    with torch.no_grad():
        model(x)
        model(x)
    assert all(b._prefolded is None for b in _blocks(model))
    fresh = _model("frozen")
    prefold(fresh)
    assert all(b._last_impl is None and b._prefolded is None for b in _blocks(fresh))


def test_a_compiled_model_combines_inside_its_graph() -> None:
    model = _model("learnable")
    _grads(model, model)  # eager: the blocks have folded once
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out, grads = _grads(model, compiled)
    out_eager, grads_eager = _grads(model, model)
    assert torch.allclose(out, out_eager, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, grads_eager))
    assert all(b._prefolded is None for b in _blocks(model))


def test_lc_blocks_run_on_the_meta_device_and_prefold_only_on_the_cpu() -> None:
    block = LCConv(3, 8, 3, expansion=2, padding=1, device="meta")
    block.register_forward_pre_hook(prefold)
    x = torch.empty(2, 3, 8, 8, device="meta")
    block(x)
    y = block(x)
    assert y.shape == (2, 8, 8, 8) and y.device.type == "meta" and block._last_impl == "fold"
    assert block._prefolded is None  # off the CPU the blocks combine layer by layer
    y.sum().backward()
    assert block.combine_weight.grad.shape == (8, 16)


def test_a_plan_for_a_gpu_combines_layer_by_layer_as_the_gpu_will() -> None:
    from lcdense.cost.estimate import _combine_layer_by_layer

    model = _model("frozen")
    _combine_layer_by_layer(model)
    assert not model._forward_pre_hooks
    _grads(model, model)
    x, _ = _batch()
    model(x)
    assert all(b._prefolded is None for b in _blocks(model))
