"""Benchmark LC-Block implementations: training-step time and memory against the baseline, side by side.

Every configuration (the unmodified baseline; for each E and spatial bank the default ``auto``
form, the literal two-conv ``naive`` form up to ``--naive-max-E``, and the ``preconditioned``
form for frozen banks; plus eval-mode inference of the baseline and of a folded LC model) is
built once, then the configurations are timed round-robin, ``--rounds`` times, in one process.
Times (wall clock, and process CPU time, which a busy machine disturbs less) are reported as
medians with min–max, and as ratios to the baseline *of the same round*. Beside them: the
optimizer update's time within the step, the step's MACs ×base, and two predicted ratios (the
extra MACs at the baseline's time per MAC; and that plus the measured growth of the update).

Memory, on CPU: model state (parameters, buffers, gradients, optimizer state) plus the
activations saved for backward (distinct storages outside the model state, counted with
``torch.autograd.graph.saved_tensors_hooks``; deterministic, transients not included).
On CUDA: the model's resident state plus the step's peak allocation above what was allocated
before it (``torch.cuda.max_memory_allocated``).

Example (CPU, CIFAR ResNet-20-16, batch 128; a few minutes on 2 cores)::

    lcdense bench
    lcdense bench --device cuda        # ResNet-18d at 224 px, batch 256, bf16, channels_last
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..base.errors import LcdenseError
from ..core.accounting import step_macs
from ..core.convert import convert
from ..core.fold import fold
from ..core.models import cifar_resnet
from ..core.precondition import check_preconditioned_optimizer

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


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    try:
        storage = t.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # opaque tensors (e.g. mkldnn): count by identity
        return id(t), t.numel() * t.element_size()


def _state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None, with_grads: bool) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    if with_grads:
        tensors += [p.grad for p in model.parameters() if p.grad is not None]
    if optimizer is not None:
        tensors += [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return sum(dict(_storage_key(t) for t in tensors).values())


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
        own = {_storage_key(t)[0] for t in [*self.model.parameters(), *self.model.buffers()]}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            key, size = _storage_key(t)
            if key not in own:
                saved[key] = size
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), self.autocast:
            loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        state = _state_bytes(self.model, self.optimizer, True)
        self.optimizer.zero_grad(set_to_none=True)
        return state, sum(saved.values())


def _build(args: argparse.Namespace) -> nn.Module:
    torch.manual_seed(0)
    if args.model == CIFAR_MODEL:
        return cifar_resnet(20, 16, num_classes=args.num_classes)
    from ..core.models import create_model

    return create_model(args.model, num_classes=args.num_classes)


def _prepare(model: nn.Module, args: argparse.Namespace) -> nn.Module:
    model = model.to(args.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if args.compile else model


def _lc_model(args: argparse.Namespace, E: int, spatial: str, impl: str) -> tuple[nn.Module, str]:
    model = _build(args)
    report = convert(model, "lc", E=E, spatial=spatial, impl=impl, input_size=(3, args.image_size, args.image_size),
                     batch_size=args.batch_size)
    chosen = Counter(r.impl for r in report.layers if r.action == "lc")
    return report.model, " ".join(f"{k}:{v}" for k, v in sorted(chosen.items()))


def _configs(args: argparse.Namespace, batch: tuple[torch.Tensor, torch.Tensor]) -> list[Config]:
    configs = [Config("baseline", "train", impl="conv")]
    models: dict[str, tuple[nn.Module, str]] = {"baseline": (_build(args), "")}
    for E in args.E:
        for spatial in ("frozen", "learnable"):
            impls = ["auto", *(["naive"] if E <= args.naive_max_E else [])]
            impls += ["preconditioned"] if spatial == "frozen" else []
            for impl in impls:
                name = f"lc-{spatial}@{E} {impl}"
                models[name] = _lc_model(args, E, spatial, impl)
                configs.append(Config(name, "train", E, spatial, impl, models[name][1]))
    for cfg in configs:
        cfg.macs = step_macs(models[cfg.name][0], (3, args.image_size, args.image_size), args.batch_size)
        trainer = _Trainer(_prepare(models[cfg.name][0], args), batch, args.amp)
        cfg.run, cfg.measure_memory = trainer.step, trainer.measure_memory
    top = max(args.E)
    folded = fold(_lc_model(args, top, "learnable", "auto")[0], inplace=True)
    for name, model in (("baseline", _build(args)), (f"folded lc-learnable@{top}", folded)):
        model = _prepare(model, args).eval()
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


def _measure(configs: list[Config], args: argparse.Namespace) -> None:
    for cfg in configs:  # warm-up step (allocates optimizer state); memory on training configs
        try:
            if cfg.kind == "train":
                cfg.state_bytes, cfg.activation_bytes = cfg.measure_memory()
            else:
                cfg.run()
        except torch.OutOfMemoryError:
            cfg.status = "out of memory"
            _empty_cache(args.device)
        _sync(args.device)
    live = [c for c in configs if c.status == "ok"]
    args.conv_share = conv_share(configs[0].run, args.device) if configs[0].status == "ok" else None
    for round_index in range(args.rounds):
        shift = round_index % len(live)
        for cfg in live[shift:] + live[:shift]:
            start, cpu_start = time.perf_counter(), time.process_time()
            updates = [cfg.run() for _ in range(args.steps)]
            _sync(args.device)
            cfg.times.append((time.perf_counter() - start) / args.steps)
            cfg.cpu_times.append((time.process_time() - cpu_start) / args.steps)
            if cfg.kind == "train":
                cfg.update_times.append(sum(updates) / args.steps)


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


def _positive_ints(text: str) -> list[int]:
    values = sorted({int(part) for part in text.split(",") if part.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers such as 1,8,32, got '{text}'")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--model", default=None,
                   help=f"'{CIFAR_MODEL}' (CPU default) or a torchvision/timm name (CUDA default: timm:resnet18d)")
    p.add_argument("--image-size", type=int, default=None, help="input side in px (default 32 CIFAR, else 224)")
    p.add_argument("--batch-size", type=int, default=None, help="default 128 on CPU, 256 on CUDA")
    p.add_argument("--E", type=_positive_ints, default=[1, 8, 32, 128], help="expansions, e.g. 1,8,32,128")
    p.add_argument("--naive-max-E", type=int, default=None,
                   help="time the two-conv form only up to this E (default 8 on CPU, 1 on CUDA: it costs ~E×)")
    p.add_argument("--rounds", type=int, default=4, help="round-robin rounds (medians over rounds)")
    p.add_argument("--steps", type=int, default=1, help="steps per configuration per round")
    p.add_argument("--amp", choices=("none", "bf16"), default=None, help="autocast (default none CPU, bf16 CUDA)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on for CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch on --device cpu (default 1: stable ratios on a shared machine)")
    p.add_argument("--reuse-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU: let glibc keep freed memory for reuse, as the CUDA caching allocator does (default on; "
                        "off: every step page-faults its fresh gradient and activation buffers anew)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON result file (default runs/bench/lc-DEVICE-TIMESTAMP.json; never overwritten)")


def _fill_defaults(args: argparse.Namespace) -> None:
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise LcdenseError("--device cuda but no CUDA GPU is visible to torch; run on a GPU machine or use --device cpu")
    args.model = args.model or ("timm:resnet18d" if cuda else CIFAR_MODEL)
    args.image_size = args.image_size or (32 if args.model == CIFAR_MODEL else 224)
    args.batch_size = args.batch_size or (256 if cuda else 128)
    args.naive_max_E = args.naive_max_E if args.naive_max_E is not None else (1 if cuda else 8)
    args.amp = args.amp or ("bf16" if cuda else "none")
    args.channels_last = cuda if args.channels_last is None else args.channels_last
    args.num_classes = 10 if args.model == CIFAR_MODEL else 1000
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out = args.out or Path("runs/bench") / f"lc-{args.device}-{stamp}.json"
    if args.out.exists():
        raise LcdenseError(f"{args.out} already exists; pass a new --out path (results are never overwritten)")
    for name in ("rounds", "steps", "batch_size", "image_size", "threads"):
        if getattr(args, name) < 1:
            raise LcdenseError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def run(args: argparse.Namespace) -> int:
    _fill_defaults(args)
    if args.device == "cpu":
        torch.set_flush_denormal(True)
        torch.set_num_threads(args.threads)
        args.reuse_freed_memory = args.reuse_freed_memory and keep_freed_memory()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=gen)
    x, y = x.to(args.device), y.to(args.device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    started = time.perf_counter()
    configs = _configs(args, (x, y))
    _measure(configs, args)
    rows = _results(configs, args.conv_share)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("_")}
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    header = (f"{args.model}, batch {args.batch_size}, {args.image_size} px, {args.device} ({device}), amp {args.amp}, "
              f"channels_last {args.channels_last}, compile {args.compile}, reuse freed memory "
              f"{args.reuse_freed_memory if args.device == 'cpu' else 'n/a'}; fused SGD (momentum 0.9, Nesterov, wd 5e-4); "
              f"{args.rounds} interleaved rounds × {args.steps} step(s); torch {torch.__version__}")
    load = os.getloadavg()
    header += f"; load average {load[0]:.1f} at the end"
    print(header)
    print(f"memory = {MEMORY_MEANING[args.device]}")
    if args.conv_share is not None:
        print(f"MAC-predicted ×base = 1 + (MACs ×base - 1) × {args.conv_share:.2f}, the baseline step's share of "
              "operator time in convolutions and matrix products (profiled once): extra MACs at the "
              "baseline's time per MAC, its other work unchanged; +update ×base adds the measured growth of the "
              "optimizer update (element-wise over the trainable state, which MACs do not count)")
    print(format_table(rows))
    elapsed = time.perf_counter() - started
    print(f"total {elapsed:.0f} s; results: {args.out}")
    data = {"header": header, "memory_meaning": MEMORY_MEANING[args.device], "settings": settings,
            "device": device, "torch": torch.__version__, "seconds": elapsed, "load_average": load,
            "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``scripts/bench_lc.py``); same as ``lcdense bench``."""
    import sys

    parser = argparse.ArgumentParser(prog="bench_lc", description=__doc__.strip().splitlines()[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except LcdenseError as exc:
        print(f"bench_lc: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["format_table", "predicted_ratios", "add_arguments", "run", "main", "MEMORY_MEANING"]
