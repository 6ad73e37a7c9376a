"""Every LC-Block implementation computes the same function and the same gradients (float64),
``auto`` picks forms by training cost, and the benchmark's memory accounting sees the difference."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lcdense import LCConv, LcdenseError, bench, convert, fold
from lcdense.cli import main as cli_main
from lcdense.core.models import cifar_resnet
from lcdense.core.precondition import PreconditionedConv
from lcdense.cost.bench import predicted_ratios

TOL = 1e-12


def _block(spatial: str = "learnable", dims: int = 2, c_in: int = 4, c_out: int = 6, **kw) -> LCConv:
    torch.manual_seed(0)
    kw = {"expansion": 3, "padding": 1, **kw}
    block = LCConv(c_in, c_out, 3, spatial=spatial, dims=dims, dtype=torch.float64, **kw)
    with torch.no_grad():
        block.spatial_weight.normal_()
        block.combine_weight.normal_()
        if block.bias is not None:
            block.bias.normal_()
    return block


def _run(block: nn.Module, x: torch.Tensor, impl: str | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output and gradients (input, then every trainable parameter) for a fixed upstream gradient."""
    if impl is not None:
        block.impl = impl
    x = x.clone().requires_grad_(True)
    y = block(x)
    y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape))
    grads = [x.grad] + [p.grad.clone() for p in block.parameters()]
    block.zero_grad(set_to_none=True)
    return y.detach(), grads


@pytest.mark.parametrize(
    "dims,kw",
    [
        (2, {}),
        (2, {"groups": 2, "stride": 2}),
        (2, {"padding_mode": "reflect", "dilation": 2, "padding": 2}),
        (2, {"padding": "same", "bias": False}),
        (1, {"stride": 2}),
        (3, {"groups": 2}),
    ],
)
@pytest.mark.parametrize("spatial", ["frozen", "learnable"])
def test_fold_naive_auto_agree_in_value_and_gradient(dims: int, kw: dict, spatial: str) -> None:
    block = _block(spatial, dims, **kw)
    x = torch.randn(2, 4, *([7] * dims), dtype=torch.float64)
    y_naive, g_naive = _run(block, x, "naive")
    for impl in ("fold", "auto"):
        y, g = _run(block, x, impl)
        assert (y - y_naive).abs().max() < TOL
        assert len(g) == len(g_naive) == 2 + (spatial == "learnable") + (block.bias is not None)
        for a, b in zip(g, g_naive):
            assert (a - b).abs().max() < TOL
    folded = fold(block)
    assert type(folded) is {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    assert (folded(x) - y_naive).abs().max() < TOL


def test_preconditioned_and_folded_forms_match_in_value() -> None:
    block = _block("frozen", groups=2)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    y, _ = _run(block, x, "naive")
    pre = PreconditionedConv.from_lc(block)
    assert (pre(x) - y).abs().max() < TOL
    assert type(fold(pre)) is nn.Conv2d and (fold(pre)(x) - y).abs().max() < TOL


def test_channels_last_bank_folds_without_copy_and_in_its_layout() -> None:
    block = _block("learnable", groups=2)
    reference = block.weight.detach().clone()
    block = block.to(memory_format=torch.channels_last)
    assert block.spatial_weight.is_contiguous(memory_format=torch.channels_last)
    w = block.weight
    assert w.is_contiguous(memory_format=torch.channels_last)
    assert (w.detach() - reference).abs().max() < TOL
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    y_naive, g_naive = _run(block, x, "naive")
    y, g = _run(block, x, "fold")
    assert (y - y_naive).abs().max() < TOL
    assert all((a - b).abs().max() < TOL for a, b in zip(g, g_naive))


def test_fold_and_preconditioned_compile_as_one_graph() -> None:
    block = _block("frozen")
    model = nn.Sequential(block, PreconditionedConv.from_lc(_block("frozen", c_in=6, c_out=4)))  # block: auto
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    _, g_eager = _run(model, x)
    _, g_compiled = _run(torch.compile(model, backend="aot_eager", fullgraph=True), x)
    assert len(g_eager) == 5
    assert all((a - b).abs().max() < TOL for a, b in zip(g_compiled, g_eager))


@pytest.mark.parametrize("spatial", ["frozen", "learnable"])
def test_autocast_fold_saves_no_low_precision_copy_of_the_bank(spatial: str) -> None:
    torch.manual_seed(0)
    block = LCConv(16, 32, 3, expansion=64, padding=1, spatial=spatial)
    nn.init.normal_(block.spatial_weight), nn.init.normal_(block.combine_weight), nn.init.normal_(block.bias)
    x = torch.randn(2, 16, 8, 8)
    reference = [g.clone() for g in torch.autograd.grad(block(x).sum(), list(block.parameters()))]
    own = {t.untyped_storage().data_ptr() for t in [*block.parameters(), *block.buffers()]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in own:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
    assert y.dtype == torch.bfloat16
    grads = torch.autograd.grad(y.float().sum(), list(block.parameters()))
    assert sum(saved.values()) < block.spatial_weight.numel() * 2 / 10  # bank in bf16 would be 10× more
    assert [g.dtype for g in grads] == [torch.float32] * len(reference)
    for g, r in zip(grads, reference):
        assert (g - r).norm() / r.norm() < 2e-2  # bf16 rounding only


def test_step_macs_count_forward_and_backward() -> None:
    block = LCConv(4, 6, 3, expansion=2, padding=1)  # frozen: no gradient for the bank
    conv, combine = 2 * 8 * 8 * 6 * 36, 6 * 12 * 36  # positions·c_out·taps, c_out·c_out·E·taps
    spatial, pointwise = 2 * 8 * 8 * 12 * 36, 2 * 8 * 8 * 6 * 12
    assert block.step_macs((2, 4, 8, 8)) == (conv + combine, spatial + pointwise)
    assert block.step_macs((2, 4, 8, 8), backward=True) == (3 * conv + 2 * combine, 2 * spatial + 3 * pointwise)
    learnable = LCConv(4, 6, 3, expansion=2, padding=1, spatial="learnable")
    assert learnable.step_macs((2, 4, 8, 8), backward=True) == (3 * conv + 3 * combine, 3 * spatial + 3 * pointwise)


def test_auto_picks_the_cheaper_exact_form() -> None:
    wide = LCConv(64, 256, 3, expansion=4, padding=1)
    assert wide.choose_impl((1, 64, 2, 2), training=True) == "naive"  # 4 positions against c_out·E = 1024
    assert wide.choose_impl((128, 64, 8, 8), training=True) == "fold"
    # depthwise at E=1: the two convs need fewer MACs, but would save maps larger than the bank
    depthwise = LCConv(8, 8, 3, expansion=1, groups=8, padding=1)
    fold_macs, naive_macs = depthwise.step_macs((4, 8, 16, 16), backward=True)
    assert naive_macs < fold_macs
    assert depthwise.choose_impl((4, 8, 16, 16), training=True) == "fold"
    with torch.no_grad():  # inference counts the forward only
        assert wide.choose_impl((1, 64, 2, 2)) == "naive" and depthwise.choose_impl((4, 8, 16, 16)) == "fold"
    assert LCConv(8, 8, 3, expansion=1, mid="relu").choose_impl((128, 8, 32, 32)) == "naive"


def test_conversion_report_names_the_chosen_form_per_layer() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(8), nn.Conv2d(8, 512, 3, padding=1))
    report = convert(model, "lc", E=8, input_size=(3, 16, 16), batch_size=1)  # 2×2 maps before the wide conv
    assert [r.impl for r in report.layers] == ["fold", "naive"]
    report = convert(nn.Sequential(nn.Conv2d(3, 8, 3)), "lc", E=2, impl="preconditioned", input_size=(3, 8, 8))
    assert [r.impl for r in report.layers] == ["preconditioned"]
    assert "impl=preconditioned" in str(report)


def test_benchmark_smoke_writes_ratios_and_memory(tmp_path, capfd) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "--E", "2", "--rounds", "2", "--batch-size", "2", "--image-size", "16", "--naive-max-E", "2",
            "--out", str(out)]
    assert cli_main(args) == 0
    printed = capfd.readouterr()
    assert "MAC-predicted ×base" in printed.out
    assert "profiler_start" not in printed.err and "gpuGetDeviceCount" not in printed.err  # the profiler's C++ chatter
    data = json.loads(out.read_text())
    rows = {r["name"]: r for r in data["results"]}
    assert set(rows) == {"baseline", "lc-frozen@2 auto", "lc-frozen@2 naive", "lc-frozen@2 preconditioned",
                         "lc-learnable@2 auto", "lc-learnable@2 naive", "infer baseline",
                         "infer folded lc-learnable@2"}
    assert rows["baseline"]["step_ratio"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    # 2 samples of 4×4 maps in the last stage: auto runs the two convs there, folds elsewhere
    assert rows["lc-frozen@2 auto"]["layers"] == "fold:13 naive:6"
    assert rows["lc-frozen@2 naive"]["activation_ratio"] > rows["lc-frozen@2 auto"]["activation_ratio"] > 1
    assert rows["lc-frozen@2 preconditioned"]["activation_ratio"] == 1.0  # saves exactly the baseline's tensors
    learnable, frozen = rows["lc-learnable@2 auto"]["memory_bytes"], rows["lc-frozen@2 auto"]["memory_bytes"]
    assert learnable["state"] > frozen["state"]  # bank gradient and momentum
    for name in ("baseline", "lc-frozen@2 auto", "lc-learnable@2 auto"):
        row = rows[name]  # the update is timed inside the step: positive, and a part of it
        assert 0 < row["update_s"]["median"] < row["step_s"]["max"]
        assert row["predicted_macs_only_ratio"] == pytest.approx(1 + (row["mac_ratio"] - 1) * data["settings"]["conv_share"])
        assert row["predicted_step_ratio"] == pytest.approx(predicted_ratios(
            row["mac_ratio"], data["settings"]["conv_share"], row["update_times"], rows["baseline"]["update_times"],
            rows["baseline"]["times"])["predicted_step_ratio"])
    assert rows["baseline"]["predicted_step_ratio"] == 1.0
    assert cli_main(args) == 2  # never overwrites a result file



def test_bench_python_api_returns_rows_and_writes_json_once(tmp_path) -> None:
    out = tmp_path / "sub" / "bench.json"
    kwargs = {"E": [2], "naive_max_E": 0, "rounds": 1, "steps": 1, "batch_size": 2, "image_size": 16, "out": out}
    result = bench(**kwargs)
    assert result.out == out and json.loads(out.read_text()) == json.loads(json.dumps(result.to_dict()))
    assert [r["name"] for r in result.rows] == ["baseline", "lc-frozen@2 auto", "lc-frozen@2 preconditioned",
                                                "lc-learnable@2 auto", "infer baseline", "infer folded lc-learnable@2"]
    assert all(r["status"] == "ok" for r in result.rows)
    for row in result.rows:
        ratios = [row["step_ratio"]["median"], row["cpu_ratio"]["median"]]
        if row["kind"] == "train":
            ratios += [row["mac_ratio"], row["memory_ratio"], row["activation_ratio"]]
            assert row["memory_bytes"]["total"] == row["memory_bytes"]["state"] + row["memory_bytes"]["activations"] > 0
        assert all(r > 0 for r in ratios)
    base = result.rows[0]
    assert base["step_ratio"]["median"] == base["mac_ratio"] == base["memory_ratio"] == 1.0
    assert result.settings["E"] == [2] and result.settings["out"] == str(out) and 0 < result.settings["conv_share"] <= 1
    assert result.header in result.summary() and str(out) in result.summary()
    written = out.read_bytes()
    with pytest.raises(LcdenseError, match="already exists"):
        bench(**kwargs)
    assert out.read_bytes() == written and list(out.parent.iterdir()) == [out]

def test_cifar_resnet_shape_and_depth_check() -> None:
    model = cifar_resnet(20, 16)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules()) == 19
    with pytest.raises(LcdenseError, match="6n\\+2"):
        cifar_resnet(21)
