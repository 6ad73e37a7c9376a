"""Data-parallel training of one cell with torch.distributed (DDP), launched by ``torchrun``.

lcdense never starts worker processes itself. ``lcdense run --ddp 4`` (or ``--device 0,1,2,3``)
creates the run directory and trains it under ``torchrun --standalone --nproc_per_node 4``
(``lcdense run --resume RUN_DIR`` on every rank); a Slurm job started
through submitit provides the same environment. Every rank builds the cell's model from the same
init seed (so the frozen filters are identical without a broadcast, and their digests are compared
across ranks), trains on its shard of each global batch, and DDP averages the gradients. Only
rank 0 writes files.

>>> world = World()                 # not under torchrun: a single process
>>> world.size, world.rank, world.is_main
(1, 0, True)
>>> World(rank=1, size=2).shard(torch.arange(5)).tolist()
[3, 4]
"""
from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..base.errors import LcdenseError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks training one cell (rank 0 of 1 without torchrun).

    Attributes:
        rank: This process's global rank.
        size: The number of ranks.
        local_rank: This process's rank on its machine (its GPU index).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def shard(self, items: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of ``items`` (e.g. the indices of one global batch)."""
        return items.tensor_split(self.size)[self.rank] if self.active else items

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def gather(self, obj: T) -> list[T]:
        """``obj`` from every rank, in rank order."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks."""
        return sum(self.gather(float(value))) / self.size if self.active else float(value)

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and hand its result (or its :class:`LcdenseError`) to every rank."""
        if not self.active:
            return fn()
        payload: list[Any] = [None]
        if self.is_main:
            try:
                payload[0] = ("ok", fn())
            except LcdenseError as exc:
                payload[0] = ("error", str(exc))
        dist.broadcast_object_list(payload, src=0)
        status, value = payload[0]
        if status == "error":
            raise LcdenseError(value)
        return value

    def data_parallel(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in DistributedDataParallel (or itself in a one-process world).

        Buffers are not re-broadcast every forward: frozen banks are identical on every rank by
        construction (and large), and normalisation statistics are averaged once per epoch by
        :meth:`average_running_stats`.
        """
        if not self.active:
            return model
        kwargs: dict[str, Any] = {"device_ids": [device.index] if device.type == "cuda" else None}
        params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
        kwargs["forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"] = False
        return nn.parallel.DistributedDataParallel(model, **kwargs)

    def average_running_stats(self, model: nn.Module) -> None:
        """Average the running mean/variance of every normalisation layer over the ranks (in place)."""
        if not self.active:
            return
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                for stat in (module.running_mean, module.running_var):
                    if stat is not None:
                        dist.all_reduce(stat, op=dist.ReduceOp.SUM)
                        stat.div_(self.size)


def visible_gpus() -> int:
    """How many CUDA GPUs torch sees (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (or any launcher that sets ``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


#: How long a rank may wait in one collective before the group gives up (NCCL's default: 10 minutes).
#: The longest wait in a run is data preparation: rank 0 prepares first (it may generate the embedded
#: dataset, or convert or scan a large one on a network file system) while the others wait for it,
#: then they read it while rank 0 waits for them at the first comparison of frozen digests. Scanning
#: ImageNet-sized folders can outlast 10 minutes, so the group gets ultralytics' limit for its own DDP
#: group. A rank that fails does not hold the others that long: torchrun stops every rank at once.
GROUP_TIMEOUT = timedelta(hours=3)


def rank_device(local_rank: int) -> torch.device:
    """The GPU a torchrun rank trains on: ``cuda:LOCAL_RANK`` where each rank sees every GPU of its
    machine; ``cuda:0`` where the site binds one GPU per task (``CUDA_VISIBLE_DEVICES`` of one
    device, so the rank with ``LOCAL_RANK`` 1 sees only ``cuda:0``).

    >>> from unittest import mock
    >>> with mock.patch("torch.cuda.device_count", return_value=1):
    ...     rank_device(3)
    device(type='cuda', index=0)

    Args:
        local_rank: The rank's ``LOCAL_RANK``.

    Returns:
        The CUDA device this rank can see and should use.

    Raises:
        LcdenseError: The rank sees no GPU, or several but fewer than ``local_rank + 1``.
    """
    visible = torch.cuda.device_count()
    if visible == 1:
        return torch.device("cuda", 0)
    if 0 <= local_rank < visible:
        return torch.device("cuda", local_rank)
    raise LcdenseError(f"rank with LOCAL_RANK {local_rank} sees {visible} GPU(s) "
                       f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); give each rank "
                       "one GPU, or let every rank see all of its machine's GPUs")


def join(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group of a torchrun launch (NCCL on CUDA, gloo on CPU; timeout
    :data:`GROUP_TIMEOUT`) and pick this rank's device (:func:`rank_device`); without torchrun, a
    one-process world and ``device``, made the current CUDA device when it names one (``cuda:1``).
    Leave the group with :func:`leave`."""
    if not launched_by_torchrun():
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # indexless CUDA work (and libraries) then lands on it
        return World(), device
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = rank_device(world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=GROUP_TIMEOUT)
    return world, device


def leave() -> None:
    """Destroy the process group :func:`join` joined (nothing without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm synchronised across the ranks. A model with timm modules is
    converted by timm's converter, which keeps the activation of timm's norm+act layers
    (``BatchNormAct2d`` → ``SyncBatchNormAct``); torch's would turn them into plain
    ``SyncBatchNorm`` and drop the activation.

    Args:
        model: The model (converted where it stands; the converted model is returned).

    Returns:
        The model with synchronised batch normalisation.
    """
    if any(type(m).__module__.split(".")[0] == "timm" for m in model.modules()):
        from timm.layers import convert_sync_batchnorm as timm_convert

        return timm_convert(model)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The command that runs ``lcdense ARGV`` as ``nproc`` ranks on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "lcdense", *argv]


__all__ = ["GROUP_TIMEOUT", "World", "convert_sync_batchnorm", "join", "launched_by_torchrun", "leave", "rank_device",
           "torchrun_command", "visible_gpus"]
