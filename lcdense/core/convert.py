"""Model surgery: turn any PyTorch CNN into its frozen-random or LC-Block variant.

>>> import torchvision
>>> model = torchvision.models.resnet18(num_classes=10)
>>> report = convert(model, "lc", E=4, spatial="frozen", input_size=(3, 32, 32))
>>> report.counts()["lc"]
17

The conversion modes are one table, :data:`MODES` (a :class:`ConversionMode` each): what a mode
does to a conv, the settings it takes, and the variant kinds it gives a run (``lc`` gives
``lc-learnable`` and ``lc-frozen``, one per spatial bank). A new mode is one
:func:`register_mode` call, or an entry of the ``lcdense.modes`` entry-point group
(``[project.entry-points."lcdense.modes"] mymode = "mypkg:MY_MODE"``, a :class:`ConversionMode`);
``convert``, the variants of a run and ``lcdense convert --mode`` read it.

>>> [m.name for m in MODES.values()], list(variant_kinds())
(['learnable', 'frozen', 'lc'], ['learnable', 'frozen', 'lc-learnable', 'lc-frozen'])
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..base.errors import LcdenseError
from ..base.registry import Registry
from .accounting import count_parameters, trace_layers
from .blocks import IMPLS, MIDS, LCConv, prefold
from .inits import check_init, seeded_filters
from .precondition import PreconditionedConv

HEAD_PATTERNS: tuple[str, ...] = ("head*", "*.head*", "classifier*", "*.classifier*", "segmentation_head*", "fc", "*.fc")
_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONVERT_IMPLS: tuple[str, ...] = (*IMPLS, "preconditioned")


@dataclass
class LayerRecord:
    """What conversion did to one spatial conv.

    Attributes:
        name: The conv's qualified name in the model (``"(model)"`` for the model itself).
        type: The conv's class name.
        shape: The conv's weight shape before conversion.
        action: ``"lc"`` (became an LC-Block or preconditioned conv), ``"frozen"``, ``"reinit"``
            (re-drawn, still learnable) or ``"skipped"``.
        reason: Why a conv was skipped (empty otherwise).
        impl: For LC-Blocks, the forward chosen for a training step at the report's input size
            (``"fold"``, ``"naive"``), or ``"preconditioned"``.
    """

    name: str
    type: str
    shape: tuple[int, ...]
    action: str  # "lc" | "frozen" | "reinit" | "skipped"
    reason: str = ""
    impl: str = ""  # LC-Blocks: the forward chosen at the report's input size


@dataclass
class ConversionReport:
    """Per-layer actions and before/after totals of a :func:`convert` call. ``print()`` it.

    Attributes:
        mode: The conversion mode.
        settings: The conversion's settings (mode "lc": E, spatial, init, seed, mid, impl,
            batch_size; else init and seed).
        layers: One record per spatial conv, in module order.
        params_before: Trainable, frozen and total parameters before (:func:`lcdense.count_parameters`).
        params_after: The same after.
        input_size: The (C, H, W) the MACs were counted at, or None.
        macs_before: Forward MACs per sample before, when ``input_size`` was given.
        macs_after: The same after.
        model: The converted model.
    """

    mode: str
    settings: dict
    layers: list[LayerRecord] = field(default_factory=list)
    params_before: dict[str, int] = field(default_factory=dict)
    params_after: dict[str, int] = field(default_factory=dict)
    input_size: tuple[int, ...] | None = None
    macs_before: int | None = None
    macs_after: int | None = None
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    def counts(self) -> dict[str, int]:
        """Number of layers per action.

        Returns:
            ``{action: layers}`` for the actions that occur.
        """
        out: dict[str, int] = {}
        for layer in self.layers:
            out[layer.action] = out.get(layer.action, 0) + 1
        return out

    def to_dict(self) -> dict:
        """The report as plain data (JSON-serialisable).

        Returns:
            Every attribute but ``model``, the layers as dicts, plus ``counts``.
        """
        data = asdict(self)
        data.pop("model")
        data["counts"] = self.counts()
        return data

    def __str__(self) -> str:
        rows = [("layer", "type", "shape", "action", "detail")]
        for r in self.layers:
            detail = r.reason or (f"impl={r.impl}" if r.impl else "")
            rows.append((r.name, r.type, "x".join(map(str, r.shape)), r.action, detail))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + f"  {row[4]}".rstrip() for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        settings = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        lines += ["", f"mode={self.mode}  {settings}", f"layers: {self.counts()}"]
        for key in ("trainable", "frozen", "total"):
            lines.append(f"{key} parameters: {self.params_before[key]:,} -> {self.params_after[key]:,}")
        if self.macs_before is not None:
            size = "x".join(map(str, self.input_size))
            lines.append(f"forward MACs per sample at {size}: {self.macs_before:,} -> {self.macs_after:,}")
        return "\n".join(lines)


def is_spatial_conv(module: nn.Module, min_kernel: int = 2) -> bool:
    """Whether ``module`` is a conv with any kernel dimension of at least ``min_kernel``.

    Args:
        module: Any module.
        min_kernel: The smallest kernel size that counts as spatial (default: any > 1).

    Returns:
        True for a conv (``nn.Conv*d``, its subclasses, transposed convs) with a kernel
            dimension of at least ``min_kernel``.
    """
    return isinstance(module, nn.modules.conv._ConvNd) and max(module.kernel_size) >= min_kernel


def _matches(name: str, patterns: Sequence[str] | None) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns or ())


def _lc_unsupported(module: nn.Module) -> str:
    """Why ``module`` cannot become an LC-Block, or '' if it can."""
    if module.transposed:
        return "transposed conv: no LC form"
    if type(module) not in _PLAIN_CONVS:
        base = next(c for c in _PLAIN_CONVS if isinstance(module, c))
        if type(module).forward is not base.forward or type(module)._conv_forward is not base._conv_forward:
            return f"{type(module).__name__} overrides forward; use mode 'frozen' or exclude it"
    return ""


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


def _replace_weight(module: nn.Module, weight: torch.Tensor, frozen: bool) -> None:
    del module.weight
    if frozen:
        module.register_buffer("weight", weight)
        module.lcdense_frozen = ("weight",)
    else:
        module.weight = nn.Parameter(weight)


def _lc_block(module: nn.Module, name: str, *, E: int, spatial: str, init: str, seed: int,
              mid: str | None, impl: str) -> LCConv:
    dims = len(module.kernel_size)
    ref = module.weight
    block = LCConv(  # its tensors on the meta device: each is replaced below, no value is drawn twice
        module.in_channels, module.out_channels, module.kernel_size, expansion=E,
        stride=module.stride, padding=module.padding, dilation=module.dilation,
        groups=module.groups, bias=module.bias is not None, padding_mode=module.padding_mode,
        spatial=spatial, mid=mid, impl=impl, dims=dims, dtype=ref.dtype, device="meta",
    )
    kw = {"seed": seed, "dtype": ref.dtype, "device": ref.device}
    bank = seeded_filters(init, block.spatial_weight.shape, name=name, **kw)
    combine = seeded_filters("kaiming_uniform", block.combine_weight.shape, name=f"{name}#combine", **kw)
    if is_trained(module):
        _start_from(module.weight.detach(), bank, combine, module.groups)
    block.spatial_weight = bank if spatial == "frozen" else nn.Parameter(bank)
    block.combine_weight = nn.Parameter(combine)
    if module.bias is not None:
        block.bias = nn.Parameter(module.bias.detach().clone())
    if block.mid is not None:
        block.mid.to(device=ref.device)
    block.train(module.training)
    return block


def _start_from(weight: torch.Tensor, bank: torch.Tensor, combine: torch.Tensor, groups: int) -> None:
    """Make an LC-Block start as the conv of ``weight`` (in place): in each group, the bank's first
    maps are the trained filters and P picks them (1) and nothing else (0), so W' = P·W = ``weight``
    exactly; the bank's other maps stay seeded."""
    c_out, per_group = weight.shape[0], weight.shape[0] // groups
    maps = bank.shape[0] // groups
    combine.zero_()
    for o in range(c_out):
        group, i = divmod(o, per_group)
        bank[group * maps + i] = weight[o]
        combine[o, i] = 1.0


#: The keyword settings of :func:`convert` a mode can take (the report lists those of its mode).
Settings = dict[str, Any]


def _always_supported(module: nn.Module) -> str:
    return ""


@dataclass(frozen=True)
class ConversionMode:
    """One conversion mode: what :func:`convert` does to each spatial conv it converts.

    ``convert_layer(conv, name, settings)`` returns the conv's replacement (the conv itself,
    changed in place, or a new module); ``action`` is what the report says it did. ``settings``
    are the :func:`convert` keywords the mode reports, in that order. ``blocks``: it builds
    LC-Blocks, so it takes ``E`` and ``mid`` and its variants carry an expansion (``lc-frozen@8``).
    ``banks``: the spatial banks it trains, one variant kind ``<name>-<bank>`` each; none: one
    variant kind, the mode's name. ``baseline``: the unchanged model the others are compared
    with (an init sweep leaves its filters alone). ``unsupported(conv)`` says why a conv cannot
    take the mode ('' if it can).
    """

    name: str
    action: str
    convert_layer: Callable[[nn.Module, str, Settings], nn.Module]
    settings: tuple[str, ...] = ("init", "seed")
    blocks: bool = False
    banks: tuple[str, ...] = ()
    baseline: bool = False
    unsupported: Callable[[nn.Module], str] = _always_supported

    @property
    def options(self) -> tuple[str, ...]:
        """The settings only this mode takes (besides the init, seed and batch every mode gets)."""
        return tuple(k for k in self.settings if k not in ("init", "seed", "batch_size"))


MODES: Registry[ConversionMode] = Registry("mode", group="lcdense.modes")


def register_mode(mode: ConversionMode) -> ConversionMode:
    """Add ``mode`` to :data:`MODES` under its name; returns it.

    Args:
        mode: the new mode.

    Returns:
        ``mode``.
    """
    return MODES.register(mode.name, mode)


def variant_kinds() -> dict[str, tuple[str, str | None]]:
    """Every variant kind a run can train: kind → (its mode, its spatial bank or None), in the
    order of :data:`MODES`.

    Returns:
        e.g. ``{"learnable": ("learnable", None), ..., "lc-frozen": ("lc", "frozen")}``.
    """
    kinds: dict[str, tuple[str, str | None]] = {}
    for mode in MODES.values():
        kinds.update({f"{mode.name}-{bank}": (mode.name, bank) for bank in mode.banks} if mode.banks
                     else {mode.name: (mode.name, None)})
    return kinds


def is_trained(module: nn.Module) -> bool:
    """Whether a conv declares its filters trained (``lcdense_trained = True``, e.g. a transferred
    encoder's): :func:`convert` keeps them instead of drawing seeded ones.

    Args:
        module: A conv.

    Returns:
        The module's ``lcdense_trained`` flag.
    """
    return bool(getattr(module, "lcdense_trained", False))


def _seeded_like(module: nn.Module, name: str, settings: Settings) -> torch.Tensor:
    if is_trained(module):
        return module.weight.detach().clone()
    return seeded_filters(settings["init"], tuple(module.weight.shape), name=name, seed=settings["seed"],
                          dtype=module.weight.dtype, device=module.weight.device)


def _redraw(module: nn.Module, name: str, settings: Settings) -> nn.Module:
    _replace_weight(module, _seeded_like(module, name, settings), frozen=False)
    return module


def _freeze(module: nn.Module, name: str, settings: Settings) -> nn.Module:
    _replace_weight(module, _seeded_like(module, name, settings), frozen=True)
    return module


def _to_lc(module: nn.Module, name: str, settings: Settings) -> nn.Module:
    impl = settings["impl"]
    block = _lc_block(module, name, E=settings["E"], spatial=settings["spatial"], init=settings["init"],
                      seed=settings["seed"], mid=settings["mid"], impl="fold" if impl == "preconditioned" else impl)
    return PreconditionedConv.from_lc(block) if impl == "preconditioned" else block


register_mode(ConversionMode("learnable", "reinit", _redraw, baseline=True))
register_mode(ConversionMode("frozen", "frozen", _freeze))
register_mode(ConversionMode("lc", "lc", _to_lc, ("E", "spatial", "init", "seed", "mid", "impl", "batch_size"),
                             blocks=True, banks=("learnable", "frozen"), unsupported=_lc_unsupported))


def block_modes() -> list[str]:
    """The names of the modes that build LC-Blocks.

    Returns:
        e.g. ``["lc"]``.
    """
    return [m.name for m in MODES.values() if m.blocks]


def _quoted(names: list[str]) -> str:
    return " or ".join(f"'{n}'" for n in names)


def _check_args(spec: ConversionMode, E: int, spatial: str, init: str, mid: str | None, impl: str) -> None:
    if isinstance(E, bool) or not isinstance(E, int) or E < 1:
        raise LcdenseError(f"E must be a positive integer, got {E!r}")
    if spatial not in ("frozen", "learnable"):
        raise LcdenseError(f"spatial must be 'frozen' or 'learnable', got '{spatial}'")
    check_init(init)
    if mid is not None and mid not in MIDS:
        raise LcdenseError(f"unknown mid op '{mid}'; use one of: none, {', '.join(MIDS)}")
    if impl not in CONVERT_IMPLS:
        raise LcdenseError(f"unknown impl '{impl}'; use one of: {', '.join(CONVERT_IMPLS)}")
    if impl == "preconditioned" and (not spec.blocks or spatial != "frozen" or mid is not None):
        raise LcdenseError(
            f"impl 'preconditioned' needs mode {_quoted(block_modes())}, spatial 'frozen' and no mid op "
            f"(got mode '{spec.name}', spatial '{spatial}', mid {mid}); use impl 'auto' otherwise"
        )
    if not spec.blocks and (E != 1 or mid is not None):
        raise LcdenseError(f"E and mid only apply to mode {_quoted(block_modes())} (got mode '{spec.name}')")


def convert(
    model: nn.Module,
    mode: str,
    *,
    E: int = 1,
    spatial: Literal["frozen", "learnable"] = "frozen",
    init: str = "kaiming_uniform",
    seed: int = 0,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    min_kernel: int = 2,
    stem: bool = True,
    head: bool = True,
    head_patterns: Sequence[str] = HEAD_PATTERNS,
    mid: str | None = None,
    impl: str = "auto",
    input_size: Sequence[int] | None = None,
    batch_size: int = 1,
) -> ConversionReport:
    """Convert every spatial conv of ``model`` in place and report what changed.

    Every touched conv gets seeded filters from ``init``, so the variants of a model share them;
    a conv that declares its filters trained (:func:`is_trained`, e.g. a transferred encoder's)
    keeps them instead: frozen as they are, or an LC-Block that starts as exactly that conv.
More modes can be registered (:data:`MODES`, :func:`register_mode`).
    The converted model is ``report.model`` (the same object unless ``model`` is itself a conv);
    with LC-Blocks, it carries :func:`lcdense.core.blocks.prefold` as a forward pre-hook.

    Args:
        model: The model to convert, in place.
        mode: ``"learnable"``: the baseline, filters re-drawn and trained as usual;
            ``"frozen"``: filters stored as a buffer, never updated by any optimizer;
            ``"lc"``: each conv becomes an :class:`~lcdense.core.blocks.LCConv`.
        E: Mode "lc": the expansion, the bank's maps per output channel (>= 1).
        spatial: Mode "lc": the bank is ``"frozen"`` or ``"learnable"``; the 1×1 combination
            is always learnable.
        init: The spatial filters' distribution (a name of :data:`lcdense.core.inits.INITS`).
        seed: The seed; a layer's filters depend only on (seed, layer name, shape, init).
        include: Module-name globs; only the convs they match are converted (default: all).
        exclude: Module-name globs of convs left alone.
        min_kernel: The smallest kernel size that counts as spatial (:func:`is_spatial_conv`).
        stem: False leaves the first spatial conv alone.
        head: False leaves the convs whose names match ``head_patterns`` alone.
        head_patterns: Module-name globs of a model's head.
        mid: Mode "lc": an op between the block's two convs (``"relu"``, ``"bn"``,
            ``"bn_relu"``); such a block is no longer a single conv and cannot fold.
        impl: Mode "lc": the blocks' forward, ``"auto"``, ``"fold"`` or ``"naive"``
            (:class:`~lcdense.core.blocks.LCConv`), or ``"preconditioned"`` (spatial
            ``"frozen"``, no ``mid``): each block becomes a
            :class:`~lcdense.core.precondition.PreconditionedConv`, exact under SGD only, its
            cost independent of E.
        input_size: (C, H, W): the report adds forward MACs per sample before and after, and
            the form each LC-Block picks for a training step at ``batch_size``.
        batch_size: The batch the MACs and the chosen forms are counted for.

    Returns:
        What changed, layer by layer, with the converted model as ``report.model``.

    Raises:
        LcdenseError: An unknown ``mode``, ``init``, ``mid`` or ``impl``, ``E`` < 1, or ``E``,
            ``mid`` or ``impl="preconditioned"`` where they do not apply.
    """
    spec = MODES.get(mode)
    _check_args(spec, E, spatial, init, mid, impl)
    given = {"E": E, "spatial": spatial, "init": init, "seed": seed, "mid": mid, "impl": impl, "batch_size": batch_size}
    report = ConversionReport(
        mode=mode,
        settings={key: given[key] for key in spec.settings},
        params_before=count_parameters(model),
        input_size=tuple(input_size) if input_size else None,
    )
    if input_size:
        report.macs_before = sum(c.macs(batch_size) for c in trace_layers(model, input_size))
    spatial_convs = [(n, m) for n, m in model.named_modules() if is_spatial_conv(m, min_kernel)]
    for index, (name, module) in enumerate(spatial_convs):
        shape = tuple(module.weight.shape)
        record = LayerRecord(name or "(model)", type(module).__name__, shape, "skipped")
        report.layers.append(record)
        if include is not None and not _matches(name, include):
            record.reason = "not matched by include"
        elif _matches(name, exclude):
            record.reason = "matched by exclude"
        elif not stem and index == 0:
            record.reason = "stem excluded (stem=False)"
        elif not head and _matches(name, head_patterns):
            record.reason = "head excluded (head=False)"
        elif why := spec.unsupported(module):
            record.reason = why
        else:
            new = spec.convert_layer(module, name, given)
            if isinstance(new, PreconditionedConv):
                record.impl = "preconditioned"
            if new is not module and name:
                _set_module(model, name, new)
            elif new is not module:
                model = new
            record.action = spec.action
            if is_trained(module):
                record.reason = "trained filters kept"
    has_lc = any(isinstance(m, LCConv) for m in model.modules())
    if has_lc and prefold not in model._forward_pre_hooks.values():
        model.register_forward_pre_hook(prefold)
    report.model = model
    report.params_after = count_parameters(model)
    if input_size:
        calls = trace_layers(model, input_size)
        report.macs_after = sum(c.macs(batch_size) for c in calls)
        chosen = {c.name: c.module.choose_impl(c.batch_shape(batch_size)) for c in calls if isinstance(c.module, LCConv)}
        for record in report.layers:
            record.impl = chosen.get("" if record.name == "(model)" else record.name, record.impl)
    return report


__all__ = ["MODES", "ConversionMode", "ConversionReport", "HEAD_PATTERNS", "LayerRecord", "block_modes", "convert",
           "is_spatial_conv", "is_trained", "register_mode", "variant_kinds"]
