"""The figures of the filter analysis (PNG, matplotlib's Agg canvas; no pyplot, no global state).

Each function draws one figure from analysed cells and writes it atomically; :func:`draw_all`
draws every figure that the run's variants support and returns their paths. Colours (one per
variant family), line styles and saving come from :mod:`lcdense.reporting.style`, as in the summary's figures.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ...engine.rundir import RunDir
from ..style import color, line_style, save_figure

if TYPE_CHECKING:
    from .cell_analysis import CellAnalysis

CellGroups = dict[str, list["CellAnalysis"]]  # variant -> its analysed cells, seed order

_MAX_FILTERS = 64
_MAX_CHANNELS = 16


def _save(fig: Figure, path: Path) -> Path:
    return save_figure(fig, path)


def slug(variant: str) -> str:
    """A file-name-safe form of a variant name: ``lc-frozen@8`` → ``lc-frozen_E8``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", variant.replace("@", "_E")).strip("_")


def _colors(names: list[str]) -> dict[str, str]:
    """Each name's colour: its family's (the same in every figure of every report)."""
    return {name: color(name) for name in names}


def _styles(names: list[str]) -> dict[str, dict[str, str]]:
    """Line style and marker of each name, counted within its family (names of one family share a colour)."""
    seen: dict[str, int] = {}
    out = {}
    for name in names:
        index = seen[color(name)] = seen.get(color(name), -1) + 1
        out[name] = line_style(index)
    return out


def fve_per_layer(groups: CellGroups, path: Path) -> Path | None:
    """Normalised FVE of every 3×3 layer (module order), one line per variant (seed mean ± std)."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    colors, styles = _colors(list(groups)), _styles(list(groups))
    drawn = False
    for name, cells in groups.items():
        values = np.array([[layer["fve"] if layer["fve"] is not None else np.nan for layer in c.layers]
                           for c in cells], dtype=float)
        measured = ~np.isnan(values).all(axis=0)  # the 3×3 layers
        if not measured.any():
            continue
        x = np.arange(1, values.shape[1] + 1)[measured]
        mean = values[:, measured].mean(axis=0)
        ax.plot(x, mean, ms=3, color=colors[name], label=f"{name} (n={len(cells)})", **styles[name])
        if len(cells) > 1:
            std = values[:, measured].std(axis=0, ddof=1)
            ax.fill_between(x, mean - std, mean + std, color=colors[name], alpha=0.15)
        drawn = True
    if not drawn:
        return None
    ax.axhline(1.0, color="black", ls=":", lw=1, label="random (H = H_T)")
    ax.set(xlabel="spatial conv layer (module order; non-3×3 layers omitted)",
           ylabel="FVE  H / H_T(n)  (dimensionless)",
           title="Filter variance entropy per layer (≥ 1 random, 0 one repeated pattern)")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def _swept_families(variants: dict[str, dict], lc_only: bool = False) -> dict[str, list[str]]:
    families: dict[str, list[str]] = {}
    for name, v in variants.items():
        if v["E"] is not None and (not lc_only or v["lc_layers"]):
            families.setdefault(v["family"], []).append(name)
    return {f: sorted(names, key=lambda n: variants[n]["E"]) for f, names in families.items()
            if len({variants[n]["E"] for n in names}) > 1}


def fve_vs_expansion(variants: dict[str, dict], path: Path) -> Path | None:
    """Fig. 5: first- and last-layer FVE against E, one line per swept family; other variants as
    horizontal reference lines."""
    families = _swept_families(variants)
    if not families:
        return None
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    colors = _colors(list(families) + [n for n, v in variants.items() if v["E"] is None])
    styles = _styles(list(families))
    for ax, end in zip(axes, ("first", "last")):
        for family, names in families.items():
            e = [variants[n]["E"] for n in names]
            mean = [np.nan if variants[n][f"{end}_mean"] is None else variants[n][f"{end}_mean"] for n in names]
            std = [variants[n][f"{end}_std"] or 0.0 for n in names]
            ax.errorbar(e, mean, yerr=std, capsize=3, color=colors[family], label=family, **styles[family])
        for name, v in variants.items():
            if v["E"] is None and v[f"{end}_mean"] is not None:
                ax.axhline(v[f"{end}_mean"], color=colors[name], ls="--", lw=1.2, label=f"{name} (no E)")
        normalized = all(v[f"{end}_normalized"] for v in variants.values())
        if normalized:
            ax.axhline(1.0, color="black", ls=":", lw=1, label="random (H = H_T)")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="LC expansion E",
               ylabel="FVE  H / H_T(n)" if normalized else "variance entropy H (log10, un-normalised)",
               title=f"{end} spatial layer")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Filter variance entropy vs LC expansion (mean ± std over seeds)")
    return _save(fig, path)


def spatial_variance(name: str, panels: list[tuple[str, list]], vmax: float, path: Path) -> Path | None:
    """Fig. 7b for one variant: per-position variance of std-normalised kernels, one panel per
    kernel size (and sweep point), all on the run's shared colour scale."""
    if not panels:
        return None
    fig = Figure(figsize=(3.2 * len(panels) + 1.2, 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, (title, values) in zip(axes, panels):
        grid = np.asarray(values, dtype=float)
        k = grid.shape[0]
        image = ax.imshow(grid, cmap="magma", vmin=0.0, vmax=vmax)
        ax.set(title=title, xlabel="kernel column", ylabel="kernel row", xticks=range(k), yticks=range(k))
        if k <= 5:
            for (r, c), v in np.ndenumerate(grid):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 0.6 * vmax else "black")
    fig.colorbar(image, ax=list(axes), label="variance of weight / layer std (shared scale)")
    fig.suptitle(f"Spatial variance of combined filters: {name}")
    return _save(fig, path)


def _mosaic(tiles: np.ndarray, columns: int) -> np.ndarray:
    """Tiles (n, h, w[, 3]) laid out row by row with a one-pixel NaN gap."""
    n, h, w = tiles.shape[:3]
    rows = math.ceil(n / columns)
    out = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1, *tiles.shape[3:]), np.nan)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        out[r * (h + 1): r * (h + 1) + h, c * (w + 1): c * (w + 1) + w] = tile
    return out


def filter_grid(name: str, weight: torch.Tensor | None, path: Path) -> Path | None:
    """Appendix A.5: the first layer's combined filters. With c_in = 3 each filter is an RGB tile
    scaled to its own max |w| (grey = 0); otherwise each row is a filter and each column an input
    channel, on one shared red/blue scale."""
    if weight is None or weight.dim() != 4:
        return None
    w = weight.detach().double().numpy()
    c_out, c_in, kh, kw = w.shape
    fig = Figure(figsize=(6, 6), layout="constrained")
    ax = fig.add_subplot()
    if c_in == 3:
        shown = min(c_out, _MAX_FILTERS)
        scale = np.abs(w[:shown]).reshape(shown, -1).max(axis=1)
        tiles = 0.5 + 0.5 * w[:shown] / np.where(scale > 0, scale, 1.0)[:, None, None, None]
        mosaic = _mosaic(tiles.transpose(0, 2, 3, 1), math.ceil(math.sqrt(shown)))
        ax.imshow(np.nan_to_num(mosaic, nan=1.0), interpolation="nearest")
        ax.set(xticks=[], yticks=[], xlabel=f"filters 0–{shown - 1} of {c_out}, row by row")
        detail = "RGB, each filter scaled to its max |w|, grey = 0"
    else:
        shown, channels = min(c_out, _MAX_CHANNELS), min(c_in, _MAX_CHANNELS)
        mosaic = _mosaic(w[:shown, :channels].reshape(-1, kh, kw), channels)
        scale = np.nanmax(np.abs(mosaic)) or 1.0
        image = ax.imshow(mosaic, cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
        ax.set(xticks=[], yticks=[], xlabel=f"input channel (first {channels} of {c_in})",
               ylabel=f"filter (first {shown} of {c_out})")
        fig.colorbar(image, ax=ax, label="weight", shrink=0.8)
        detail = "one kernel per tile, shared scale"
    ax.set_title(f"First-layer combined filters: {name}\n{c_out}×{c_in}×{kh}×{kw}, {detail}", fontsize=9)
    return _save(fig, path)


def basis_spectrum(groups: CellGroups, path: Path) -> Path | None:
    """Normalised singular-value spectrum of the spatial bank of the first and last LC layer,
    one line per LC variant (its first seed)."""
    lc = {name: cells[0] for name, cells in groups.items() if any(s is not None for s in cells[0].spectra)}
    if not lc:
        return None
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    colors, styles = _colors(list(lc)), _styles(list(lc))
    for ax, end in zip(axes, ("first", "last")):
        for name, cell in lc.items():
            indices = [i for i, s in enumerate(cell.spectra) if s is not None]
            i = indices[0] if end == "first" else indices[-1]
            s = cell.spectra[i].double().numpy()
            layer = cell.layers[i]
            ax.semilogy(np.arange(1, len(s) + 1), s / s[0], color=colors[name], linestyle=styles[name]["linestyle"],
                        label=f"{name} ({layer['bank_rows']}×{layer['bank_cols']})")
        ax.set(xlabel="singular value index i", ylabel="s_i / s_1", title=f"{end} LC layer ({layer['layer']})")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle("Singular values of the flattened spatial bank W (c_out·E × c_in·k²)")
    return _save(fig, path)


def basis_vs_expansion(variants: dict[str, dict], path: Path) -> Path | None:
    """Bank diagnostics against E per swept LC family (means over LC layers and seeds)."""
    families = _swept_families(variants, lc_only=True)
    if not families:
        return None
    fig = Figure(figsize=(14, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    colors = _colors(list(families))
    for family, names in families.items():
        e = [variants[n]["E"] for n in names]
        series = {key: [np.nan if variants[n][f"bank_{key}"] is None else variants[n][f"bank_{key}"] for n in names]
                  for key in ("effective_rank_ratio", "span_ratio", "condition_number_median", "coherence",
                              "welch_bound")}
        c = colors[family]
        axes[0].plot(e, series["effective_rank_ratio"], marker="o", color=c, label=f"{family} eff. rank")
        axes[0].plot(e, series["span_ratio"], marker="s", ls="--", color=c, label=f"{family} span")
        axes[1].plot(e, series["condition_number_median"], marker="o", color=c, label=family)
        axes[2].plot(e, series["coherence"], marker="o", color=c, label=f"{family} coherence")
        axes[2].plot(e, series["welch_bound"], ls=":", color=c, label=f"{family} Welch bound")
    axes[0].set(ylabel="ratio (0–1)", title="effective rank / min dim, numerical rank / c_in·k²")
    axes[1].set(ylabel="s_max / s_min (median over layers)", title="condition number", yscale="log")
    axes[2].set(ylabel="max |cos| between two filters", title="mutual coherence")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("LC expansion E")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Spatial bank diagnostics vs LC expansion (mean over LC layers and seeds)")
    return _save(fig, path)


def draw_all(groups: CellGroups, variants: dict[str, dict], run: RunDir) -> tuple[list[Path], dict]:
    """Every figure the run supports, under ``run``'s ``figures/``: (run-level figures, {variant:
    {"spatial_variance": path, "filters": [path per sweep point]}}), each only where there was
    something to draw."""
    run_level = [
        fve_per_layer(groups, run.figure("fve_layers.png")),
        fve_vs_expansion(variants, run.figure("fve_vs_E.png")),
        basis_spectrum(groups, run.figure("basis_spectrum.png")),
        basis_vs_expansion(variants, run.figure("basis_vs_E.png")),
    ]
    vmax = max((max(map(max, m)) for v in variants.values() for m in v["spatial_variance"].values()), default=1.0)
    per_variant: dict[str, dict] = {}
    for label, cells in groups.items():
        drawn = per_variant.setdefault(cells[0].variant, {"panels": [], "filters": []})
        point = f" ({cells[0].point})" if cells[0].point else ""
        drawn["panels"] += [(f"{k}×{k} kernels{point}", m) for k, m in variants[label]["spatial_variance"].items()]
        grid = filter_grid(label, cells[0].first_layer_weight, run.figure(f"filters_{slug(label)}.png"))
        drawn["filters"] += [grid] if grid else []
    for name, drawn in per_variant.items():
        heatmap = spatial_variance(name, drawn.pop("panels"), vmax or 1.0,
                                   run.figure(f"spatial_variance_{slug(name)}.png"))
        if heatmap:
            drawn["spatial_variance"] = heatmap
    return [p for p in run_level if p is not None], per_variant
