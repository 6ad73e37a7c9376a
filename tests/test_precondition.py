"""The preconditioned form trains exactly like the frozen-spatial LC-Block under SGD, and only SGD."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lcdense import LCConv, LcdenseError, convert, fold, frozen_digest, frozen_tensors
from lcdense.core.precondition import PreconditionedConv, check_preconditioned_optimizer


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).double()


def _lc_and_preconditioned(E: int) -> tuple[nn.Module, nn.Module]:
    lc = convert(_net(), "lc", E=E, spatial="frozen", impl="naive", seed=3).model
    pre = convert(_net(), "lc", E=E, spatial="frozen", impl="preconditioned", seed=3).model
    return lc, pre


def _combined(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, (LCConv, PreconditionedConv))]


@pytest.mark.parametrize(
    "E,sgd",
    [
        (4, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
        (16, {"lr": 0.02, "momentum": 0.5, "dampening": 0.2, "weight_decay": 3e-3}),
    ],
)
def test_sgd_on_preconditioned_weights_equals_sgd_on_the_lc_block(E: int, sgd: dict) -> None:
    lc, pre = _lc_and_preconditioned(E)
    opt_lc = torch.optim.SGD(lc.parameters(), **sgd)
    opt_pre = torch.optim.SGD(pre.parameters(), **sgd)
    check_preconditioned_optimizer(opt_pre, pre)
    schedules = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in (opt_lc, opt_pre)]
    gen = torch.Generator().manual_seed(1)
    digest = frozen_digest(pre)
    assert max((a - b).abs().max().item() for a, b in zip(_combined(lc), _combined(pre))) < 1e-14
    for _ in range(6):
        x = torch.randn(6, 3, 8, 8, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 5, (6,), generator=gen)
        for model, opt in ((lc, opt_lc), (pre, opt_pre)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        for s in schedules:
            s.step()
    moved = max((a - b).abs().max().item() for a, b in zip(_combined(lc), _combined(_lc_and_preconditioned(E)[1])))
    assert moved > 1e-3  # the filters really trained
    assert max((a - b).abs().max().item() for a, b in zip(_combined(lc), _combined(pre))) < 1e-12
    x = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
    assert (lc.eval()(x) - pre.eval()(x)).abs().max() < 1e-12
    assert frozen_digest(pre) == digest


def test_adaptive_optimizers_are_not_exact_and_are_refused() -> None:
    lc, pre = _lc_and_preconditioned(4)
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 5, (6,))
    for model in (lc, pre):
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    assert max((a - b).abs().max().item() for a, b in zip(_combined(lc), _combined(pre))) > 1e-4
    with pytest.raises(LcdenseError, match="exact only under SGD.*AdamW trains 2 preconditioned weights"):
        check_preconditioned_optimizer(torch.optim.AdamW(pre.parameters()), pre)
    check_preconditioned_optimizer(torch.optim.Adam(pre[-1].parameters()), pre)  # only the head: fine
    check_preconditioned_optimizer(torch.optim.Adam(lc.parameters()), lc)  # no preconditioned weights


def test_preconditioner_is_the_frozen_gram_matrix_and_folds_to_a_plain_conv() -> None:
    _, pre = _lc_and_preconditioned(4)
    block = convert(_net(), "lc", E=4, spatial="frozen", seed=3).model[3]
    bank = block.spatial_weight.reshape(2, 16, 36)
    assert torch.allclose(pre[3].preconditioner, bank.transpose(1, 2) @ bank, atol=1e-12)
    assert sorted(frozen_tensors(pre)) == ["0.preconditioner", "3.preconditioner"]
    assert pre[3].preconditioner.shape == (2, 36, 36)  # groups × d × d, independent of E
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    expected = pre.eval()(x)
    folded = fold(pre)
    assert [type(m) for m in folded if isinstance(m, nn.Conv2d)] == [nn.Conv2d, nn.Conv2d]
    assert (folded(x) - expected).abs().max() < 1e-12


def test_preconditioned_needs_frozen_spatial_lc_without_mid() -> None:
    with pytest.raises(LcdenseError, match="impl 'preconditioned' needs mode 'lc', spatial 'frozen'"):
        convert(_net(), "lc", E=4, spatial="learnable", impl="preconditioned")
    with pytest.raises(LcdenseError, match="impl 'preconditioned' needs"):
        convert(_net(), "lc", E=4, mid="relu", impl="preconditioned")
    with pytest.raises(LcdenseError, match="impl 'preconditioned' needs"):
        convert(_net(), "frozen", impl="preconditioned")
    with pytest.raises(LcdenseError, match="needs a frozen spatial bank"):
        PreconditionedConv.from_lc(LCConv(3, 4, 3, expansion=2, spatial="learnable"))
