"""Benchmark LC-Block implementations: training-step time and memory against the baseline, side by side.

Every configuration (the unmodified baseline; for each E and spatial bank the default ``auto``
form, the literal two-conv ``naive`` form up to ``naive_max_E``, and the ``preconditioned``
form for frozen banks; plus eval-mode inference of the baseline and of a folded LC model) is
built once, then the configurations are timed round-robin, ``rounds`` times, in one process.
Times (wall clock, and process CPU time, which a busy machine disturbs less) are reported as
medians with min–max, and as ratios to the baseline *of the same round*. Beside them: the
optimizer update's time within the step, the step's MACs ×base, and two predicted ratios (the
extra MACs at the baseline's time per MAC; and that plus the measured growth of the update).

Memory, on CPU: model state (parameters, buffers, gradients, optimizer state) plus the
activations saved for backward (distinct storages outside the model state, counted with
``torch.autograd.graph.saved_tensors_hooks``; deterministic, transients not included).
On CUDA: the model's resident state plus the step's peak allocation above what was allocated
before it (``torch.cuda.max_memory_allocated``). Storages are counted with
:func:`lcdense.cost.memory.storage_bytes`.

:func:`bench` is the Python entrance; ``lcdense bench`` (:mod:`lcdense.commands.bench`) calls it.
"""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..base.errors import LcdenseError, unknown_name
from ..base.files import write_json
from ..core.accounting import step_macs
from ..core.convert import convert
from ..core.fold import fold
from ..core.models import cifar_resnet, create_model
from ..core.precondition import check_preconditioned_optimizer
from .memory import storage_bytes

CIFAR_MODEL = "cifar_resnet20_16"
MEMORY_MEANING = {
    "cpu": "model state (parameters, buffers, gradients, optimizer state) + activations saved for "
           "backward (distinct storages outside the model state); transients not included",
    "cuda": "model state at rest (parameters, buffers, optimizer state) + the training step's peak "
            "allocation above the memory allocated before it (torch.cuda.max_memory_allocated)",
}


# --- configurations --------------------------------------------------------------------------

@dataclass
class Config:
    """One benchmarked configuration and its measurements."""

    name: str
    kind: str  # "train" | "infer"
    E: int | None = None
    spatial: str = "learnable"
    impl: str = "conv"
    layers: str = ""  # how many layers use each implementation
    run: Callable[[], float | None] | None = field(default=None, repr=False)  # a training step returns its update's seconds
    measure_memory: Callable[[], tuple[int, int]] | None = field(default=None, repr=False)
    macs: int = 0  # training-step MACs per sample (lcdense.core.accounting.step_macs)
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    update_times: list[float] = field(default_factory=list)  # per step: the optimizer update's share of times
    state_bytes: int = 0
    activation_bytes: int = 0
    status: str = "ok"

    @property
    def memory_bytes(self) -> int:
        return self.state_bytes + self.activation_bytes


def _state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, with_grads: bool) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    if with_grads:
        tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return storage_bytes(tensors)


class _Trainer:
    """One model, its optimizer and a fixed batch: ``step()`` is one SGD training step and returns
    the wall time of its optimizer update (element-wise work over the trainable state, which MACs
    do not count)."""

    def __init__(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], amp: str) -> None:
        self.model, (self.x, self.y) = model, batch
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                         fused=True)
        check_preconditioned_optimizer(self.optimizer, model)
        self.autocast = torch.autocast(self.x.device.type, dtype=torch.bfloat16, enabled=amp == "bf16")

    def step(self) -> float:
        with self.autocast:
            loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        device = self.x.device.type
        _sync(device)
        start = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - start

    def measure_memory(self) -> tuple[int, int]:
        """One step; returns (state bytes, activation bytes) as defined in :data:`MEMORY_MEANING`."""
        if self.x.device.type == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            self.step()
            torch.cuda.synchronize()
            return _state_bytes(self.model, self.optimizer, False), torch.cuda.max_memory_allocated() - before
        own = [*self.model.parameters(), *self.model.buffers()]
        saved: list[torch.Tensor] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            saved.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), self.autocast:
            loss = F.cross_entropy(self.model(self.x), self.y)
        activations = storage_bytes([*own, *saved]) - storage_bytes(own)  # the storages outside the model state
        saved.clear()
        loss.backward()
        self.optimizer.step()
        state = _state_bytes(self.model, self.optimizer, True)
        self.optimizer.zero_grad(set_to_none=True)
        return state, activations


def _build(opts: _Options) -> nn.Module:
    torch.manual_seed(0)
    if opts.model == CIFAR_MODEL:
        return cifar_resnet(20, 16, num_classes=opts.num_classes)
    return create_model(opts.model, num_classes=opts.num_classes)


def _prepare(model: nn.Module, opts: _Options) -> nn.Module:
    model = model.to(opts.device)
    if opts.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if opts.compile else model


def _lc_model(opts: _Options, E: int, spatial: str, impl: str) -> tuple[nn.Module, str]:
    model = _build(opts)
    report = convert(model, "lc", E=E, spatial=spatial, impl=impl, input_size=(3, opts.image_size, opts.image_size),
                     batch_size=opts.batch_size)
    chosen = Counter(r.impl for r in report.layers if r.action == "lc")
    return report.model, " ".join(f"{k}:{v}" for k, v in sorted(chosen.items()))


def _configs(opts: _Options, batch: tuple[torch.Tensor, torch.Tensor]) -> list[Config]:
    configs = [Config("baseline", "train", impl="conv")]
    models: dict[str, tuple[nn.Module, str]] = {"baseline": (_build(opts), "")}
    for E in opts.E:
        for spatial in ("frozen", "learnable"):
            impls = ["auto", *(["naive"] if E <= opts.naive_max_E else [])]
            impls += ["preconditioned"] if spatial == "frozen" else []
            for impl in impls:
                name = f"lc-{spatial}@{E} {impl}"
                models[name] = _lc_model(opts, E, spatial, impl)
                configs.append(Config(name, "train", E, spatial, impl, models[name][1]))
    for cfg in configs:
        cfg.macs = step_macs(models[cfg.name][0], (3, opts.image_size, opts.image_size), opts.batch_size)
        trainer = _Trainer(_prepare(models[cfg.name][0], opts), batch, opts.amp)
        cfg.run, cfg.measure_memory = trainer.step, trainer.measure_memory
    top = max(opts.E)
    folded = fold(_lc_model(opts, top, "learnable", "auto")[0], inplace=True)
    for name, model in (("baseline", _build(opts)), (f"folded lc-learnable@{top}", folded)):
        model = _prepare(model, opts).eval()
        configs.append(Config(f"infer {name}", "infer", top if name != "baseline" else None,
                              impl="conv", run=_inference(model, batch[0])))
    return configs


GEMM_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm")


def conv_share(step: Callable[[], object], device: str) -> float:
    """Share of a training step's operator time spent in convolutions and matrix products (the
    work that MACs count), from one profiled ``step``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with _native_stderr_muted(), profile(activities=activities) as prof:
        step()
        _sync(device)
    attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    total = sum(getattr(e, attr) for e in events)
    macs = sum(getattr(e, attr) for e in events if "conv" in e.key or e.key in GEMM_OPS)
    return macs / total if total else 1.0


@contextlib.contextmanager
def _native_stderr_muted() -> Iterator[None]:
    """Silence file descriptor 2 inside the block: the profiler's C++ side prints its own start and
    stop lines (and, on a machine without a GPU, an "ERROR" about the device count) there."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks of up to 32 MiB in its heap and never trim it, so a
    training step reuses the pages of the previous one instead of faulting in fresh ones (the
    baseline and every LC form alike). Returns False where this is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def _inference(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            model(x)
    return run


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _measure(configs: list[Config], opts: _Options) -> float | None:
    """Warm up and measure memory, profile the baseline once, then time round-robin; returns the
    baseline's share of operator time in convolutions and matrix products (:func:`conv_share`)."""
    for cfg in configs:  # warm-up step (allocates optimizer state); memory on training configs
        try:
            if cfg.kind == "train":
                cfg.state_bytes, cfg.activation_bytes = cfg.measure_memory()
            else:
                cfg.run()
        except torch.OutOfMemoryError:
            cfg.status = "out of memory"
            _empty_cache(opts.device)
        _sync(opts.device)
    live = [c for c in configs if c.status == "ok"]
    share = conv_share(configs[0].run, opts.device) if configs[0].status == "ok" else None
    for round_index in range(opts.rounds):
        shift = round_index % len(live)
        for cfg in live[shift:] + live[:shift]:
            start, cpu_start = time.perf_counter(), time.process_time()
            updates = [cfg.run() for _ in range(opts.steps)]
            _sync(opts.device)
            cfg.times.append((time.perf_counter() - start) / opts.steps)
            cfg.cpu_times.append((time.process_time() - cpu_start) / opts.steps)
            if cfg.kind == "train":
                cfg.update_times.append(sum(updates) / opts.steps)
    return share


def _empty_cache(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _results(configs: list[Config], share: float | None) -> list[dict]:
    base = {kind: next(c for c in configs if c.kind == kind) for kind in ("train", "infer")}
    rows = []
    for cfg in configs:
        ref = base[cfg.kind]
        row = {"name": cfg.name, "kind": cfg.kind, "E": cfg.E, "spatial": cfg.spatial, "impl": cfg.impl,
               "layers": cfg.layers, "status": cfg.status}
        if cfg.status == "ok" and ref.status == "ok":
            row["step_s"] = _spread(cfg.times)
            row["step_ratio"] = _spread([t / b for t, b in zip(cfg.times, ref.times)])
            row["cpu_s"] = _spread(cfg.cpu_times)
            row["cpu_ratio"] = _spread([t / b for t, b in zip(cfg.cpu_times, ref.cpu_times)])
            if cfg.kind == "train":
                row["mac_ratio"] = cfg.macs / ref.macs
                row["update_s"] = _spread(cfg.update_times)
                row["times"], row["update_times"] = cfg.times, cfg.update_times  # per round, seconds per step
                if share is not None:
                    row.update(predicted_ratios(row["mac_ratio"], share, cfg.update_times, ref.update_times, ref.times))
                row["memory_bytes"] = {"state": cfg.state_bytes, "activations": cfg.activation_bytes,
                                       "total": cfg.memory_bytes}
                row["memory_ratio"] = cfg.memory_bytes / ref.memory_bytes
                row["activation_ratio"] = cfg.activation_bytes / ref.activation_bytes
        rows.append(row)
    return rows


def predicted_ratios(mac_ratio: float, share: float, updates: list[float], base_updates: list[float],
                     base_times: list[float]) -> dict[str, float]:
    """A training step's predicted time ×base: the extra MACs at the baseline's time per MAC, the
    baseline's other work unchanged (``predicted_macs_only_ratio``), and (``predicted_step_ratio``)
    plus the measured growth of the optimizer update, per round, against that round's baseline.

    >>> r = predicted_ratios(1.36, 0.7, [0.02, 0.02], [0.001, 0.001], [0.2, 0.2])
    >>> round(r["predicted_macs_only_ratio"], 3), round(r["predicted_step_ratio"], 3)
    (1.252, 1.347)
    """
    macs_only = 1 + (mac_ratio - 1) * share
    extra_update = statistics.median((u - b) / t for u, b, t in zip(updates, base_updates, base_times))
    return {"predicted_macs_only_ratio": macs_only, "predicted_step_ratio": macs_only + extra_update}


def format_table(rows: list[dict]) -> str:
    """The results as an aligned text table (ratios to the baseline of the same round)."""
    head = ("config", "layers", "step ms (min–max)", "step ×base (min–max)", "cpu-time ×base (min–max)",
            "update ms", "MACs ×base", "MAC-predicted ×base", "+update ×base", "state MiB", "memory MiB",
            "mem ×base", "act ×base")
    lines = [head]
    for r in rows:
        if r["status"] != "ok":
            lines.append((r["name"], r["layers"], r["status"], *[""] * (len(head) - 3)))
            continue
        t, q, c = r["step_s"], r["step_ratio"], r["cpu_ratio"]
        cells = [r["name"], r["layers"], f"{t['median'] * 1e3:.1f} ({t['min'] * 1e3:.1f}–{t['max'] * 1e3:.1f})",
                 f"{q['median']:.2f} ({q['min']:.2f}–{q['max']:.2f})",
                 f"{c['median']:.2f} ({c['min']:.2f}–{c['max']:.2f})"]
        if r["kind"] == "train":
            predicted = [r.get(k) for k in ("predicted_macs_only_ratio", "predicted_step_ratio")]
            cells += [f"{r['update_s']['median'] * 1e3:.1f}", f"{r['mac_ratio']:.2f}",
                      *(f"{p:.2f}" if p is not None else "" for p in predicted),
                      f"{r['memory_bytes']['state'] / 2**20:.0f}", f"{r['memory_bytes']['total'] / 2**20:.0f}",
                      f"{r['memory_ratio']:.2f}",
                      f"{r['activation_ratio']:.2f}"]
        else:
            cells += [""] * 8
        lines.append(tuple(cells))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


@dataclass(frozen=True)
class _Options:
    """The settings of one benchmark, defaults filled in (in the order the JSON file lists them)."""

    device: str
    model: str
    image_size: int
    batch_size: int
    E: list[int]
    naive_max_E: int
    rounds: int
    steps: int
    amp: str
    channels_last: bool
    compile: bool
    threads: int
    reuse_freed_memory: bool
    out: Path
    num_classes: int


@dataclass(frozen=True)
class BenchResult:
    """What :func:`bench` measured, as written to its JSON file.

    Attributes:
        header: One line: model, batch, input size, device, precision, layout, compilation,
            allocator setting, optimizer, rounds and steps, torch version, the load average at the end.
        memory_meaning: What the memory columns count on this device (:data:`MEMORY_MEANING`).
        settings: The arguments of the call with their defaults filled in, plus ``num_classes``
            and ``conv_share``.
        device: The device's name (CPU: processor and torch threads).
        seconds: Wall time of the benchmark.
        load_average: The machine's 1, 5 and 15 minute load averages at the end.
        conv_share: The baseline step's share of operator time in convolutions and matrix
            products (profiled once), or None where the baseline failed.
        rows: One dict per configuration, baseline first, with ``name``, ``kind`` (``"train"`` or
            ``"infer"``), ``E``, ``spatial``, ``impl``, ``layers`` (how many layers use each form)
            and ``status``. Rows that ran (``status == "ok"``) add the time per step ``step_s``
            and the process CPU time ``cpu_s`` (each a dict of median, min and max over rounds)
            and their ratios to the same round's baseline, ``step_ratio`` and ``cpu_ratio``.
            Training rows add ``mac_ratio``, ``update_s``, the per-round ``times`` and
            ``update_times``, ``memory_bytes`` (``state``, ``activations``, ``total``),
            ``memory_ratio``, ``activation_ratio`` and, when the baseline was profiled,
            ``predicted_macs_only_ratio`` and ``predicted_step_ratio`` (:func:`predicted_ratios`).
        out: The JSON file the result was written to.
    """

    header: str
    memory_meaning: str
    settings: dict[str, Any]
    device: str
    seconds: float
    load_average: tuple[float, float, float]
    conv_share: float | None
    rows: list[dict[str, Any]]
    out: Path

    def to_dict(self) -> dict[str, Any]:
        """The JSON file's content.

        Returns:
            ``header``, ``memory_meaning``, ``settings``, ``device``, ``torch`` (its version),
                ``seconds``, ``load_average`` and ``results`` (the rows).
        """
        return {"header": self.header, "memory_meaning": self.memory_meaning, "settings": self.settings,
                "device": self.device, "torch": torch.__version__, "seconds": self.seconds,
                "load_average": self.load_average, "results": self.rows}

    def summary(self) -> str:
        """The result as text: the header, what memory means, how predictions are made, the table.

        Returns:
            The lines ``lcdense bench`` prints, ending with the total time and the JSON file's path.
        """
        lines = [self.header, f"memory = {self.memory_meaning}"]
        if self.conv_share is not None:
            lines.append(f"MAC-predicted ×base = 1 + (MACs ×base - 1) × {self.conv_share:.2f}, the baseline step's "
                         "share of operator time in convolutions and matrix products (profiled once): extra MACs at "
                         "the baseline's time per MAC, its other work unchanged; +update ×base adds the measured "
                         "growth of the optimizer update (element-wise over the trainable state, which MACs do not "
                         "count)")
        lines += [format_table(self.rows), f"total {self.seconds:.0f} s; results: {self.out}"]
        return "\n".join(lines)


def _options(device: str, model: str | None, image_size: int | None, batch_size: int | None, E: Sequence[int],
             naive_max_E: int | None, rounds: int, steps: int, amp: str | None, channels_last: bool | None,
             compile: bool, threads: int, reuse_freed_memory: bool, out: str | Path | None) -> _Options:
    """Check the arguments of :func:`bench` and fill in the device's defaults."""
    if device not in MEMORY_MEANING:
        raise unknown_name("device", device, MEMORY_MEANING)
    if amp not in (None, "none", "bf16"):
        raise unknown_name("amp", str(amp), ("none", "bf16"))
    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise LcdenseError("device cuda but no CUDA GPU is visible to torch; run on a GPU machine or use device cpu")
    expansions = sorted(set(E))
    if not expansions or expansions[0] < 1:
        raise LcdenseError(f"E must be positive integers such as 1,8,32, got {list(E)}")
    model = model or ("timm:resnet18d" if cuda else CIFAR_MODEL)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    opts = _Options(
        device=device, model=model, image_size=image_size or (32 if model == CIFAR_MODEL else 224),
        batch_size=batch_size or (256 if cuda else 128), E=expansions,
        naive_max_E=naive_max_E if naive_max_E is not None else (1 if cuda else 8), rounds=rounds, steps=steps,
        amp=amp or ("bf16" if cuda else "none"), channels_last=cuda if channels_last is None else channels_last,
        compile=compile, threads=threads, reuse_freed_memory=reuse_freed_memory,
        out=Path(out) if out is not None else Path("runs/bench") / f"lc-{device}-{stamp}.json",
        num_classes=10 if model == CIFAR_MODEL else 1000)
    if opts.out.exists():
        raise LcdenseError(f"{opts.out} already exists; pass a new out path (results are never overwritten)")
    for name in ("rounds", "steps", "batch_size", "image_size", "threads"):
        if getattr(opts, name) < 1:
            raise LcdenseError(f"{name} must be >= 1, got {getattr(opts, name)}")
    return opts


def bench(*, device: str = "cpu", model: str | None = None, image_size: int | None = None,
          batch_size: int | None = None, E: Sequence[int] = (1, 8, 32, 128), naive_max_E: int | None = None,
          rounds: int = 4, steps: int = 1, amp: str | None = None, channels_last: bool | None = None,
          compile: bool = False, threads: int = 1, reuse_freed_memory: bool = True,
          out: str | Path | None = None) -> BenchResult:
    """Time and measure the memory of a training step of LC-Block forms against the baseline.

    The configurations are the baseline; for each E and spatial bank (frozen, learnable) the
    ``auto`` form, the ``naive`` two-conv form (up to ``naive_max_E``) and, for frozen banks, the
    ``preconditioned`` form; and eval-mode inference of the baseline and of the folded learnable
    LC model at the largest E. Each is built once and timed round-robin in this process. On CPU
    this sets torch's flush-denormal mode and, with ``reuse_freed_memory``, glibc's malloc
    thresholds for the rest of the process; torch's thread count is restored at the end.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        model: ``"cifar_resnet20_16"`` or a torchvision/timm name (``"timm:resnet18d"``); default
            the CIFAR ResNet on CPU, ``"timm:resnet18d"`` on CUDA.
        image_size: Input side in pixels; default 32 for the CIFAR ResNet, else 224.
        batch_size: Default 128 on CPU, 256 on CUDA.
        E: The expansions to benchmark (sorted, duplicates dropped).
        naive_max_E: The largest E whose ``naive`` form is timed (its cost grows with E);
            default 8 on CPU, 1 on CUDA.
        rounds: Round-robin rounds; times are medians over rounds.
        steps: Steps per configuration per round.
        amp: ``"none"`` or ``"bf16"`` autocast; default ``"none"`` on CPU, ``"bf16"`` on CUDA.
        channels_last: channels_last memory format; default on for CUDA.
        compile: ``torch.compile`` every model.
        threads: torch's CPU threads on ``device="cpu"`` (one gives the steadiest ratios on a shared machine).
        reuse_freed_memory: CPU: let glibc keep freed memory for reuse, as the CUDA caching
            allocator does (off: every step page-faults its fresh buffers anew).
        out: The JSON result file; default ``runs/bench/lc-DEVICE-TIMESTAMP.json``. Never overwritten.

    Returns:
        The measurements (:class:`BenchResult`), also written to ``out``.

    Raises:
        LcdenseError: ``out`` exists, an argument is out of range, or ``device="cuda"`` without a GPU.
    """
    opts = _options(device, model, image_size, batch_size, E, naive_max_E, rounds, steps, amp, channels_last,
                    compile, threads, reuse_freed_memory, out)
    threads_before = torch.get_num_threads()
    try:
        return _bench(opts)
    finally:
        torch.set_num_threads(threads_before)


def _bench(opts: _Options) -> BenchResult:
    reuse = opts.reuse_freed_memory
    if opts.device == "cpu":
        torch.set_flush_denormal(True)
        torch.set_num_threads(opts.threads)
        reuse = reuse and keep_freed_memory()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(opts.batch_size, 3, opts.image_size, opts.image_size, generator=gen)
    y = torch.randint(0, opts.num_classes, (opts.batch_size,), generator=gen)
    x, y = x.to(opts.device), y.to(opts.device)
    if opts.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    started = time.perf_counter()
    configs = _configs(opts, (x, y))
    share = _measure(configs, opts)
    rows = _results(configs, share)
    settings = {**asdict(opts), "reuse_freed_memory": reuse, "out": str(opts.out), "conv_share": share}
    device = (torch.cuda.get_device_name() if opts.device == "cuda"
              else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads")
    load = os.getloadavg()
    header = (f"{opts.model}, batch {opts.batch_size}, {opts.image_size} px, {opts.device} ({device}), amp {opts.amp}, "
              f"channels_last {opts.channels_last}, compile {opts.compile}, reuse freed memory "
              f"{reuse if opts.device == 'cpu' else 'n/a'}; fused SGD (momentum 0.9, Nesterov, wd 5e-4); "
              f"{opts.rounds} interleaved rounds × {opts.steps} step(s); torch {torch.__version__}"
              f"; load average {load[0]:.1f} at the end")
    result = BenchResult(header=header, memory_meaning=MEMORY_MEANING[opts.device], settings=settings, device=device,
                         seconds=time.perf_counter() - started, load_average=load, conv_share=share, rows=rows,
                         out=opts.out)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(opts.out, result.to_dict())
    return result


__all__ = ["BenchResult", "MEMORY_MEANING", "bench", "format_table", "predicted_ratios"]
