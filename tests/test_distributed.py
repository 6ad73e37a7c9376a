"""The rank's device, the process group's life cycle and SyncBatchNorm, as the GPU and cluster
paths take them, proven on the CPU (CUDA calls mocked where a GPU would answer)."""
from __future__ import annotations

from importlib.util import find_spec
from typing import Any
from unittest import mock

import pytest
import torch
import torch.distributed as dist

from lcdense import LcdenseError
from lcdense.engine import distributed
from lcdense.engine.distributed import (
    World,
    convert_sync_batchnorm,
    join,
    leave,
    rank_device,
)

TORCHRUN_ENV = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}


@pytest.mark.parametrize(("local_rank", "visible", "expected"), [
    (1, 1, 0),  # a site that binds one GPU per task: LOCAL_RANK 1 sees only cuda:0
    (3, 1, 0),
    (0, 4, 0),  # every rank sees the machine's GPUs: cuda:LOCAL_RANK
    (3, 4, 3),
])
def test_a_rank_trains_on_the_gpu_it_can_see(local_rank, visible, expected):
    with mock.patch("torch.cuda.device_count", return_value=visible):
        assert rank_device(local_rank) == torch.device("cuda", expected)


@pytest.mark.parametrize(("local_rank", "visible"), [(2, 2), (1, 0)])
def test_a_rank_without_its_gpu_is_one_line(local_rank, visible, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1" if visible else "")
    with mock.patch("torch.cuda.device_count", return_value=visible), pytest.raises(LcdenseError) as error:
        rank_device(local_rank)
    assert str(error.value).startswith(f"rank with LOCAL_RANK {local_rank} sees {visible} GPU(s) (CUDA_VISIBLE_DEVICES=")


def test_a_torchrun_rank_on_a_one_gpu_site_sets_and_joins_with_cuda0(monkeypatch):
    for key, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(key, value)
    with mock.patch("torch.cuda.device_count", return_value=1), mock.patch("torch.cuda.set_device") as set_device, \
            mock.patch.object(dist, "is_initialized", return_value=False), \
            mock.patch.object(dist, "init_process_group") as init:
        world, device = join(torch.device("cuda"))
    assert (world.rank, world.size, world.local_rank, device) == (1, 2, 1, torch.device("cuda", 0))
    set_device.assert_called_once_with(torch.device("cuda", 0))
    init.assert_called_once_with("nccl", timeout=distributed.GROUP_TIMEOUT)
    assert distributed.GROUP_TIMEOUT.total_seconds() > 10 * 60  # beyond NCCL's default, for rank 0's data preparation


@pytest.mark.parametrize(("name", "expected"), [("cuda:1", [torch.device("cuda", 1)]), ("cuda", []), ("cpu", [])])
def test_a_single_process_makes_its_gpu_the_current_device(name, expected, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with mock.patch("torch.cuda.set_device") as set_device:
        world, device = join(torch.device(name))
    assert (world, device) == (World(), torch.device(name))
    assert [c.args[0] for c in set_device.call_args_list] == expected


def _gloo_world_of_one() -> tuple[World, torch.device]:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    return World(), torch.device("cpu")


@pytest.mark.parametrize("fails", [False, True])
def test_a_run_destroys_its_process_group(toy_installed, tmp_path, monkeypatch, fails):
    """The API joins a (here: real, one-rank gloo) group and destroys it at the end, also when the run fails."""
    import lcdense
    from lcdense.api import benchmark

    monkeypatch.setattr(benchmark, "setup_world", lambda config: _gloo_world_of_one())
    joined, execute = [], benchmark.execute

    def execute_in_the_group(*args: Any, **kwargs: Any) -> Any:
        joined.append(dist.is_initialized())
        if fails:
            raise LcdenseError("boom")
        return execute(*args, **kwargs)

    monkeypatch.setattr(benchmark, "execute", execute_in_the_group)
    settings = {"variants": ["learnable"], "seeds": [0], "device": "cpu", "out": str(tmp_path), "quiet": True,
                "analysis": False, "epochs": 1}
    if fails:
        with pytest.raises(LcdenseError, match="boom"):
            lcdense.run("toy", **settings)
    else:
        assert [r.status for r in lcdense.run("toy", **settings).cells] == ["done"]
    assert joined == [True]
    assert not dist.is_initialized()
    leave()  # nothing left to destroy: no error


@pytest.mark.skipif(find_spec("timm") is None, reason='needs timm: pip install "lcdense[timm]"')
@pytest.mark.parametrize("name", ["timm", "smp-tu"])
def test_sync_batchnorm_keeps_timm_norm_act_layers(name):
    """torch's converter turns timm's BatchNormAct2d into a plain SyncBatchNorm, dropping its
    activation; lcdense's keeps the model's function (SyncBatchNorm in eval needs no group)."""
    import timm
    from timm.layers import BatchNormAct2d

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        if name == "timm":
            return timm.create_model("test_efficientnet", num_classes=3)
        smp = pytest.importorskip("segmentation_models_pytorch")
        return smp.Unet("tu-test_efficientnet", encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 4),
                        classes=1)

    model = build().eval()
    assert any(isinstance(m, BatchNormAct2d) for m in model.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        synced = convert_sync_batchnorm(build()).eval()
        assert not any(type(m) is torch.nn.BatchNorm2d or type(m) is BatchNormAct2d for m in synced.modules())
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
        assert torch.equal(synced(x), expected)
        plain = torch.nn.SyncBatchNorm.convert_sync_batchnorm(build()).eval()
        assert (plain(x) - expected).abs().max() > 1e-2  # what torch's converter alone did: activations gone


def test_sync_batchnorm_of_a_torch_model_is_torchs():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    synced = convert_sync_batchnorm(model).eval()
    assert isinstance(synced[1], torch.nn.SyncBatchNorm)
    assert torch.equal(synced(x), expected)


def test_every_rank_prepares_its_data_before_joining_the_group(toy_installed, tmp_path, monkeypatch):
    """No rank waits in a collective (NCCL's 10-minute timeout) while another prepares or scans the
    data, and a framework that synchronises ranks when imported (ultralytics) meets no group yet."""
    import lcdense
    from lcdense.api import benchmark

    order: list[str] = []
    prepare, setup = benchmark.prepare_data, benchmark.setup_world
    monkeypatch.setattr(benchmark, "prepare_data", lambda *a: (order.append("prepare"), prepare(*a))[1])
    monkeypatch.setattr(benchmark, "setup_world", lambda config: (order.append("join"), setup(config))[1])
    lcdense.run("toy", variants=["learnable"], seeds=[0], device="cpu", out=str(tmp_path), quiet=True,
                analysis=False, epochs=1)
    assert order == ["prepare", "join"]
    assert (tmp_path / ".cache" / ".prepare.lock").is_file()  # one process at a time prepares the cache
