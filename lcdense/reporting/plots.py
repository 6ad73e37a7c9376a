"""Figures of a run: the primary metric per variant (error bars = std over seeds) and, for
sweeps, the metric and the frozen − learnable gap against the swept axis (paper Fig. 4/6/7a); after
``lcdense evaluate``, each suite's headline metric per variant, and the corruptions' against severity.

Figures are written atomically under ``run_dir/figures`` and returned as relative paths; colours,
variant order and saving come from :mod:`lcdense.reporting.style`, the gaps from the summary (paired by seed).
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ..engine.records import CellRecord, SummaryRecord
from ..engine.rundir import RunDir
from .style import GAP, color, line_style, new_figure, save_figure, variant_order


def _save(fig: Any, run_dir: Path, name: str) -> str:
    run = RunDir(run_dir)
    path = run.figure(name)
    save_figure(fig, path)
    return run.relative(path)


def _bars(run_dir: Path, summary: SummaryRecord, metric: str | None = None) -> str:
    primary = metric or summary.primary_metric
    rows = [(f"{name}" + (f" [{group}]" if group else ""), v)
            for group, content in summary.groups.items() for name, v in content["variants"].items()
            if primary in v["metrics"]]
    fig = new_figure(max(5, 1.1 * len(rows) + 2), 4)
    ax = fig.add_subplot()
    means = [v["metrics"][primary]["mean"] for _, v in rows]
    stds = [v["metrics"][primary]["std"] for _, v in rows]
    ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color=[color(v["kind"]) for _, v in rows])
    ax.set_xticks(range(len(rows)), [label for label, _ in rows], rotation=30, ha="right")
    ax.set_ylabel(f"{primary} (mean ± std over seeds)")
    ax.set_title(f"{primary} per variant")
    lo = min(m - s for m, s in zip(means, stds))
    hi = max(m + s for m, s in zip(means, stds))
    pad = max(1e-3, (hi - lo) * 0.3)
    ax.set_ylim(max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, run_dir, "metric_per_variant.png" if metric is None else f"{_file_name(metric)}_per_variant.png")


def _file_name(metric: str) -> str:
    """A metric name as part of a file name.

    >>> _file_name("adversarial/fgsm_top1"), _file_name("cifar10.1/top1")
    ('adversarial_fgsm_top1', 'cifar10.1_top1')
    """
    return metric.replace("/", "_").replace("@", "")


def _versus_severity(run_dir: Path, summary: SummaryRecord, metric: str) -> str:
    """The corruptions suite's ``metric`` against severity per variant (0: the clean images)."""
    fig = new_figure(6, 4)
    ax = fig.add_subplot()
    shown: dict[str, int] = {}
    for group, content in summary.groups.items():
        for name, v in sorted(content["variants"].items(), key=lambda item: variant_order(item[0])):
            points = [(0, v["metrics"][f"{metric}/clean"])] if f"{metric}/clean" in v["metrics"] else []
            points += [(s, v["metrics"][f"{metric}/s{s}"]) for s in range(1, 6) if f"{metric}/s{s}" in v["metrics"]]
            if points:
                index = shown[color(name)] = shown.get(color(name), -1) + 1
                ax.errorbar([p[0] for p in points], [p[1]["mean"] for p in points], yerr=[p[1]["std"] for p in points],
                            capsize=3, label=name + (f" [{group}]" if group else ""), color=color(name),
                            **line_style(index))
    ax.set_xlabel("corruption severity (0: clean)")
    ax.set_ylabel(f"{metric.split('/')[1]} (mean over corruptions; ± std over seeds)")
    ax.set_title(f"{metric} vs severity")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, run_dir, f"{_file_name(metric)}_vs_severity.png")


def _versus_e(run_dir: Path, summary: SummaryRecord) -> list[str]:
    primary = summary.primary_metric
    paths = []
    for group, content in summary.groups.items():
        variants = content["variants"]
        fig = new_figure(11, 4)
        ax, gax = fig.subplots(1, 2)
        for kind in ("lc-learnable", "lc-frozen"):
            points = sorted((v["E"], v["metrics"][primary]) for v in variants.values() if v["kind"] == kind and primary in v["metrics"])
            if points:
                xs = [p[0] for p in points]
                ax.errorbar(xs, [p[1]["mean"] for p in points], yerr=[p[1]["std"] for p in points], marker="o",
                            capsize=3, label=kind, color=color(kind))
        for kind in ("learnable", "frozen"):
            v = next((v for v in variants.values() if v["kind"] == kind and primary in v["metrics"]), None)
            if v:
                m = v["metrics"][primary]
                ax.axhline(m["mean"], color=color(kind), linestyle="--", label=f"{kind} (no LC)")
                ax.axhspan(m["mean"] - m["std"], m["mean"] + m["std"], color=color(kind), alpha=0.1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("LC expansion E")
        ax.set_ylabel(f"{primary} (mean ± std)")
        ax.set_title(f"{primary} vs E" + (f" ({group})" if group else ""))
        ax.legend()
        gaps = sorted((g["E"], g) for g in content["gaps"] if g["gap"].startswith("lc-frozen@") and "lc-learnable@" in g["gap"])
        if gaps:
            xs = [e for e, _ in gaps]
            gax.errorbar(xs, [g["mean"] for _, g in gaps], yerr=[g["std"] for _, g in gaps], marker="o", capsize=3,
                         color=GAP, label="lc-frozen@E − lc-learnable@E")
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


def _versus_axis(run_dir: Path, records: list[CellRecord], primary: str, axis: str) -> str:
    fig = new_figure(6, 4)
    ax = fig.add_subplot()
    by_variant: dict[str, dict[Any, list[float]]] = {}
    for r in records:
        if axis in r.axes and primary in r.metrics:
            by_variant.setdefault(r.variant, {}).setdefault(r.axes[axis], []).append(r.metrics[primary])
    shown: dict[str, int] = {}
    for name, points in sorted(by_variant.items(), key=lambda item: variant_order(item[0])):
        xs = sorted(points, key=_axis_order)
        index = shown[color(name)] = shown.get(color(name), -1) + 1
        ax.errorbar([str(x) for x in xs], [statistics.fmean(points[x]) for x in xs],
                    yerr=[statistics.stdev(points[x]) if len(points[x]) > 1 else 0 for x in xs],
                    capsize=3, label=name, color=color(name), **line_style(index))
    ax.set_xlabel(axis)
    ax.set_ylabel(f"{primary} (mean ± std)")
    ax.set_title(f"{primary} vs {axis}")
    ax.legend()
    return _save(fig, run_dir, f"metric_vs_{axis}.png")


def plot_run(run_dir: Path, records: list[CellRecord], summary: SummaryRecord) -> list[str]:
    """Write the run's figures; returns their paths relative to ``run_dir``."""
    paths = [_bars(run_dir, summary)]
    if len({r.E for r in records if r.E is not None}) > 1:
        paths += _versus_e(run_dir, summary)
    for axis in sorted({a for r in records for a in r.axes}):
        paths.append(_versus_axis(run_dir, records, summary.primary_metric, axis))
    for metric in dict.fromkeys(h for r in records for h in r.suite_headlines()):  # the evaluation suites
        paths.append(_bars(run_dir, summary, metric))
        if metric.startswith("corruptions/"):
            paths.append(_versus_severity(run_dir, summary, metric))
    return paths
