"""Measured vs published: the paper block of a paper run's report.

Every published number is a mean (± std) over a few runs; so is every measured one. Each row
therefore reports the difference measured − published with its **Welch 95% interval** (both
standard errors, Welch–Satterthwaite degrees of freedom, :mod:`lcdense.paper.statistics`), and
the words below, each defined in :data:`DEFINITIONS` and printed with the report:

- ``consistent`` / ``not consistent``: the interval contains 0 / excludes it. Absence of evidence of
  a difference is not evidence of equivalence:
- ``equivalent within δ`` / ``not shown equivalent within δ``: the two one-sided tests (TOST,
  α = 0.05 each), only with a margin δ declared before the run (``lcdense paper run --delta``,
  recorded as ``paper.delta``);
- ``descriptive only``: a side with one run, or no published std: the difference, no test;
- ``smoke: not comparable``: a shortened recipe is never compared (its numbers are still shown).

The paper's claims are about gaps, so the block also compares each measured gap (paired by seed)
with the published one: the published gap's standard error comes from the published stds (its
runs taken as independent), the interval of measured − published from both, and the **sign** of
the measured gap is checked against the published one. Gaps the paper states in its text as a
range (Section 4) are checked against that range, descriptively. Every row names the paper version
of its numbers and whether that version's recipe is the one run; where a recipe reports the best
epoch, the gaps on the last epoch are given beside them.

>>> verdict(welch(92.50, 0.20, 4, 92.34, 0.24, 4), scale="full")
'consistent'
>>> verdict(None, scale="full")
'descriptive only'
"""
from __future__ import annotations

import math
from typing import Any

from ..engine.records import SummaryRecord
from ..engine.variants import sweep_point
from .registry import Experiment, Published, PublishedGap, version_label
from .statistics import ALPHA, LEVEL, combine, consistent, tost, welch

SMOKE = "smoke: not comparable"
DESCRIPTIVE = "descriptive only"

#: Every word of the paper block, defined; the report prints the ones it uses.
DEFINITIONS: dict[str, str] = {
    "consistent": f"the Welch {LEVEL:.0%} interval of measured − published (standard errors of both sides, "
                  "Welch–Satterthwaite degrees of freedom) contains 0",
    "not consistent": f"that {LEVEL:.0%} interval excludes 0",
    "equivalent within δ": f"two one-sided t-tests (TOST, α = {ALPHA} each) reject |true difference| ≥ δ, i.e. the "
                           f"{1 - 2 * ALPHA:.0%} interval lies inside (−δ, δ); δ was declared before the run",
    "not shown equivalent within δ": "TOST does not reject |true difference| ≥ δ",
    DESCRIPTIVE: "one side has a single run, or the paper gives no std: the difference is shown, nothing is tested",
    SMOKE: "a shortened recipe: its numbers are shown, nothing is compared",
    "in the published range": "the measured mean gap lies in the range the paper states in its text (descriptive)",
    "outside the published range": "the measured mean gap lies outside the range the paper states (descriptive)",
    "sign agrees": "the measured mean gap and the published gap have the same sign; 'clear' when the measured "
                   f"gap's paired {LEVEL:.0%} interval excludes 0",
}


def verdict(comparison: dict[str, Any] | None, *, scale: str) -> str:
    """The word for one difference: see :data:`DEFINITIONS`.

    Args:
        comparison: :func:`~lcdense.paper.statistics.welch` or ``combine``'s result, or None when
            there is nothing to test (one run on a side, or no published std).
        scale: ``full`` or ``smoke``.

    Returns:
        ``consistent``, ``not consistent``, ``descriptive only`` or ``smoke: not comparable``.
    """
    if scale != "full":
        return SMOKE
    if comparison is None:
        return DESCRIPTIVE
    return "consistent" if consistent(comparison) else "not consistent"


def equivalence(comparison: dict[str, Any] | None, delta: float | None, *, scale: str) -> dict[str, Any] | None:
    """TOST of one difference against the declared margin ``delta`` (None: no claim is made).

    Args:
        comparison: As for :func:`verdict`.
        delta: The margin declared before the run, in the published unit, or None.
        scale: ``full`` or ``smoke``.

    Returns:
        None without a margin, a test, or at smoke scale; else :func:`~lcdense.paper.statistics.tost`'s
        result with ``word`` added.
    """
    if delta is None or comparison is None or scale != "full":
        return None
    result = tost(comparison, delta)
    result["word"] = "equivalent within δ" if result["equivalent"] else "not shown equivalent within δ"
    return result


def _measured(summary: SummaryRecord, group: str, variant: str, metric: str, factor: float) -> dict[str, Any] | None:
    stats = summary.groups.get(group, {}).get("variants", {}).get(variant, {}).get("metrics", {}).get(metric)
    return None if stats is None else {"mean": stats["mean"] * factor, "std": stats["std"] * factor, "n": stats["n"]}


def _row_comparison(measured: dict[str, Any] | None, mean: float, std: float | None,
                    runs: int | None) -> dict[str, Any] | None:
    if measured is None or std is None or not runs or runs < 2 or measured["n"] < 2:
        return None
    return welch(measured["mean"], measured["std"], measured["n"], mean, std, runs)


def _label(experiment: Experiment, version: str) -> dict[str, Any]:
    return {"version": version, "version_label": version_label(version),
            "recipe_run": version == experiment.recipe_version}


def _value_rows(summary: SummaryRecord, experiment: Experiment, published: Published, scale: str,
                delta: float | None) -> list[dict[str, Any]]:
    rows = []
    for value in published.values:
        group = sweep_point(value.axes)
        measured = _measured(summary, group, value.variant, published.metric, experiment.factor)
        test = _row_comparison(measured, value.mean, value.std, published.runs)
        rows.append({
            "variant": value.variant, "group": group, "metric": published.metric, "source": published.source,
            **_label(experiment, published.version), "published_mean": value.mean, "published_std": value.std,
            "published_runs": published.runs, "published_runs_note": published.runs_note, "measured": measured,
            "difference": None if measured is None else measured["mean"] - value.mean,
            "se": test and test["se"], "df": test and test["df"], "ci95": test and test["ci95"],
            "verdict": "not measured" if measured is None else verdict(test, scale=scale),
            "equivalence": equivalence(test, delta, scale=scale),
        })
    return rows


def _sides(label: str) -> tuple[str, str]:
    left, _, right = label.partition(" - ")
    return left, right


def _measured_gaps(summary: SummaryRecord, experiment: Experiment) -> list[tuple[str, dict[str, Any], str]]:
    """(group, gap, epoch) of every measured gap the comparison can use: the primary metric's,
    and, where the recipe reports the best epoch, the last epoch's."""
    last = experiment.last_epoch.get(summary.primary_metric)
    out = []
    for group, content in summary.groups.items():
        for gap in content.get("gaps", []):
            metric = gap.get("metric", summary.primary_metric)
            if metric == summary.primary_metric:
                out.append((group, gap, "best" if last else "final"))
            elif metric == last:
                out.append((group, gap, "last"))
    return out


def _scaled_gap(gap: dict[str, Any], factor: float) -> dict[str, Any]:
    out = {"mean": gap["mean"] * factor, "std": gap["std"] * factor, "n": gap["n"]}
    if "ci95" in gap:
        out["ci95"] = [x * factor for x in gap["ci95"]]
    return out


def _sign(measured: dict[str, Any], published: float) -> dict[str, Any]:
    agrees = math.copysign(1, measured["mean"]) == math.copysign(1, published) and measured["mean"] != 0
    clear = "ci95" in measured and (measured["ci95"][0] > 0 or measured["ci95"][1] < 0)
    return {"sign_agrees": agrees, "sign_clear": clear}


def _gap_rows(summary: SummaryRecord, experiment: Experiment, scale: str, delta: float | None) -> list[dict[str, Any]]:
    """Measured paired gaps next to the gaps of the published means (same source, same sweep point)."""
    rows = []
    for published in experiment.published:
        if published.metric != experiment.metric:
            continue
        for group, gap, epoch in _measured_gaps(summary, experiment):
            left, right = _sides(gap["gap"])
            values = {v.variant: v for v in published.values if sweep_point(v.axes) == group}
            if left not in values or right not in values:
                continue
            a, b = values[left], values[right]
            measured = _scaled_gap(gap, experiment.factor)
            pub = {"mean": a.mean - b.mean, "se": None, "df": None}
            runs = published.runs or 0
            if a.std is not None and b.std is not None and runs >= 2:
                pub.update(welch(a.mean, a.std, runs, b.mean, b.std, runs))
                pub = {"mean": pub["difference"], "se": pub["se"], "df": pub["df"]}
            test = None
            if pub["se"] is not None and measured["n"] >= 2:
                test = combine(measured["mean"] - pub["mean"],
                               [(measured["std"] / math.sqrt(measured["n"]), measured["n"] - 1), (pub["se"], pub["df"])])
            rows.append({
                "gap": gap["gap"], "group": group, "epoch": epoch, "metric": gap.get("metric", summary.primary_metric),
                "source": published.source, **_label(experiment, published.version), "published_gap": pub,
                "published_runs": published.runs, "measured_gap": measured,
                "difference": measured["mean"] - pub["mean"], "se": test and test["se"], "df": test and test["df"],
                "ci95": test and test["ci95"], "verdict": verdict(test, scale=scale),
                "equivalence": equivalence(test, delta, scale=scale), **_sign(measured, pub["mean"]),
            })
    return rows


def _stated_gap_rows(summary: SummaryRecord, experiment: Experiment, scale: str) -> list[dict[str, Any]]:
    """Measured gaps next to the gaps the paper states in its text (a value or a range)."""
    rows = []
    for stated in experiment.published_gaps:
        group = sweep_point(stated.axes)
        for g, gap, epoch in _measured_gaps(summary, experiment):
            if g != group or gap["gap"] != stated.gap:
                continue
            measured = _scaled_gap(gap, experiment.factor)
            reference = stated.mean if stated.mean is not None else \
                (stated.high if stated.low is None else stated.low if stated.high is None else (stated.low + stated.high) / 2)
            rows.append({
                "gap": stated.gap, "group": group, "epoch": epoch, "metric": gap.get("metric", summary.primary_metric),
                "source": stated.source, **_label(experiment, stated.version), "stated": _stated(stated),
                "note": stated.note, "published_runs": stated.runs, "measured_gap": measured,
                "difference": None if stated.mean is None else measured["mean"] - stated.mean,
                "verdict": SMOKE if scale != "full" else _range_word(measured["mean"], stated),
                **_sign(measured, reference),
            })
    return rows


def _stated(gap: PublishedGap) -> str:
    if gap.mean is not None:
        return f"{gap.mean:+.2f}"
    if gap.low is None:
        return f"≤ {gap.high:+.2f}"
    if gap.high is None:
        return f"≥ {gap.low:+.2f}"
    return f"{gap.low:+.2f} to {gap.high:+.2f}"


def _range_word(value: float, gap: PublishedGap) -> str:
    if gap.mean is not None:
        return DESCRIPTIVE
    inside = (gap.low is None or value >= gap.low) and (gap.high is None or value <= gap.high)
    return "in the published range" if inside else "outside the published range"


def compare(summary: SummaryRecord, experiment: Experiment, scale: str, overrides: list[str],
            delta: float | None = None) -> dict[str, Any]:
    """The paper block of ``summary``: each published number and gap next to what the run measured.

    Args:
        summary: The run's summary (its ``gaps`` carry the metric they are of).
        experiment: The paper experiment the run reproduces.
        scale: ``full`` or ``smoke``.
        overrides: What the user changed from the experiment's grid.
        delta: The equivalence margin declared before the run (published unit), or None.

    Returns:
        ``rows`` (published numbers), ``gaps`` (published gaps), ``stated_gaps`` (gaps stated in
        the text), the definitions of the words used, the versions and the settings.
    """
    ordered = sorted(experiment.published, key=lambda p: p.version != experiment.recipe_version)
    rows = [row for published in ordered for row in _value_rows(summary, experiment, published, scale, delta)]
    gaps = sorted(_gap_rows(summary, experiment, scale, delta), key=lambda r: not r["recipe_run"])
    stated = _stated_gap_rows(summary, experiment, scale)
    versions = [p.version for p in ordered] + [g.version for g in experiment.published_gaps]
    compared = experiment.recipe_version if experiment.recipe_version in versions else (versions[0] if versions else None)
    if experiment.published or experiment.published_gaps:
        note = None
    elif experiment.source.startswith("Figure"):
        note = f"the paper shows {experiment.source} as a figure only: no published numbers to compare"
    else:
        note = f"the paper published no numbers for {experiment.source}: these are the first"
    used = {r["verdict"] for r in [*rows, *gaps, *stated]} | {r["equivalence"]["word"] for r in [*rows, *gaps]
                                                                  if r.get("equivalence")}
    if gaps or stated:
        used.add("sign agrees")
    return {"experiment": experiment.name, "source": experiment.source, "scale": scale, "unit": experiment.unit,
            "metric": experiment.metric, "recipe": experiment.recipe, "recipe_version": experiment.recipe_version,
            "recipe_version_label": version_label(experiment.recipe_version), "recipe_note": experiment.recipe_note,
            "compared_with": compared and version_label(compared), "last_epoch": dict(experiment.last_epoch),
            "overrides": list(overrides), "delta": delta,
            "definitions": {word: text for word, text in DEFINITIONS.items() if word in used},
            "rows": rows, "gaps": gaps, "stated_gaps": stated, "note": note}


__all__ = ["DEFINITIONS", "compare", "equivalence", "verdict"]
