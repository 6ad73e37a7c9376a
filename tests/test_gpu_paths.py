"""What a GPU node runs differently, proven on the CPU (issue 21, item 9): no host synchronisation per
training step, the autocast dtype as a function of the GPU's capability, fp16 with a GradScaler on GPUs
without bf16, pinned memory for batches bound for a GPU."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import lcdense.engine.training as training
from lcdense import Cell, TrainSettings, autocast_precision, train_loop

SYNCS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default, torch.ops.aten.equal.default}


class CountSyncs(TorchDispatchMode):
    """Counts the operators that copy a tensor's value to the host (``.item()``, ``float()``, ``bool()``):
    on a GPU each is a synchronisation."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func in SYNCS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _train(tmp_path, steps: int, epochs: int = 2, **train) -> tuple[Cell, list[dict]]:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(steps * 8, 3, 8, 8, generator=gen), torch.randint(0, 4, (steps * 8,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 4))
    cell = Cell(variant="learnable", seed=0, init_seed=0, data_seed=1, dir=tmp_path / f"s{steps}", device=torch.device("cpu"),
                convert=lambda m: None, quiet=True)
    cell.dir.mkdir()
    settings = TrainSettings(epochs=epochs, lr=0.05, optimizer="sgd", **train)
    history = train_loop(model, batches=lambda e: ((x[i:i + 8], y[i:i + 8]) for i in range(0, len(y), 8)),
                         steps_per_epoch=steps, loss=lambda net, b: F.cross_entropy(net(b[0]), b[1]),
                         settings=settings, cell=cell)
    return cell, history


def test_the_training_loop_synchronises_with_the_host_per_epoch_not_per_step(tmp_path):
    counts = {}
    for steps in (2, 6):
        with CountSyncs() as syncs:
            _train(tmp_path, steps, grad_clip=1.0)
        counts[steps] = syncs.count
    assert counts[2] == counts[6], counts  # three times the steps, not one sync more
    assert counts[2] <= 2 * 2  # the epoch's loss (and at most one more) per epoch


def test_the_autocast_dtype_follows_the_gpu_capability(monkeypatch):
    cuda, cpu = torch.device("cuda:0"), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, want in (((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert autocast_precision(True, cuda) == want, capability
        assert autocast_precision(False, cuda) == "fp32" and autocast_precision(True, cpu) == "fp32"
        made = []
        monkeypatch.setattr(torch, "autocast", lambda **kw: made.append(kw))  # no CUDA here to build it on
        training.autocast(cuda, True)
        assert made == [{"device_type": "cuda", "dtype": {"fp16": torch.float16, "bf16": torch.bfloat16}[want],
                         "enabled": True}]


def test_fp16_trains_through_a_grad_scaler_kept_in_the_checkpoint(tmp_path, monkeypatch):
    # a GPU without bf16, played on the CPU: fp16 autocast (CPU supports it) and torch's GradScaler
    monkeypatch.setattr(training, "autocast_precision", lambda amp, device: "fp16" if amp else "fp32")
    scaled = []
    real_scale = torch.amp.GradScaler.scale
    monkeypatch.setattr(torch.amp.GradScaler, "scale", lambda self, v: scaled.append(float(self.get_scale())) or real_scale(self, v))
    cell, history = _train(tmp_path, 4, epochs=1, amp=True, grad_clip=1.0)
    assert cell.provenance.train_precisions == ["fp16"]
    assert scaled and scaled[0] == 65536.0  # the loss was scaled before every backward
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in history)
    state = torch.load(cell.checkpoint_path, weights_only=True)
    assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]
    (tmp_path / "fp32").mkdir()
    cell_fp32, _ = _train(tmp_path / "fp32", 4, epochs=1, amp=False)
    assert cell_fp32.provenance.train_precisions == ["fp32"]
    assert "scaler" not in torch.load(cell_fp32.checkpoint_path, weights_only=True)  # no scaler outside fp16


def test_image_folder_batches_bound_for_a_gpu_are_pinned():
    from lcdense_tasks.classification import loader_options

    cfg = {"data": {"workers": 3}}
    assert loader_options(cfg, torch.device("cuda", 1)) == {"num_workers": 3, "pin_memory": True}
    assert loader_options(cfg, torch.device("cpu"))["pin_memory"] is False
