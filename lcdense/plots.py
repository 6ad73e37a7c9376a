"""Figures of a run: the primary metric per variant (error bars = std over seeds) and, for
sweeps, the metric and the frozen − learnable gap against the swept axis (paper Fig. 4/6/7a).

Figures are written atomically under ``run_dir/figures`` and returned as relative paths.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from .files import write_bytes

COLORS = {"learnable": "tab:blue", "frozen": "tab:orange", "lc-learnable": "tab:green", "lc-frozen": "tab:red"}


def _save(fig: Any, run_dir: Path, name: str) -> str:
    import matplotlib.pyplot as plt

    (run_dir / "figures").mkdir(exist_ok=True)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_bytes(run_dir / "figures" / name, buffer.getvalue())
    return f"figures/{name}"


def _bars(run_dir: Path, summary: dict[str, Any]) -> str:
    import matplotlib.pyplot as plt

    primary = summary["primary_metric"]
    rows = [(f"{name}" + (f" [{group}]" if group else ""), v)
            for group, content in summary["groups"].items() for name, v in content["variants"].items()
            if primary in v["metrics"]]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(rows) + 2), 4))
    means = [v["metrics"][primary]["mean"] for _, v in rows]
    stds = [v["metrics"][primary]["std"] for _, v in rows]
    ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color=[COLORS.get(v["kind"], "gray") for _, v in rows])
    ax.set_xticks(range(len(rows)), [label for label, _ in rows], rotation=30, ha="right")
    ax.set_ylabel(f"{primary} (mean ± std over seeds)")
    ax.set_title(f"{primary} per variant")
    lo = min(m - s for m, s in zip(means, stds))
    hi = max(m + s for m, s in zip(means, stds))
    pad = max(1e-3, (hi - lo) * 0.3)
    ax.set_ylim(max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, run_dir, "metric_per_variant.png")


def _versus_e(run_dir: Path, summary: dict[str, Any]) -> list[str]:
    import matplotlib.pyplot as plt

    primary = summary["primary_metric"]
    paths = []
    for group, content in summary["groups"].items():
        variants = content["variants"]
        fig, (ax, gax) = plt.subplots(1, 2, figsize=(11, 4))
        for kind in ("lc-learnable", "lc-frozen"):
            points = sorted((v["E"], v["metrics"][primary]) for v in variants.values() if v["kind"] == kind and primary in v["metrics"])
            if points:
                xs = [p[0] for p in points]
                ax.errorbar(xs, [p[1]["mean"] for p in points], yerr=[p[1]["std"] for p in points], marker="o",
                            capsize=3, label=kind, color=COLORS[kind])
        for kind in ("learnable", "frozen"):
            v = next((v for v in variants.values() if v["kind"] == kind and primary in v["metrics"]), None)
            if v:
                m = v["metrics"][primary]
                ax.axhline(m["mean"], color=COLORS[kind], linestyle="--", label=f"{kind} (no LC)")
                ax.axhspan(m["mean"] - m["std"], m["mean"] + m["std"], color=COLORS[kind], alpha=0.1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("LC expansion E")
        ax.set_ylabel(f"{primary} (mean ± std)")
        ax.set_title(f"{primary} vs E" + (f" ({group})" if group else ""))
        ax.legend()
        gaps = sorted((g["E"], g) for g in content["gaps"] if g["gap"].startswith("lc-frozen@") and "lc-learnable@" in g["gap"])
        if gaps:
            xs = [e for e, _ in gaps]
            gax.errorbar(xs, [g["mean"] for _, g in gaps], yerr=[g["std"] for _, g in gaps], marker="o", capsize=3,
                         color="tab:purple", label="lc-frozen@E − lc-learnable@E")
            gax.axhline(0, color="black", linewidth=0.8)
            gax.set_xscale("log", base=2)
            gax.legend()
        else:
            gax.text(0.5, 0.5, "no lc-frozen / lc-learnable pair at the same E", ha="center", va="center",
                     transform=gax.transAxes)
        gax.set_xlabel("LC expansion E")
        gax.set_ylabel(f"gap in {primary} (paired by seed)")
        gax.set_title("frozen − learnable gap vs E")
        suffix = f"_{group.replace('=', '').replace(',', '_')}" if group else ""
        paths.append(_save(fig, run_dir, f"metric_vs_E{suffix}.png"))
    return paths


def _axis_order(value: Any) -> tuple[int, float, str]:
    """Numbers by value, then everything else (names, None) by text: axes such as ``mid`` mix them.

    >>> sorted([None, "relu", 16, 8], key=_axis_order)
    [8, 16, None, 'relu']
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _versus_axis(run_dir: Path, records: list[dict[str, Any]], primary: str, axis: str) -> str:
    import statistics

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    by_variant: dict[str, dict[Any, list[float]]] = {}
    for r in records:
        if axis in r.get("axes", {}) and primary in r["metrics"]:
            by_variant.setdefault(r["variant"], {}).setdefault(r["axes"][axis], []).append(r["metrics"][primary])
    for name, points in sorted(by_variant.items()):
        xs = sorted(points, key=_axis_order)
        ax.errorbar([str(x) for x in xs], [statistics.fmean(points[x]) for x in xs],
                    yerr=[statistics.stdev(points[x]) if len(points[x]) > 1 else 0 for x in xs],
                    marker="o", capsize=3, label=name, color=COLORS.get(name.split("@")[0]))
    ax.set_xlabel(axis)
    ax.set_ylabel(f"{primary} (mean ± std)")
    ax.set_title(f"{primary} vs {axis}")
    ax.legend()
    return _save(fig, run_dir, f"metric_vs_{axis}.png")


def plot_run(run_dir: Path, records: list[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    """Write the run's figures; returns their paths relative to ``run_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    paths = [_bars(run_dir, summary)]
    if len({r["E"] for r in records if r["E"] is not None}) > 1:
        paths += _versus_e(run_dir, summary)
    for axis in sorted({a for r in records for a in r.get("axes", {})}):
        paths.append(_versus_axis(run_dir, records, summary["primary_metric"], axis))
    return paths
