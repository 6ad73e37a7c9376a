"""Cost planning: the dry run's estimate against measured runs, exact state, refusal before allocation."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lcdense
from lcdense.cli import main
from lcdense.core.accounting import step_macs
from lcdense.core.blocks import _onednn_fold, combine_filters
from lcdense.core.models import cifar_resnet
from lcdense.cost.estimate import Footprint, estimate
from lcdense.cost.memory import LiveTensorBytes, PeakMemory, storage_bytes
from lcdense.engine.training import TrainSettings, make_optimizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    """One dataset cache for the module (the embedded datasets are generated once)."""
    return str(tmp_path_factory.mktemp("cache"))


def _cells(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/*/cells/*/cell.json"))]


# Each task's embedded config, shortened to one epoch (and fewer images for classification and
# detection); the model, batch, input size, optimizer and evaluation are the embedded ones. The
# LC-learnable cell has the most state (bank, gradient, optimizer state) and the most activations.
TASK_ARGS = {
    "classification": ["--set", "data.train_limit=512"],
    "segmentation": [],
    "detection": ["--set", "data.shapes.n_trainval=32", "--set", "data.shapes.n_test=8"],
}


@pytest.mark.parametrize("task", [pytest.param(t, marks=pytest.mark.extra(t)) if t != "classification" else t
                                  for t in sorted(TASK_ARGS)])
def test_predicted_peak_is_within_15_percent_of_the_measured_peak(task, tmp_path, cache):
    argv = ["run", "--task", task, "--E", "8", "--variants", "lc-learnable", "--epochs", "1",
            "--no-analysis", "-q", "--device", "cpu", "--out", str(tmp_path), "--set", f"run.cache_dir={cache}",
            *TASK_ARGS[task]]
    assert main(argv) == 0
    (record,) = _cells(tmp_path)
    costs = record["costs"]
    assert costs["peak_memory_kind"] == "cpu_tensor_peak"
    ratio = costs["predicted_peak_memory_mb"] / costs["peak_memory_mb"]
    assert 0.85 <= ratio <= 1.15, (costs["predicted_peak_memory_mb"], costs["peak_memory_mb"])


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("spatial", ["frozen", "learnable"])
def test_state_memory_is_exact(optimizer, spatial):
    torch.manual_seed(0)
    base = cifar_resnet(8, 16, num_classes=10)
    settings = TrainSettings(epochs=1, lr=0.1, optimizer=optimizer, weight_decay=5e-4)
    convert = lambda m: lcdense.convert(m, "lc", E=4, spatial=spatial, input_size=(3, 32, 32), batch_size=8)  # noqa: E731
    est = estimate(base, Footprint(batch_size=8, input_size=(3, 32, 32), optimizer=optimizer, lr=0.1,
                                   weight_decay=5e-4), convert=convert)
    model = convert(base).model
    opt = make_optimizer(model, settings)
    torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.zeros(8, dtype=torch.long)).backward()
    opt.step()
    params = list(model.parameters())
    assert est.params_bytes == storage_bytes(params)
    assert est.buffers_bytes == storage_bytes(list(model.buffers()))
    assert est.grads_bytes == storage_bytes(p.grad for p in params if p.grad is not None)
    assert est.optimizer_bytes == storage_bytes(v for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    assert est.optimizer_bytes == est.grads_bytes * (1 if optimizer == "sgd" else 2) + (
        4 * len(opt.state) if optimizer == "adamw" else 0)  # AdamW: two moments and a float32 step per tensor
    counts = lcdense.count_parameters(model)
    assert (est.trainable_params, est.frozen_params) == (counts["trainable"], counts["frozen"])



@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_a_parameter_the_forward_never_reaches_has_no_gradient_and_no_state(optimizer):
    """The estimate gives every trainable parameter the gradient and optimizer state of an earlier
    step without running one, unless the forward leaves one out: then it runs the real steps."""
    class WithUnused(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8 * 36, 4)
            self.unused = torch.nn.Linear(100, 100)  # 10,100 trainable parameters no step updates

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv(x).flatten(1))

    torch.manual_seed(0)
    model = WithUnused()
    settings = TrainSettings(epochs=1, lr=0.1, optimizer=optimizer)
    est = estimate(model, Footprint(batch_size=2, input_size=(3, 8, 8), optimizer=optimizer, lr=0.1))
    opt = make_optimizer(model, settings)
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        opt.step()
    params = list(model.parameters())
    assert model.unused.weight.grad is None and model.unused.weight not in opt.state
    assert est.grads_bytes == storage_bytes(p.grad for p in params if p.grad is not None) == 4 * (224 + 8 * 36 * 4 + 4)
    assert est.optimizer_bytes == storage_bytes(v for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    assert est.trainable_params == sum(p.numel() for p in params) == 224 + 1156 + 10_100

def test_estimate_allocates_nothing_of_the_bank_and_counts_flops():
    torch.manual_seed(0)
    base = cifar_resnet(8, 16, num_classes=10)
    convert = lambda m: lcdense.convert(m, "lc", E=100_000, spatial="learnable")  # noqa: E731
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    est = estimate(base, Footprint(batch_size=128, input_size=(3, 32, 32)), convert=convert, memory=2**30)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert grown < 2**30  # fake tensors: no real storage of the 27 GiB state
    assert est.params_bytes > 25 * 2**30 and est.fits is False
    assert est.step_flops > 2 * est.forward_flops > 0
    plain = estimate(base, Footprint(batch_size=128, input_size=(3, 32, 32)))
    assert plain.forward_flops == 2 * 128 * lcdense.forward_macs(base, (3, 32, 32))


def test_dry_run_prints_the_table_and_writes_json_without_a_run(tmp_path, capsys, cache):
    argv = ["run", "--task", "classification", "--E", "8", "--seeds", "0,1", "--dry-run", "--memory", "80GiB",
            "--device", "cpu", "--out", str(tmp_path), "--set", f"run.cache_dir={cache}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines()[3:] if line and not line.startswith("estimates")]
    assert rows == ["learnable", "frozen", "lc-learnable@8", "lc-frozen@8"]  # one per variant: seeds share shapes
    files = list((tmp_path / "classification" / "dry-run").glob("*.json"))
    assert len(files) == 1 and [p.name for p in (tmp_path / "classification").iterdir()] == ["dry-run"]
    estimates = json.loads(files[0].read_text())["estimates"]
    assert all(e["memory_bytes"] == 80 * 2**30 and e["fits"] is True for e in estimates)
    assert estimates[2]["state_bytes"] > estimates[0]["state_bytes"]


def test_refusal_before_allocation_is_one_line(tmp_path, capsys, cache):
    argv = ["run", "--task", "classification", "--E", "200000", "--variants", "lc-frozen", "--device", "cpu",
            "--out", str(tmp_path), "--name", "big", "--set", "run.max_memory=6GiB", "--set", f"run.cache_dir={cache}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("lcdense: error: cell lc-frozen@200000__seed0 needs about ")
    assert "6.00 GiB is available (run.max_memory)" in err
    assert "Use a smaller E, or conversion.impl: preconditioned" in err
    assert err.endswith("more ranks would not help, each holds the full state")  # the bank dominates
    assert not (tmp_path / "classification" / "big" / "cells" / "lc-frozen@200000__seed0" / "conversion.txt").exists()


def test_refusal_under_an_address_space_limit(tmp_path, cache):
    """``ulimit -v 6 GB``: the run stops with one line before the allocator fails."""
    limit = 6 * 10**9

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "lcdense", "run", "--task", "classification", "--E", "200000",
                           "--variants", "lc-frozen", "--device", "cpu", "--out", str(tmp_path), "-q",
                           "--set", f"run.cache_dir={cache}"],
                          capture_output=True, text=True, preexec_fn=cap, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "address-space limit (ulimit -v)" in lines[0] and "Traceback" not in proc.stderr


def test_peak_memory_counts_the_model_and_what_the_block_allocates():
    model = torch.nn.Linear(256, 256)
    with PeakMemory(torch.device("cpu"), held=list(model.parameters())) as memory:
        x = torch.ones(1024, 256)
        y = model(x)
        del x, y
    state = storage_bytes(model.parameters())
    assert memory.kind == "cpu_tensor_peak"
    assert memory.peak_mb * 2**20 == state + 2 * 1024 * 256 * 4



def test_the_live_count_takes_new_storages_only():
    """A view or an in-place op returns a storage that exists (the schema says which returns
    alias an input): not counted again, and not at all if it was there before the block; a new
    tensor, a multi-output op's results and a list of results are counted once each."""
    before = torch.zeros(100)  # 400 bytes, alive before the block and not held: never counted
    with LiveTensorBytes() as live:
        before.add_(1)
        view = before.view(10, 10)
        fresh = before * 2  # 400
        fresh.mul_(3)
        both = torch.ones(10, 10).max(dim=1)  # 400, then values 40 and indices 80; the ones die
        parts = torch.ones(8).split(4)  # views of one new storage: 32
        assert live.live == 400 + 40 + 80 + 32, live.live
    assert view.untyped_storage().data_ptr() == before.untyped_storage().data_ptr()
    assert live.peak == 400 + 400 + 40 + 80  # while max() held its input
    del fresh, both, parts

def test_a_freed_storage_runs_no_python_code_so_ctrl_c_is_never_swallowed():
    """A signal handler runs between Python bytecodes; one that raised inside a weakref callback
    would be printed as "Exception ignored" and the run would go on. The counter's release path
    is C only: no Python frame runs when a counted storage dies."""
    calls: list[str] = []

    def profile(frame, event, arg):  # noqa: ANN001
        if event == "call":
            calls.append(frame.f_code.co_name)

    with LiveTensorBytes() as live:
        a = torch.ones(256)
        b = a * 2
        sys.setprofile(profile)
        del a
        sys.setprofile(None)
        assert calls == []
        assert live.live == 1024 and live.peak == 2048
        c = torch.ones(512)  # a new storage may take a dead one's id: it is counted
        assert live.live == 3072 and live.peak == 3072
    del b, c
    assert live.live == 0


def test_onednn_fold_matches_the_float64_product():
    torch.manual_seed(0)
    bank = torch.nn.Parameter(torch.randn(64 * 16, 32, 3, 3))
    combine = torch.nn.Parameter(torch.randn(64, 64 * 16))
    assert _onednn_fold(bank, combine) == torch.backends.mkldnn.is_available()
    out = combine_filters(bank, combine)
    grad = torch.randn_like(out)
    out.backward(grad)
    bank64, combine64 = (t.detach().double().requires_grad_() for t in (bank, combine))
    ref = combine_filters(bank64, combine64)  # float64: the plain bmm path
    ref.backward(grad.double())
    for a, b in ((out, ref), (combine.grad, combine64.grad), (bank.grad, bank64.grad)):
        assert a.shape == b.shape and a.is_contiguous()
        assert ((a.double() - b).abs().max() / b.abs().max()).item() < 1e-5


def test_step_macs_of_the_bench_model_at_e128():
    """The issue's numbers: a training step's MACs at E = 128 are 1.24× (frozen) and 1.36× (learnable)."""
    base = step_macs(cifar_resnet(20, 16, num_classes=10), (3, 32, 32), 128)
    ratios = {}
    for spatial in ("frozen", "learnable"):
        model = lcdense.convert(cifar_resnet(20, 16, num_classes=10), "lc", E=128, spatial=spatial,
                                input_size=(3, 32, 32), batch_size=128).model
        ratios[spatial] = round(step_macs(model, (3, 32, 32), 128) / base, 2)
    assert ratios == {"frozen": 1.24, "learnable": 1.36}


def test_gpu_check_script_runs_on_cpu_at_a_tiny_size(capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gpu_cost_check
    finally:
        sys.path.pop(0)
    assert gpu_cost_check.main(["--device", "cpu", "--image-size", "32", "--batch-size", "2", "--E", "2",
                                "--amp", "none", "--steps", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split(":")[0]: line.split(", ") for line in lines[lines.index(next(l for l in lines if l.startswith("real run"))) + 1:]}
    assert set(rows) == {"baseline", "lc-learnable@2"}
    assert all(0.85 <= float(r[2]) <= 1.15 for r in rows.values())  # measured / predicted peak
