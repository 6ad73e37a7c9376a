"""Summaries of a run: mean ± std per variant, the frozen-vs-learnable gaps paired by seed with a
95% t-interval, ``results.csv``, ``summary.json``, ``summary.md`` and plots — all from the cells'
records alone (:mod:`lcdense.engine.records`), so ``lcdense report`` can re-render them at any time.
:func:`paired_gap` is the one definition of a gap, used by the summary and by the filter analysis.

>>> gap = paired_gap({0: 0.90, 1: 0.92, 2: 0.95}, {0: 0.88, 1: 0.91})   # seed 2 has no partner
>>> gap["seeds"], round(gap["mean"], 4), round(gap["std"], 4)
([0, 1], 0.015, 0.0071)
>>> [round(x, 3) for x in gap["ci95"]]
[-0.049, 0.079]
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any

from ..base.errors import LcdenseError
from ..base.files import write_text
from ..engine.events import Callback, RunEnd
from ..engine.records import CellRecord, SummaryRecord, read_cells, write_summary
from ..engine.rundir import RunDir
from ..engine.variants import sweep_point
from ..paper import compare, get_experiment
from ..paper.statistics import interval
from .style import variant_order

# (name of the gap, minuend kind, subtrahend kind)
GAPS: tuple[tuple[str, str, str], ...] = (
    ("frozen - learnable", "frozen", "learnable"),
    ("lc-frozen - lc-learnable", "lc-frozen", "lc-learnable"),
    ("lc-frozen - learnable", "lc-frozen", "learnable"),
    ("lc-learnable - learnable", "lc-learnable", "learnable"),
)


def describe(values: list[float]) -> dict[str, Any]:
    """Mean, sample std (0 for one value) and count."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def paired_gap(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """Mean of a − b over the seeds both have, with a 95% t-interval when there are ≥ 2 seeds."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    out = describe(diffs)
    out["seeds"] = seeds
    if len(diffs) >= 2:
        out["ci95"] = interval(out["mean"], out["std"] / math.sqrt(len(diffs)), len(diffs) - 1)
    return out


def summarize(records: list[CellRecord], primary: str, higher_is_better: bool,
              also: tuple[str, ...] = ()) -> SummaryRecord:
    """The summary of a run (what ``summary.json`` holds): the gaps of the primary metric and of
    the metrics ``also`` (e.g. the last epoch's top-1 where the primary is the best epoch's), each
    gap naming its ``metric``. Diverged cells (status ``diverged``) are left out of every statistic
    and gap; each group lists them under ``diverged`` (cell id → what went non-finite), and a
    variant whose cells all diverged has only ``diverged``."""
    groups: dict[str, dict[str, list[CellRecord]]] = {}
    diverged: dict[str, dict[str, list[CellRecord]]] = {}
    for r in records:
        point = sweep_point(r.axes)
        if r.status == "diverged":
            diverged.setdefault(point, {}).setdefault(r.variant, []).append(r)
            groups.setdefault(point, {})
        else:
            groups.setdefault(point, {}).setdefault(r.variant, []).append(r)
    out = SummaryRecord(primary_metric=primary, higher_is_better=higher_is_better, groups={})
    headlines = list(dict.fromkeys(h for r in records if r.done for h in r.suite_headlines()))  # of every group
    for group, by_variant in groups.items():
        variants = {}
        lost = diverged.get(group, {})
        for name in sorted(set(by_variant) | set(lost), key=variant_order):
            rs = by_variant.get(name, [])
            if not rs:
                variants[name] = {"kind": lost[name][0].kind, "E": lost[name][0].E, "seeds": [], "metrics": {},
                                  "costs": {}, "diverged": sorted(r.id for r in lost[name])}
                continue
            metrics = sorted({k for r in rs for k in r.metrics})
            variants[name] = {
                "kind": rs[0].kind, "E": rs[0].E, "seeds": sorted(r.seed for r in rs),
                "metrics": {m: describe([r.metrics[m] for r in rs if m in r.metrics]) for m in metrics},
                "costs": {c: describe([r.costs[c] for r in rs]) for c in
                          ("trainable_params", "frozen_params", "forward_macs_per_sample", "wall_time_s",
                           "peak_memory_mb") if all(isinstance(r.costs.get(c), (int, float)) for r in rs)},
                "provenance": variant_provenance(rs),
            }
            if name in lost:
                variants[name]["diverged"] = sorted(r.id for r in lost[name])
        gaps = [gap for metric in (primary, *(m for m in also if m != primary))
                for gap in variant_gaps(by_variant, metric)]
        out.groups[group] = {"variants": variants, "gaps": gaps}
        if lost:
            out.groups[group]["diverged"] = {r.id: r.error or "not finite" for rs in lost.values() for r in rs}
        if headlines:  # the evaluation suites' headline metrics get the primary metric's gaps
            out.groups[group]["suite_gaps"] = {m: variant_gaps(by_variant, m) for m in headlines}
    return out


def variant_gaps(by_variant: dict[str, list[CellRecord]], metric: str) -> list[dict[str, Any]]:
    """The :data:`GAPS` in ``metric`` between the variants of one sweep point, paired by seed."""
    gaps = []
    by_kind_e = {(rs[0].kind, rs[0].E): {r.seed: r.metrics.get(metric) for r in rs} for rs in by_variant.values()}
    expansions = sorted({e for _, e in by_kind_e if e is not None})
    for gap_name, left, right in GAPS:
        uses_e = "lc" in gap_name
        for E in expansions if uses_e else [None]:
            a = by_kind_e.get((left, E if left.startswith("lc") else None))
            b = by_kind_e.get((right, E if right.startswith("lc") else None))
            stats = a and b and paired_gap(_known(a), _known(b))
            if stats:
                label = gap_name.replace("lc-frozen", f"lc-frozen@{E}").replace("lc-learnable", f"lc-learnable@{E}")
                gaps.append({"gap": label, "E": E, "metric": metric, **stats})
    return gaps


def variant_provenance(records: list[CellRecord]) -> dict[str, Any]:
    """What the cells of one variant did (``provenance`` of their records): spatial inits, train and
    eval precisions, the weights the primary metric came from, the conversion scope (of the
    conversion report), and which cells resumed, exactly or not.

    >>> cell = CellRecord(id="frozen__seed0", variant="frozen", provenance={"init": "orthogonal",
    ...     "precision": {"train": "bf16", "eval": "fp32"}, "primary_weights": "model",
    ...     "resume": {"resumed": True, "exact": False, "resumes": []}})
    >>> variant_provenance([cell])["approximate_resumes"], variant_provenance([cell])["precision_train"]
    (['frozen__seed0'], ['bf16'])
    """
    provenance = [(r.id, r.provenance or {}) for r in records]

    def values(get: Any) -> list[str]:
        return sorted({str(get(p)) if get(p) is not None else "not recorded" for _, p in provenance})

    return {
        "init": values(lambda p: p.get("init")),
        "precision_train": values(lambda p: p.get("precision", {}).get("train")),
        "precision_eval": values(lambda p: p.get("precision", {}).get("eval")),
        "primary_weights": values(lambda p: p.get("primary_weights")),
        "scope": sorted({str((r.conversion or {}).get("scope") or "not recorded").split(":")[0] for r in records}),
        "resumed": [i for i, p in provenance if p.get("resume", {}).get("resumed")],
        "approximate_resumes": [i for i, p in provenance if p.get("resume", {}).get("exact") is False],
    }


def beside_metric(primary: str, metrics: Any) -> str | None:
    """The metric of the other weights reported beside ``primary``: ``raw_<primary>`` (the trained
    weights, where the primary metric is an EMA's), else the EMA's ``ema_<primary>`` or
    ``ema_<primary>_best`` (where the primary metric is the trained weights'); None without an EMA.

    >>> beside_metric("map50_95", ["map50_95", "raw_map50_95"]), beside_metric("top1", ["top1", "ema_top1_best"])
    ('raw_map50_95', 'ema_top1_best')
    """
    return next((m for m in (f"raw_{primary}", f"ema_{primary}", f"ema_{primary}_best") if m in metrics), None)


def ema_lines(variants: dict[str, Any], primary: str) -> list[str]:
    """What a group's table says of an EMA: whose weights the primary metric and the metric beside
    it are of, and, where an LC-learnable variant is in the table, that its EMA is not the EMA of
    the combined filters."""
    names = {m for v in variants.values() for m in v["metrics"]}
    other = beside_metric(primary, names)
    if other is None:
        return []
    ema_primary = other.startswith("raw_")
    line = (f"EMA: {primary} is of the EMA weights, {other} of the trained (raw) weights" if ema_primary else
            f"EMA: {primary} is of the trained (raw) weights, {other} of the EMA weights") + \
        "; both are in the table."
    if any(v["kind"] == "lc-learnable" for v in variants.values()):
        line += (" For lc-learnable the EMA averages each LC-Block's spatial bank P and combination W separately, "
                 "which is not the EMA of its combined filters W' = P·W (a product of averages, not the average "
                 "of products): its EMA metric is of a model no training step produced, so read its raw weights' "
                 "metric beside it. (lc-frozen: P is fixed, and the EMA of W gives exactly P·EMA(W).)")
    return [line]


def provenance_lines(variants: dict[str, Any], primary: str = "") -> list[str]:
    """Markdown lines under a group's tables: the spatial init and the conversion scope of each
    variant, whose weights an EMA metric is of (:func:`ema_lines`), and — only where they apply —
    precisions other than fp32, primary metrics from other than the trained weights, and
    approximate resumes."""
    prov = {name: v["provenance"] for name, v in variants.items() if "provenance" in v}
    if not prov:
        return []
    inits = {"/".join(p["init"]) for p in prov.values()}
    lines = ["Spatial init: " + (f"{inits.pop()} (every variant)" if len(inits) == 1 else
                                 "; ".join(f"{n} {'/'.join(p['init'])}" for n, p in prov.items()))]
    precision = [f"{n} trained in {'/'.join(p['precision_train'])}, evaluated in {'/'.join(p['precision_eval'])}"
                 for n, p in prov.items() if p["precision_train"] != ["fp32"] or p["precision_eval"] != ["fp32"]]
    if precision:
        lines.append("**Precision not fp32:** " + "; ".join(precision))
    weights = {n: "/".join(p["primary_weights"]) for n, p in prov.items() if p["primary_weights"] != ["model"]}
    if weights:
        lines.append("Primary metric from the " + "; ".join(f"{w} weights ({n})" for n, w in weights.items()))
    scopes = {"/".join(p.get("scope", ["not recorded"])) for p in prov.values()}
    lines.append("Conversion scope: " + (f"{scopes.pop()} (every variant)" if len(scopes) == 1 else "; ".join(
        f"{n} {'/'.join(p.get('scope', ['not recorded']))}" for n, p in prov.items())))
    lines += ema_lines(variants, primary)
    approximate = [i for p in prov.values() for i in p["approximate_resumes"]]
    if approximate:
        lines.append("**Approximate resumes** (continued from ultralytics' fp16 EMA checkpoint, not an exact fp32 "
                     "state): " + ", ".join(approximate))
    return ["", *(f"{line}  " for line in lines)]


def _known(values: dict[int, float | None]) -> dict[int, float]:
    return {seed: v for seed, v in values.items() if v is not None}


def _fmt(stats: dict[str, Any], scale: float = 1.0) -> str:
    return f"{stats['mean'] * scale:.4f} ± {stats['std'] * scale:.4f}"


def markdown_table(summary: SummaryRecord) -> str:
    """The variant table and the gap table, as Markdown (also what ``lcdense run`` prints)."""
    primary = summary.primary_metric
    lines: list[str] = []
    for group, content in summary.groups.items():
        if group:
            lines += [f"### {group}", ""]
        other = beside_metric(primary, {m for v in content["variants"].values() for m in v["metrics"]})
        beside = f" {other} (mean ± std) |" if other else ""
        lines += [f"| variant | seeds | {primary} (mean ± std) |{beside} trainable params | MACs/sample | time/cell (s) |",
                  "|---|---|---|---|---|---|" + ("---|" if other else "")]
        for name, v in content["variants"].items():
            if not v["seeds"]:  # every cell of the variant diverged
                lines.append(f"| {name} | 0 ({len(v['diverged'])} diverged) | diverged |{' n/a |' if other else ''} n/a | n/a | n/a |")
                continue
            m = v["metrics"].get(primary)
            c = v["costs"]
            seeds = f"{len(v['seeds'])}" + (f" (+{len(v['diverged'])} diverged)" if v.get("diverged") else "")
            shown = f" {_fmt(v['metrics'][other]) if v['metrics'].get(other) else 'n/a'} |" if other else ""
            lines.append(
                f"| {name} | {seeds} | {_fmt(m) if m else 'n/a'} |{shown} "
                f"{c['trainable_params']['mean']:,.0f} | {c.get('forward_macs_per_sample', {}).get('mean', float('nan')):,.0f} | "
                f"{c['wall_time_s']['mean']:.1f} |"
            )
        metrics = list(dict.fromkeys(g.get("metric", primary) for g in content["gaps"]))
        for metric in metrics:
            lines += ["", f"| gap in {metric} (paired by seed) | mean ± std | 95% CI | seeds |", "|---|---|---|---|"]
            for g in content["gaps"]:
                if g.get("metric", primary) != metric:
                    continue
                ci = f"[{g['ci95'][0]:+.4f}, {g['ci95'][1]:+.4f}]" if "ci95" in g else "n/a (1 seed)"
                lines.append(f"| {g['gap']} | {g['mean']:+.4f} ± {g['std']:.4f} | {ci} | {g['n']} |")
        if content.get("diverged"):
            lines += ["", "**Diverged** (loss or metrics not finite; left out of the statistics and the gaps): "
                      + "; ".join(f"{cell} ({why})" for cell, why in content["diverged"].items()) + "  "]
        lines += provenance_lines(content["variants"], primary)
        lines += suite_tables(content)
        lines.append("")
    if summary.paper:
        lines += paper_table(summary.paper, primary)
    return "\n".join(lines)


def suite_tables(content: dict[str, Any]) -> list[str]:
    """Markdown of one sweep point's evaluation-suite numbers (``lcdense evaluate``): each headline
    metric per variant with its gaps, and for the corruptions suite its metric per corruption and severity
    (means over seeds).

    >>> content = {"variants": {"learnable": {"seeds": [0], "metrics": {"corruptions/top1": {"mean": 0.5, "std": 0.0, "n": 1},
    ...     "corruptions/top1/fog/s1": {"mean": 0.6, "std": 0.0, "n": 1}, "corruptions/top1/clean": {"mean": 0.7, "std": 0.0, "n": 1}}}},
    ...     "suite_gaps": {"corruptions/top1": []}}
    >>> print("\\n".join(suite_tables(content)[3:6]))
    | variant | corruptions/top1 |
    |---|---|
    | learnable | 0.5000 ± 0.0000 |
    """
    headlines = list(content.get("suite_gaps", {}))
    if not headlines:
        return []
    variants = content["variants"]
    lines = ["", "Evaluation suites (`lcdense evaluate`), mean ± std over seeds:", "",
             "| variant | " + " | ".join(headlines) + " |", "|---|" + "---|" * len(headlines)]
    for name, v in variants.items():
        cells = [_fmt(v["metrics"][m]) if m in v["metrics"] else "n/a" for m in headlines]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    rows = [(m, g) for m in headlines for g in content["suite_gaps"][m]]
    if rows:
        lines += ["", "| gap (paired by seed) | metric | mean ± std | 95% CI | seeds |", "|---|---|---|---|---|"]
        for metric, g in rows:
            ci = f"[{g['ci95'][0]:+.4f}, {g['ci95'][1]:+.4f}]" if "ci95" in g else "n/a (1 seed)"
            lines.append(f"| {g['gap']} | {metric} | {g['mean']:+.4f} ± {g['std']:.4f} | {ci} | {g['n']} |")
    for metric in (m for m in headlines if m.startswith("corruptions/")):
        lines += corruption_table(variants, metric)
    return lines


def corruption_table(variants: dict[str, Any], metric: str) -> list[str]:
    """The corruptions suite's ``metric`` per corruption (rows) and severity (columns), one table per variant."""
    lines: list[str] = []
    for name, v in variants.items():
        grid: dict[str, dict[str, float]] = {}
        for key, stats in v["metrics"].items():
            parts = key[len(metric) + 1:].split("/") if key.startswith(metric + "/") else []
            if len(parts) == 2 and parts[1].startswith("s"):
                grid.setdefault(parts[0], {})[parts[1]] = stats["mean"]
        if not grid:
            continue
        levels = sorted({s for row in grid.values() for s in row})
        clean = v["metrics"].get(f"{metric}/clean")
        lines += ["", f"{metric} of **{name}** per corruption and severity" +
                  (f" (clean: {clean['mean']:.4f})" if clean else "") + ":", "",
                  "| corruption | " + " | ".join(levels) + " | mean |", "|---|" + "---|" * (len(levels) + 1)]
        for corruption, row in grid.items():
            mean = v["metrics"].get(f"{metric}/{corruption}", {}).get("mean")
            lines.append(f"| {corruption} | " + " | ".join(f"{row[s]:.4f}" if s in row else "" for s in levels)
                         + (f" | {mean:.4f} |" if mean is not None else " | |"))
        lines.append("| **mean** | " + " | ".join(f"{v['metrics'][f'{metric}/{s}']['mean']:.4f}"
                                                 if f"{metric}/{s}" in v["metrics"] else "" for s in levels)
                     + f" | {v['metrics'][metric]['mean']:.4f} |")
    return lines


PROVENANCE_COLUMNS: tuple[str, ...] = ("init", "precision_train", "precision_eval", "primary_weights", "resumed",
                                       "resume_exact")


def provenance_row(record: CellRecord) -> list[Any]:
    """A record's :data:`PROVENANCE_COLUMNS` (empty where an older record has none)."""
    p = record.provenance or {}
    precision, resume = p.get("precision", {}), p.get("resume", {})
    return [p.get("init"), precision.get("train"), precision.get("eval"), p.get("primary_weights"),
            resume.get("resumed"), resume.get("exact")]


def _num(value: float | None, unit: str, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    digits = 2 if unit == "percent" else 4
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _interval(row: dict[str, Any], unit: str) -> str:
    if not row.get("ci95"):
        return "n/a"
    df = "∞" if math.isinf(row["df"]) else f"{row['df']:.1f}"
    return f"[{_num(row['ci95'][0], unit, True)}, {_num(row['ci95'][1], unit, True)}] (df {df})"


def _version(row: dict[str, Any]) -> str:
    return f"{row['source']} [{row['version']}{', recipe run' if row['recipe_run'] else ', other recipe'}]"


def _verdict(row: dict[str, Any]) -> str:
    tost = row.get("equivalence")
    return row["verdict"] + ("" if not tost else f"; {tost['word']} (TOST p = {tost['p']:.3f})")


def _sign(row: dict[str, Any]) -> str:
    return ("agrees" if row["sign_agrees"] else "opposite") + (" (clear)" if row["sign_clear"] else "")


def _measured_gap(gap: dict[str, Any], unit: str) -> str:
    ci = f" [{_num(gap['ci95'][0], unit, True)}, {_num(gap['ci95'][1], unit, True)}]" if "ci95" in gap else ""
    return f"{_num(gap['mean'], unit, True)}{ci} ({gap['n']})"


def paper_table(block: dict[str, Any], primary: str) -> list[str]:
    """The paper section: each published number and gap next to the run's, with the difference,
    its Welch 95% interval and the verdict, each word defined under the tables.

    >>> block = {"experiment": "table1-svhn", "source": "Table 1", "scale": "full", "unit": "percent",
    ...          "recipe": "configs/c.yaml", "recipe_version_label": "arXiv v2", "recipe_note": None,
    ...          "compared_with": "ICLR", "overrides": [], "delta": None, "note": None, "gaps": [], "stated_gaps": [],
    ...          "definitions": {"consistent": "the interval contains 0"}, "last_epoch": {}, "rows": [
    ...     {"variant": "learnable", "group": "", "metric": "top1", "source": "ICLR", "version": "iclr2024",
    ...      "recipe_run": False, "published_mean": 96.38, "published_std": 0.12, "published_runs": 4,
    ...      "measured": {"mean": 96.3, "std": 0.1, "n": 4}, "difference": -0.08, "ci95": [-0.3, 0.14], "df": 5.8,
    ...      "verdict": "consistent", "equivalence": None}]}
    >>> paper_table(block, "top1")[-4]
    '| learnable | 96.30 ± 0.10 (4) | 96.38 ± 0.12 (4) | ICLR [iclr2024, other recipe] | -0.08 | [-0.30, +0.14] (df 5.8) | consistent |'
    """
    unit_name, unit = (" (%)" if block["unit"] == "percent" else ""), block["unit"]
    lines = [f"### Paper: {block['experiment']} ({block['source']}), {block['scale']} scale", ""]
    recipe = f"Recipe `{block['recipe']}`: {block['recipe_version_label']}"
    if block.get("recipe_note"):
        recipe += f". {block['recipe_note']}"
    lines += [recipe + ".", ""]
    if block["scale"] != "full":
        lines += [f"**{block['scale'].upper()} run**: a shortened recipe, not comparable to the paper; "
                  "no agreement is claimed (the numbers are shown, nothing is tested).", ""]
    if block["overrides"]:
        lines += [f"Changed from the paper's grid: {', '.join(block['overrides'])}.", ""]
    if not block["rows"] and not block.get("stated_gaps"):
        return lines + [f"Paper: {block['note']}.", ""]
    lines += [f"Compared first with: {block['compared_with']}; every row names its version and whether its recipe "
              "is the one run.", ""]
    delta = block.get("delta")
    lines += ["Equivalence margin: " + (f"δ = {_num(delta, unit)}{' points' if unit == 'percent' else ''}, declared "
                                         "before the run (`paper.delta`)." if delta is not None else
                                         "none was declared before the run (`lcdense paper run --delta`), so no "
                                         "equivalence is claimed."), ""]
    if block["rows"]:
        lines += [f"| variant | measured{unit_name}: mean ± std (runs) | paper{unit_name}: mean ± std (runs) | source "
                  f"[version] | Δ measured − paper | Welch 95% CI of Δ | verdict |", "|---|---|---|---|---|---|---|"]
        for row in block["rows"]:
            name = row["variant"] + (f" [{row['group']}]" if row["group"] else "") + \
                (f" {row['metric']}" if row["metric"] != primary else "")
            m = row["measured"]
            measured = "not measured" if m is None else f"{_num(m['mean'], unit)} ± {_num(m['std'], unit)} ({m['n']})"
            paper = _num(row["published_mean"], unit) + \
                ("" if row["published_std"] is None else f" ± {_num(row['published_std'], unit)}") + \
                f" ({row['published_runs'] or '?'}{'*' if row.get('published_runs_note') else ''})"
            lines.append(f"| {name} | {measured} | {paper} | {_version(row)} | "
                         f"{_num(row['difference'], unit, True)} | {_interval(row, unit)} | {_verdict(row)} |")
        notes = sorted({r["published_runs_note"] for r in block["rows"] if r.get("published_runs_note")})
        lines.append("")
        lines += [f"\\* runs: {n}  " for n in notes] + ([""] if notes else [])
    if block["gaps"]:
        lines += [f"Gaps{unit_name}: measured paired by seed, mean [95% CI] (seeds); the paper's gap of its means, "
                  "± its standard error from the published stds.", "",
                  "| gap | epoch | measured | paper | source [version] | Δ measured − paper | Welch 95% CI of Δ | "
                  "verdict | sign |", "|---|---|---|---|---|---|---|---|---|"]
        for g in block["gaps"]:
            pub = g["published_gap"]
            paper = _num(pub["mean"], unit, True) + ("" if pub["se"] is None else f" ± {_num(pub['se'], unit)}")
            where = f" [{g['group']}]" if g["group"] else ""
            lines.append(f"| {g['gap']}{where} | {g['epoch']} | {_measured_gap(g['measured_gap'], unit)} | {paper} | {_version(g)} | "
                         f"{_num(g['difference'], unit, True)} | {_interval(g, unit)} | {_verdict(g)} | {_sign(g)} |")
        lines.append("")
    if block.get("stated_gaps"):
        lines += [f"Gaps the paper states in its text{unit_name}:", "",
                  "| gap | epoch | measured | paper states | source [version] | verdict | sign |",
                  "|---|---|---|---|---|---|---|"]
        for g in block["stated_gaps"]:
            lines.append(f"| {g['gap']} [{g['group']}] | {g['epoch']} | {_measured_gap(g['measured_gap'], unit)} | "
                         f"{g['stated']} | {_version(g)} | {g['verdict']} | {_sign(g)} |")
        lines.append("")
    if block.get("last_epoch"):
        lines += ["Epochs: the recipe reports the **best** epoch (validation-selected, optimistic, and possibly a "
                  "different epoch per variant); the **last** epoch's gaps are given beside them.", ""]
    lines += ["Words: " + "; ".join(f"**{word}**: {text}" for word, text in block["definitions"].items()) + ".", ""]
    return lines


def results_csv(records: list[CellRecord]) -> str:
    """One row per cell: identity, every metric, digests and costs."""
    metric_names = sorted({k for r in records for k in r.metrics})
    axis_names = sorted({k for r in records for k in r.axes})
    cost_names = ["trainable_params", "frozen_params", "total_params", "forward_macs_per_sample", "train_time_s",
                  "wall_time_s", "peak_memory_mb", "peak_memory_kind", "device", "data_wait_share"]
    paper = ["paper_experiment", "paper_scale"] if any(r.paper for r in records) else []
    header = ["id", "status", "task", "variant", "mode", "spatial", "E", *axis_names, "seed", "init_seed", "data_seed",
              *metric_names, "frozen_digest_before", "frozen_digest_after", *cost_names, *PROVENANCE_COLUMNS, *paper]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for r in records:
        writer.writerow([r.id, r.status, r.task, r.variant, r.mode, r.spatial, r.E,
                         *(r.axes.get(a) for a in axis_names), r.seed, r.init_seed, r.data_seed,
                         *(r.metrics.get(m) for m in metric_names), r.frozen_digest_before,
                         r.frozen_digest_after, *(r.costs.get(c) for c in cost_names), *provenance_row(r),
                         *(((r.paper or {}).get("experiment"), (r.paper or {}).get("scale")) if paper else ())])
    return buffer.getvalue()


def _paper_settings(run: RunDir) -> dict[str, Any] | None:
    """The ``paper`` section of the run's saved config, if the run reproduces a paper experiment."""
    if not run.config_yaml.is_file():
        return None
    paper = run.read_config().get("paper") or {}
    return paper if paper.get("experiment") else None


def write_report(run_dir: Path, primary: str, higher_is_better: bool,
                 extra_sections: list[str] = ()) -> tuple[SummaryRecord, str]:
    """(Re)write results.csv, summary.json, summary.md and figures of ``run_dir``; returns the
    summary and its Markdown table (with the paper column where the run reproduces a paper experiment)."""
    from .plots import plot_run

    run = RunDir(run_dir)
    records = read_cells(run)
    if not records:
        raise LcdenseError(f"{run_dir} has no finished cells yet; run or resume it first")
    paper = _paper_settings(run)
    experiment = get_experiment(paper["experiment"]) if paper else None
    if experiment:  # a paper run is summarised in the experiment's metric (fig. 4b: FGSM accuracy)
        primary = experiment.metric
    summary = summarize(records, primary, higher_is_better,
                        also=tuple(experiment.last_epoch.get(m) for m in [primary] if experiment and
                                   experiment.last_epoch.get(m)))
    if experiment:
        summary.paper = compare(summary, experiment, paper["scale"], paper["overrides"], paper.get("delta"))
    write_text(run.results_csv, results_csv(records))
    write_summary(run, summary)
    finite = [r for r in records if r.done]
    figures = plot_run(run_dir, finite, summary) if finite else []
    table = markdown_table(summary)
    title = f"# {records[0].task} run `{run.path.name}`"
    if paper:
        title += f": paper experiment {paper['experiment']}, {paper['scale']} scale"
    parts = [title, "",
             f"Primary metric: **{primary}** ({'higher' if higher_is_better else 'lower'} is better). "
             f"Gaps are paired by seed; the interval is a 95% Student-t interval over seeds.", "", table]
    parts += [f"![{Path(f).stem}]({f})" for f in figures]
    parts += ["", *extra_sections]
    write_text(run.summary_md, "\n".join(parts) + "\n")
    return summary, table


class Report(Callback):
    """The run's report as a callback: at run end, ``results.csv``, ``summary.json``,
    ``summary.md`` (with the sections other callbacks added) and the figures."""

    def on_run_end(self, event: RunEnd) -> None:
        event.summary, event.table = write_report(event.run_dir, event.plan.primary_metric,
                                                  event.plan.higher_is_better, event.sections)
