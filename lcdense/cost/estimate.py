"""Predict a training step's memory and compute without allocating a single real tensor.

:func:`estimate` copies a model onto fake tensors (``FakeTensorMode``: shapes, dtypes and
strides, no data), applies the cell's conversion there (so an LC bank of any E costs nothing),
gives it the state earlier steps leave (a gradient and optimizer state for every trainable
parameter) and runs a training step of the configured optimizer on a fake batch. It reports:

- trainable and frozen parameters;
- state: parameters, buffers, gradients and optimizer state (exact: the same storages);
- activations saved for backward (distinct storages outside the model state that die with the step);
- the peak: live tensor bytes at their maximum during the step, counted by
  :class:`lcdense.cost.memory.LiveTensorBytes`, the same counter that measures a real CPU run;
- forward and training-step FLOPs (``torch.utils.flop_counter``; 2 FLOPs per MAC).

For a CUDA target with bf16 autocast the fake step runs under CPU bf16 autocast, which casts
the same operators (convs, matmuls) to bf16. Not included: library workspaces (cuDNN, oneDNN),
the CUDA caching allocator's rounding and fragmentation, and the loss's own saved tensors (the
fake step's loss is the mean of the outputs).

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
>>> est = estimate(model, Footprint(batch_size=4, input_size=(3, 8, 8)))
>>> est.trainable_params, est.params_bytes, est.grads_bytes, est.optimizer_bytes
(5354, 21416, 21416, 21416)
>>> est.forward_flops == 2 * 4 * (8 * 64 * 27 + 10 * 8 * 64)
True
"""
from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ..base.errors import LcdenseError
from ..core.accounting import count_parameters
from ..core.blocks import prefold
from ..core.convert import ConversionReport
from .memory import (
    LiveTensorBytes,
    available_memory,
    format_bytes,
    parse_bytes,
    storage_bytes,
)

OPTIMIZER_STATE = {"sgd": "momentum buffer (if momentum > 0)", "adamw": "exp_avg, exp_avg_sq, step"}


@dataclass
class Footprint:
    """How a task trains, as far as memory goes: batch (per rank), input, optimizer, autocast.

    Attributes:
        batch_size: The training batch (per rank).
        input_size: One sample's shape, e.g. (3, 32, 32).
        optimizer: ``"sgd"`` or ``"adamw"`` (case-insensitive).
        lr: The optimizer's learning rate.
        momentum: SGD's momentum (its buffer is optimizer state when > 0).
        nesterov: SGD's Nesterov momentum (with momentum > 0).
        weight_decay: The optimizer's weight decay.
        amp: bf16 autocast (applies to CUDA targets).
        channels_last: The model and 4-d inputs in channels_last memory format.
        grads_during_forward: The previous step's gradients are still held during the forward
            (:func:`lcdense.train_loop` zeroes them just before ``backward``).
        model_copies: Extra full copies of the model's parameters and buffers resident while
            training (e.g. an EMA model and a trainer's own copy).
        eval_batch_size: The evaluation passes' batch (none if None): a no-grad forward while
            the optimizer still exists (per-epoch validation), and, with ``eval_input_grad``, an
            eval-mode forward and backward to the input once the optimizer is gone.
        eval_input_grad: The evaluation includes a backward to the input (e.g. FGSM robustness).
        make_optimizer: The task's own optimizer (e.g. timm's LAMB), built over the model as the
            task builds it; None: the one ``optimizer`` names. ``optimizer`` still names it in
            the estimate.
    """

    batch_size: int
    input_size: tuple[int, ...]
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    amp: bool = False
    channels_last: bool = False
    grads_during_forward: bool = True
    model_copies: int = 0
    eval_batch_size: int | None = None
    eval_input_grad: bool = False
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None


@dataclass
class Estimate:
    """The predicted costs of one training step (bytes and FLOPs); :meth:`row` for the table."""

    name: str
    device: str
    batch_size: int
    input_size: tuple[int, ...]
    optimizer: str
    amp: bool
    trainable_params: int
    frozen_params: int
    params_bytes: int
    buffers_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    copies_bytes: int
    activations_bytes: int
    train_peak_bytes: int
    eval_peak_bytes: int
    forward_flops: int
    step_flops: int
    memory_bytes: int | None = None
    memory_source: str = ""
    layers: dict[str, int] = field(default_factory=dict)

    @property
    def state_bytes(self) -> int:
        """Parameters, buffers, gradients, optimizer state and extra model copies."""
        return self.params_bytes + self.buffers_bytes + self.grads_bytes + self.optimizer_bytes + self.copies_bytes

    @property
    def peak_bytes(self) -> int:
        """The cell's peak: training steps or evaluation passes, whichever is higher."""
        return max(self.train_peak_bytes, self.eval_peak_bytes)

    @property
    def fits(self) -> bool | None:
        return None if self.memory_bytes is None else self.peak_bytes <= self.memory_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "state_bytes": self.state_bytes, "peak_bytes": self.peak_bytes, "fits": self.fits}


def _fake_copy(model: nn.Module, mode: Any) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are fake tensors of ``mode`` (their data
    is not copied)."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(mode.from_tensor(p.detach()), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = mode.from_tensor(b)
    converter = mode.fake_tensor_converter
    for m in model.modules():  # plain tensor attributes (e.g. strides) stay readable: fake constants
        for value in vars(m).values():
            if isinstance(value, torch.Tensor) and id(value) not in memo:
                memo[id(value)] = converter.from_real_tensor(mode, value, make_constant=True)
    return copy.deepcopy(model, memo)


def _channels_last(model: nn.Module) -> None:
    """``model.to(memory_format=torch.channels_last)`` for fake tensors (which cannot be swapped)."""
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for key, t in store.items():
                if t is not None and t.dim() == 4:
                    cl = t.detach().contiguous(memory_format=torch.channels_last)
                    store[key] = nn.Parameter(cl, t.requires_grad) if isinstance(t, nn.Parameter) else cl


def _optimizer(params: list[nn.Parameter], fp: Footprint, foreach: bool) -> torch.optim.Optimizer:
    kind = fp.optimizer.lower()
    if kind == "sgd":
        return torch.optim.SGD(params, lr=fp.lr, momentum=fp.momentum, nesterov=fp.nesterov and fp.momentum > 0,
                               weight_decay=fp.weight_decay, foreach=foreach)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=fp.lr, weight_decay=fp.weight_decay, foreach=foreach)
    raise LcdenseError(f"cannot estimate optimizer '{fp.optimizer}'; known: {', '.join(OPTIMIZER_STATE)}")


def _batch(size: int, fp: Footprint) -> torch.Tensor:
    x = torch.empty(size, *fp.input_size)
    return x.contiguous(memory_format=torch.channels_last) if fp.channels_last and x.dim() == 4 else x


def _evaluate(model: nn.Module, x: torch.Tensor, autocast: Any, optimizer: torch.optim.Optimizer,
              input_grad: bool) -> None:
    """The evaluation passes (see :class:`Footprint`), releasing the optimizer state in between."""
    model.eval()
    with torch.no_grad(), autocast:
        model(x)
    optimizer.state.clear()
    if input_grad:
        x = x.clone().requires_grad_(True)
        with autocast:
            loss = _loss(model(x))
        torch.autograd.grad(loss, x)


def _loss(out: Any) -> torch.Tensor:
    tensors = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not tensors:
        raise LcdenseError("the model's forward returned no floating-point tensor; cannot estimate its backward")
    return sum(t.float().mean() for t in tensors)


def _combine_layer_by_layer(model: nn.Module) -> None:
    """Take :func:`lcdense.prefold` off a fake copy planned for another device than the CPU: the
    fake step runs on CPU tensors, but there the LC-Blocks combine their filters layer by layer
    (prefold acts on CPU banks only), which orders, and so peaks, differently."""
    for module in model.modules():
        for key in [k for k, hook in module._forward_pre_hooks.items() if hook is prefold]:
            del module._forward_pre_hooks[key]


def estimate(model: nn.Module, footprint: Footprint, *, convert: Callable[[nn.Module], ConversionReport] | None = None,
             device: torch.device | str = "cpu", name: str = "", memory: int | None = None) -> Estimate:
    """Predicted costs of training ``model`` (after ``convert``, if given) with ``footprint`` on
    ``device``. ``model`` itself is not touched; nothing of the converted size is allocated.
    ``memory``: bytes to compare the peak with (default: what ``device`` has available, if it
    is this machine's CPU or a visible GPU)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device(device)
    fp = footprint
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake = _fake_copy(model, mode)  # outside the mode: other (small, real) tensor attributes copy as they are
    with mode:
        layers: dict[str, int] = {}
        if convert is not None:
            report = convert(fake)
            fake = report.model
            for record in report.layers:
                key = record.action + (f":{record.impl}" if record.impl else "")
                layers[key] = layers.get(key, 0) + 1
        if device.type != "cpu":
            _combine_layer_by_layer(fake)
        fake.train()
        if fp.channels_last:
            _channels_last(fake)
        counts = count_parameters(fake)
        params = list(fake.parameters())
        trainable = [p for p in params if p.requires_grad]
        optimizer = fp.make_optimizer(fake) if fp.make_optimizer else _optimizer(trainable, fp, foreach=device.type == "cuda")
        x = _batch(fp.batch_size, fp)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=fp.amp and device.type == "cuda")
        model_tensors = [*params, *fake.buffers()]
        own = {id(s): s for s in (t.untyped_storage() for t in model_tensors)}
        # Weak references without callbacks: the count must not keep activations alive, and no
        # Python code may run when one dies (a Ctrl-C handled there would be swallowed).
        saved: dict[int, tuple[weakref.ref, int]] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            key = id(storage)
            if own.get(key) is not storage and (key not in saved or saved[key][0]() is not storage):
                saved[key] = (weakref.ref(storage), storage.nbytes())
            return t

        def activations() -> int:
            """Bytes of the storages the measured step saved for backward that died with it (not
            those a module keeps, such as a detector's anchors)."""
            return sum(nbytes for ref, nbytes in saved.values() if ref() is None)

        def step(flops: FlopCounterMode | None = None) -> None:
            if not fp.grads_during_forward:
                optimizer.zero_grad(set_to_none=True)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
                loss = _loss(fake(x))
            if flops is not None:
                forward[0] = flops.get_total_flops()
            if fp.grads_during_forward:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def warm_up() -> None:
            """The state an earlier step leaves, a gradient and optimizer state for every trainable
            parameter, without the cost of a fake forward and backward."""
            for p in trainable:
                p.grad = torch.zeros_like(p)
            optimizer.step()

        forward = [0]
        copies = fp.model_copies * storage_bytes(model_tensors)
        with LiveTensorBytes(model_tensors) as live:
            warm_up()
            with FlopCounterMode(display=False) as flops:
                step(flops)
            if any(p.grad is None for p in trainable):
                # a parameter the forward does not reach: a real step leaves it no gradient and no
                # state: measure the second of two real steps instead (the peak is of both)
                for p in trainable:
                    p.grad = None
                optimizer.state.clear()
                live.peak = live.live
                step()
                saved.clear()
                with FlopCounterMode(display=False) as flops:
                    step(flops)
            train_peak, live.peak = live.peak, 0
            grads_bytes = storage_bytes(p.grad for p in trainable if p.grad is not None)
            optimizer_bytes = storage_bytes(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
            if fp.eval_batch_size:
                _evaluate(fake, _batch(fp.eval_batch_size, fp), autocast, optimizer, fp.eval_input_grad)
        result = Estimate(
            name=name, device=str(device), batch_size=fp.batch_size, input_size=tuple(fp.input_size),
            optimizer=fp.optimizer.lower(), amp=fp.amp and device.type == "cuda",
            trainable_params=counts["trainable"], frozen_params=counts["frozen"],
            params_bytes=storage_bytes(params), buffers_bytes=storage_bytes(list(fake.buffers())),
            grads_bytes=grads_bytes, optimizer_bytes=optimizer_bytes, copies_bytes=copies,
            activations_bytes=activations(), train_peak_bytes=train_peak + copies,
            eval_peak_bytes=live.peak + copies if fp.eval_batch_size else 0,
            forward_flops=int(forward[0]), step_flops=int(flops.get_total_flops()), layers=layers,
        )
    if memory is None and (device.type == "cpu" or torch.cuda.is_available()):
        memory, result.memory_source = available_memory(device)
    elif memory is not None:
        result.memory_source = "given"
    result.memory_bytes = memory
    return result


def refuse_if_too_large(est: Estimate, *, expansion: int | None = None, spatial: str | None = None,
                        ranks: int = 1) -> None:
    """Raise a one-line :class:`LcdenseError` if ``est``'s peak exceeds its memory: what it
    needs, what is available and what to change."""
    if est.fits is not False:
        return
    hints = []
    if expansion is not None:
        hints.append("a smaller E")
        if spatial == "frozen":
            hints.append("conversion.impl: preconditioned (SGD only; its memory does not grow with E)")
    if est.activations_bytes > est.peak_bytes / 4:
        hints.append(f"more ranks (--ddp {2 * ranks}: each rank holds the full state of {format_bytes(est.state_bytes)} "
                     "and a share of the batch)")
    more_ranks = "" if est.activations_bytes > est.peak_bytes / 4 else "; more ranks would not help, each holds the full state"
    raise LcdenseError(
        f"cell {est.name} needs about {format_bytes(est.peak_bytes)} (state {format_bytes(est.state_bytes)}, "
        f"activations {format_bytes(est.activations_bytes)}) but {format_bytes(est.memory_bytes)} is available "
        f"({est.memory_source}); nothing was allocated. Use " + (", or ".join(hints) or "a smaller model or batch")
        + more_ranks)


def check_cell(model: nn.Module, footprint: Footprint, config: dict[str, Any],
               convert: Callable[[nn.Module], ConversionReport], device: torch.device, *, name: str,
               expansion: int | None, spatial: str | None, ranks: int = 1) -> Estimate:
    """Estimate a cell before its conversion allocates anything, and refuse it (one line) if its
    peak exceeds ``run.max_memory`` or, when that is unset, what ``device`` has available.

    Args:
        model: the cell's model before conversion.
        footprint: how the task trains it (the global batch; each of ``ranks`` gets its share).
        config: the cell's config (``run.max_memory``).
        convert: the cell's conversion, applied to a fake copy.
        device: where the cell trains.
        name, expansion, spatial, ranks: the cell's id, E, spatial mode and data-parallel ranks,
            for the refusal's message.

    Returns:
        The cell's :class:`Estimate`.
    """
    limit = config["run"].get("max_memory")
    fp = copy.copy(footprint)
    fp.batch_size = max(1, fp.batch_size // ranks)
    with torch.random.fork_rng(devices=[]):  # the fake conversion leaves the run's RNG streams alone
        est = estimate(model, fp, convert=convert, device=device, name=name,
                       memory=parse_bytes(limit) if limit is not None else None)
    if limit is not None:
        est.memory_source = "run.max_memory"
    refuse_if_too_large(est, expansion=expansion, spatial=spatial, ranks=ranks)
    return est


COLUMNS = ("cell", "trainable", "frozen", "params", "buffers", "grads", "optimizer", "copies", "state",
           "activations", "train peak", "eval peak", "fwd GFLOP", "step GFLOP", "memory", "fits")


def estimate_rows(estimates: list[Estimate]) -> list[tuple[str, ...]]:
    rows = []
    for e in estimates:
        fits = "?" if e.fits is None else ("yes" if e.fits else "NO")
        rows.append((e.name, f"{e.trainable_params / 1e6:.2f} M", f"{e.frozen_params / 1e6:.2f} M",
                     *(format_bytes(v) for v in (e.params_bytes, e.buffers_bytes, e.grads_bytes, e.optimizer_bytes,
                                                  e.copies_bytes, e.state_bytes, e.activations_bytes, e.train_peak_bytes)),
                     format_bytes(e.eval_peak_bytes) if e.eval_peak_bytes else "-",
                     f"{e.forward_flops / 1e9:,.1f}", f"{e.step_flops / 1e9:,.1f}",
                     format_bytes(e.memory_bytes) if e.memory_bytes is not None else "-", fits))
    return rows


def format_estimates(estimates: list[Estimate]) -> str:
    """The estimates as an aligned text table (one row per cell); a cell's peak is the larger of
    its training and evaluation peaks."""
    lines = [COLUMNS, *estimate_rows(estimates)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    text = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
            for line in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


__all__ = ["Footprint", "Estimate", "estimate", "check_cell", "refuse_if_too_large", "format_estimates", "OPTIMIZER_STATE"]
