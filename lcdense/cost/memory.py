"""Tensor memory, counted the same way for a real run and for its prediction.

:class:`LiveTensorBytes` watches every tensor storage that PyTorch operators create while it is
active and keeps the running total of those still alive, and its peak: the CPU counterpart of
``torch.cuda.max_memory_allocated`` (tensor bytes, no allocator slack, no library workspaces).
It works on real tensors and on fake ones alike, so :mod:`lcdense.cost.estimate` predicts with it
and :class:`PeakMemory` measures with it.

>>> import torch
>>> with LiveTensorBytes() as live:
...     a = torch.ones(256)           # 1 KiB
...     b = a * 2                     # 1 KiB more
...     del a
>>> live.peak, live.live
(2048, 1024)
"""
from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..base.errors import LcdenseError


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and aliases counted once).

    >>> import torch
    >>> t = torch.zeros(10)
    >>> storage_bytes([t, t[:5], torch.zeros(2, dtype=torch.float64)])
    56
    """
    seen: dict[int, int] = {}
    keep = []
    for t in tensors:
        storage = t.untyped_storage()
        keep.append(storage)  # ids stay unique while the storages are held
        seen[id(storage)] = storage.nbytes()
    return sum(seen.values())


class LiveTensorBytes(TorchDispatchMode):
    """Live and peak bytes of the tensor storages created by operators inside the block.

    ``held``: tensors already alive at the start (e.g. the model's state); they count as live
    until they are freed. Storages that existed before the block are not counted when an
    operator returns them (in-place ops, views); a storage is released when its last tensor goes.
    """

    def __init__(self, held: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self._live = self.peak = 0
        self._tracked: dict[int, weakref.ref] = {}  # id(storage) -> a weak reference to it
        self._sizes: dict[int, tuple[int, int]] = {}  # id(weak reference) -> (id(storage), bytes)
        self._dead: list[weakref.ref] = []  # references whose storage died, not yet subtracted
        for t in held:
            self._track(t.untyped_storage())
        self.peak = self._live

    @property
    def live(self) -> int:
        """Bytes of the counted storages alive now."""
        self._release_dead()
        return self._live

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)  # unique while the storage lives; its entry goes when it dies
        if key in self._tracked:
            return
        nbytes = storage.nbytes()
        self._live += nbytes
        # The callback is a C method, not Python code: a signal (Ctrl-C, SIGTERM) handled inside a
        # weakref callback would raise there and be swallowed as "Exception ignored".
        ref = weakref.ref(storage, self._dead.append)
        self._tracked[key] = ref
        self._sizes[id(ref)] = (key, nbytes)

    def _track_new(self, t: torch.Tensor, existed: Callable[[torch.UntypedStorage], bool] | None = None) -> None:
        """Count ``t``'s storage, unless it is counted already or ``existed`` says it is an input's."""
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        if id(storage) not in self._tracked and not (existed and existed(storage)):
            self._track(storage)

    def _release_dead(self) -> None:
        """Subtract the storages that died since the last call (before an id can be reused)."""
        while self._dead:
            key, nbytes = self._sizes.pop(id(self._dead.pop()))
            self._live -= nbytes
            del self._tracked[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        if self._dead:
            self._release_dead()
        # a return the schema marks as new needs no search of the inputs: it cannot be one of
        # theirs; an aliasing one (a view, an in-place or out= op) is counted only if it is not
        fresh = _fresh_returns(func)
        values = out if fresh is not None and len(fresh) > 1 else (out,)
        for value, new in zip(values, fresh or (False,)):
            for t in ([value] if type(value) is torch.Tensor else _tensors(value)):
                self._track_new(t, None if new else lambda storage: _is_input_storage(storage, args, kwargs))
        if self._live > self.peak:
            self.peak = self._live
        return out


@functools.cache
def _fresh_returns(func: Any) -> tuple[bool, ...] | None:
    """For each of an operator's returns, whether it is a new tensor (the schema gives it no alias
    of an input); None for an operator without a schema.

    >>> import torch
    >>> aten = torch.ops.aten
    >>> _fresh_returns(aten.mul.Tensor), _fresh_returns(aten.mul_.Tensor), _fresh_returns(aten.max.dim)
    ((True,), (False,), (True, True))
    """
    schema = getattr(func, "_schema", None)
    return None if schema is None else tuple(r.alias_info is None for r in schema.returns)


def _tensors(value: object) -> list[torch.Tensor]:
    """The strided tensors in an operator's output or arguments: a tensor, or tensors nested in
    tuples, lists and dicts (what aten operators take and return; walked without pytree's cost).

    >>> import torch
    >>> a, b = torch.zeros(1), torch.ones(1)
    >>> [t.item() for t in _tensors((a, [b, 2], {"out": a}))]
    [0.0, 1.0, 0.0]
    """
    if isinstance(value, torch.Tensor):
        return [value] if value.layout == torch.strided else []
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            if item.layout == torch.strided:
                found.append(item)
        elif isinstance(item, (tuple, list)):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
    return found


def _is_input_storage(storage: torch.UntypedStorage, args: tuple, kwargs: dict | None) -> bool:
    """Whether an output storage is one of the inputs' (in-place op or view of an input)."""
    for t in _tensors(args) + (_tensors(kwargs) if kwargs else []):
        try:
            if t.untyped_storage() is storage:
                return True
        except (RuntimeError, NotImplementedError):
            pass
    return False


class PeakMemory:
    """Peak tensor memory of a block, in MiB, including the ``held`` tensors alive at its start.

    CUDA: ``torch.cuda.max_memory_allocated`` (which includes everything allocated before).
    CPU: the model's state at the start plus the peak of the storages created inside the block
    (:class:`LiveTensorBytes`), the same quantity :func:`lcdense.cost.estimate.estimate` predicts.
    """

    def __init__(self, device: torch.device, held: Iterable[torch.Tensor] = ()) -> None:
        self.device, self.peak_mb, self._held = device, 0.0, list(held)
        self._live: LiveTensorBytes | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._live = LiveTensorBytes(self._held).__enter__()
            self._held = []
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._live is not None:
            self._live.__exit__(*exc)
            self.peak_mb = self._live.peak / 2**20

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device.type == "cuda" else "cpu_tensor_peak"


def available_memory(device: torch.device) -> tuple[int, str]:
    """Bytes this process can still allocate on ``device``, and where the number comes from.

    CUDA: the device's free memory (``torch.cuda.mem_get_info``: other processes and this one's
    tensors take their share) plus what this process's caching allocator holds but no tensor uses
    (it is reused before anything new is asked of the driver). CPU: the least of the free memory
    (``MemAvailable``), the address-space limit (``ulimit -v``) less what is mapped, and a cgroup
    limit less its usage.

    Args:
        device: Where the cell will run.

    Returns:
        (bytes, the source of the number, for messages).
    """
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        cached = max(0, torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
        name = torch.cuda.get_device_name(device)
        return int(free + cached), f"free memory of {name} ({format_bytes(free + cached)} of {format_bytes(total)})"
    limits: list[tuple[int, str]] = []
    meminfo = _read_kv("/proc/meminfo")
    if "MemAvailable" in meminfo:
        limits.append((meminfo["MemAvailable"] * 1024, "free memory (MemAvailable)"))
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            mapped = _read_kv("/proc/self/status").get("VmSize", 0) * 1024
            limits.append((max(0, soft - mapped), "address-space limit (ulimit -v) less what is mapped"))
    except (ImportError, OSError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = open(limit_file).read().strip(), open(usage_file).read().strip()
        except OSError:
            continue
        if limit.isdigit() and int(limit) < 2**60:
            limits.append((max(0, int(limit) - int(usage)), "cgroup memory limit less its usage"))
        break
    if not limits:
        return 2**63, "unknown (no limit found)"
    return min(limits)


def _read_kv(path: str) -> dict[str, int]:
    """``Key: 123 kB`` lines of a /proc file as {key: number} (empty if unreadable)."""
    out: dict[str, int] = {}
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            key, _, rest = line.partition(":")
            fields = rest.split()
            if fields and fields[0].isdigit():
                out[key] = int(fields[0])
    return out


UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
         "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_bytes(text: str | int | float) -> int:
    """``80GiB``, ``40 GB``, ``6G``, ``512MiB`` or a number of bytes → bytes.

    >>> parse_bytes("80GiB"), parse_bytes("6GB"), parse_bytes(1024)
    (85899345920, 6000000000, 1024)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return int(text)
    raw = str(text).strip().lower().replace(" ", "")
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in UNITS or value <= 0:
        raise LcdenseError(f"cannot read the memory size '{text}'; write it like 80GiB, 40GB or 512MiB")
    return int(value * UNITS[unit])


def format_bytes(n: int | float) -> str:
    """Bytes in binary units, e.g. ``5.25 GiB``.

    >>> format_bytes(5.25 * 2**30), format_bytes(3 * 2**20)
    ('5.25 GiB', '3.0 MiB')
    """
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**10:.1f} KiB"


__all__ = ["LiveTensorBytes", "PeakMemory", "available_memory", "parse_bytes", "format_bytes", "storage_bytes"]
