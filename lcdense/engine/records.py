"""The record schema of a run directory, read and written here only.

- ``cells/<id>/cell.json``: a :class:`CellRecord` (one variant × seed × sweep point: metrics,
  history, digests, conversion report, costs, provenance);
- ``plan.json``: a :class:`PlanRecord` (task, primary metric, sweep-axis keys, the cell grid);
- ``summary.json``: a :class:`SummaryRecord` (per-variant statistics and the paired gaps).

Every file carries ``"format": "lcdense-<kind>/<version>"``. A file without one is version 1 (it
was written before the field existed); a file of another version is refused with one line that
says so (:class:`RecordFormatError`).

Adding a field: give the dataclass a new field with a default (files written before it read with
the default) and write it in ``to_dict``; keys this version does not know are kept in ``extra``
and written back unchanged, so a record passes through an older lcdense intact. Bump the version
only for a change older readers would misread (a renamed or re-defined key), and read the old one
in ``from_dict``.

>>> record = CellRecord.from_dict({"id": "frozen__seed0", "variant": "frozen", "seed": 0,
...                                "status": "done", "metrics": {"top1": 0.5}, "new_key": 1})
>>> record.metrics["top1"], record.kind, record.extra
(0.5, 'frozen', {'new_key': 1})
>>> record.to_dict()["format"], record.to_dict()["new_key"]
('lcdense-cell/1', 1)
>>> CellRecord.from_dict({"format": "lcdense-cell/2", "id": "x", "variant": "frozen", "seed": 0})
Traceback (most recent call last):
...
lcdense.engine.records.RecordFormatError: cell record x is format lcdense-cell/2; this lcdense reads lcdense-cell/1 (upgrade lcdense to read it)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from ..base.errors import LcdenseError
from ..base.files import write_json
from .rundir import CellDir, PathLike, RunDir
from .variants import CellSpec, Variant

CELL_FORMAT = "lcdense-cell/1"
#: The statuses of a cell that finished (and is not run again); ``diverged`` ones are left out of the gaps.
FINISHED = ("done", "diverged")
PLAN_FORMAT = "lcdense-plan/1"
SUMMARY_FORMAT = "lcdense-summary/1"


class RecordFormatError(LcdenseError):
    """A record file written in a format version this lcdense does not read."""


def _check_format(data: dict[str, Any], expected: str, what: str) -> None:
    found = data.get("format", expected.rsplit("/", 1)[0] + "/1")  # unversioned files are version 1
    if found != expected:
        raise RecordFormatError(f"{what} is format {found}; this lcdense reads {expected} "
                                f"(upgrade lcdense to read it)")


class _Record:
    """Shared dict conversion: known fields in order, unknown keys kept in ``extra``."""

    FORMAT: ClassVar[str]
    _optional: ClassVar[tuple[str, ...]] = ()  # written only when not None

    @classmethod
    def _known(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "extra"]  # type: ignore[arg-type]

    @classmethod
    def _split(cls, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        known = set(cls._known())
        return ({k: v for k, v in data.items() if k in known},
                {k: v for k, v in data.items() if k not in known and k != "format"})

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able content of the file (``format`` first, then the fields, then ``extra``)."""
        out: dict[str, Any] = {"format": self.FORMAT}
        for name in self._known():
            value = getattr(self, name)
            if value is None and name in self._optional:
                continue
            out[name] = value
        out.update(self.extra)  # type: ignore[attr-defined]
        return out


@dataclass
class CellRecord(_Record):
    """``cell.json``: one finished (or failed) cell.

    Attributes:
        id: The cell's id (its folder name).
        task: The task's name.
        variant: The variant's name (e.g. ``"lc-frozen@8"``).
        kind: The variant's kind (``"lc-frozen"``; taken from ``variant`` if not given).
        mode: The variant's conversion mode.
        spatial: The variant's spatial bank (``"frozen"``, ``"learnable"``), or None.
        E: The LC-Block expansion, or None.
        axes: The cell's sweep point (axis → value).
        seed: The cell's seed.
        init_seed: The seed of the model's initialisation.
        data_seed: The seed of data order and augmentation.
        status: ``"done"``, ``"diverged"`` (finished, but its loss or metrics went non-finite:
            left out of the statistics and gaps) or ``"failed"``.
        primary_metric: The task's primary metric.
        metrics: The final numeric metrics.
        extra_metrics: The final non-numeric metrics.
        history: One entry per epoch.
        frozen_digest_before: The frozen digest before training.
        frozen_digest_after: The frozen digest after training.
        costs: Parameters, MACs, times, peak memory, device and host.
        conversion: The conversion report as a dict.
        models: The weights the cell keeps (``model``: the final ones; ``best``, ``ema``): name →
            ``file``, ``sha256``, ``bytes``, ``frozen_digest`` (see :mod:`lcdense.engine.trained`).
        provenance: How the cell's numbers came about (precision, init, resume, weights evaluated).
        suites: The evaluation suites run on the cell after training (``lcdense evaluate``): name →
            ``headline`` (its metric names shown in the report), ``seconds``, ``settings``, ``weights``,
            ``info``, ``notes``; their numbers are in ``metrics`` as ``<suite>/<name>``.
        paper: A paper run's experiment, scale, recipe and overrides.
        error: Why the cell failed, or what went non-finite in a diverged cell.
        extra: Keys of the file that this version does not know, kept.
    """

    FORMAT: ClassVar[str] = CELL_FORMAT
    _optional: ClassVar[tuple[str, ...]] = ("error", "provenance", "paper")

    id: str
    task: str | None = None
    variant: str = ""
    kind: str = ""
    mode: str | None = None
    spatial: str | None = None
    E: int | None = None
    axes: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    init_seed: int | None = None
    data_seed: int | None = None
    status: str = "done"
    primary_metric: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    extra_metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    frozen_digest_before: str | None = None
    frozen_digest_after: str | None = None
    costs: dict[str, Any] = field(default_factory=dict)
    conversion: dict[str, Any] = field(default_factory=dict)
    #: The weights the cell keeps: name → file, sha256, bytes, frozen_digest (empty before lcdense kept them).
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: How the cell's numbers came about (precision, init, resume, weights evaluated); optional.
    provenance: dict[str, Any] | None = None
    #: The evaluation suites run after training: name → headline, seconds, settings, weights, info, notes.
    suites: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: A paper run's experiment, scale, recipe and overrides (see :mod:`lcdense.paper`); optional.
    paper: dict[str, Any] | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.kind and self.variant:  # lc-frozen@8 → kind lc-frozen, E 8
            kind, _, e_text = self.variant.partition("@")
            self.kind = kind
            if self.E is None and e_text.isdigit():
                self.E = int(e_text)

    @property
    def done(self) -> bool:
        """Whether the cell finished with finite numbers."""
        return self.status == "done"

    @property
    def finished(self) -> bool:
        """Whether the cell finished training and evaluation (``done`` or ``diverged``): it is not run again."""
        return self.status in FINISHED

    def suite_headlines(self) -> list[str]:
        """The headline metrics of the suites run on this cell, as ``<suite>/<name>`` metric keys.

        >>> CellRecord(id="x", variant="frozen", suites={"adversarial": {"headline": ["fgsm_top1"]}}).suite_headlines()
        ['adversarial/fgsm_top1']
        """
        return [f"{suite}/{name}" for suite, entry in self.suites.items() for name in entry.get("headline", [])]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellRecord:
        what = f"cell record {data.get('id', '?')}"
        _check_format(data, CELL_FORMAT, what)
        known, extra = cls._split(data)
        missing = [key for key in ("id", "variant", "seed") if key not in known]
        if missing:
            raise LcdenseError(f"{what} lacks {', '.join(missing)}; it was not written by lcdense")
        return cls(**known, extra=extra)

    @classmethod
    def failed(cls, spec: CellSpec, error: str) -> CellRecord:
        """The record of a cell whose training failed (e.g. its frozen filters moved)."""
        return cls(id=spec.id, variant=spec.variant.name, seed=spec.seed, status="failed", error=error,
                   axes=dict(spec.axes))

    def to_dict(self) -> dict[str, Any]:
        if self.finished:
            return super().to_dict()
        return {"format": self.FORMAT, "id": self.id, "variant": self.variant, "seed": self.seed,
                "status": self.status, "error": self.error, **self.extra}


@dataclass
class PlanRecord(_Record):
    """``plan.json``: what a run is (``--resume``, ``report`` and the cluster jobs read it back).

    Attributes:
        task: The task's name.
        primary_metric: The task's primary metric.
        higher_is_better: Whether a higher primary metric is better.
        axis_keys: Sweep axis → the dotted config key it sets.
        cells: The cell grid: ``kind``, ``E``, ``seed`` and ``axes`` of each cell.
        paper: A paper run's experiment, scale, recipe and overrides; None otherwise.
        extra: Keys of the file that this version does not know, kept.
    """

    FORMAT: ClassVar[str] = PLAN_FORMAT
    _optional: ClassVar[tuple[str, ...]] = ("paper",)

    task: str
    primary_metric: str
    higher_is_better: bool
    axis_keys: dict[str, str]
    cells: list[dict[str, Any]]
    #: A paper run's experiment, scale, recipe and overrides; None otherwise.
    paper: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, task: Any, cells: list[CellSpec], axis_keys: dict[str, str],
           paper: dict[str, Any] | None = None) -> PlanRecord:
        return cls(task=task.name, primary_metric=task.primary_metric, higher_is_better=task.higher_is_better,
                   axis_keys=dict(axis_keys), paper=paper,
                   cells=[{"kind": c.variant.kind, "E": c.variant.E, "seed": c.seed, "axes": c.axes} for c in cells])

    @classmethod
    def from_dict(cls, data: dict[str, Any], what: str = "plan record") -> PlanRecord:
        _check_format(data, PLAN_FORMAT, what)
        known, extra = cls._split(data)
        return cls(**known, extra=extra)

    def specs(self) -> list[CellSpec]:
        """The cell grid as :class:`~lcdense.engine.variants.CellSpec` objects."""
        return [CellSpec(Variant(c["kind"], c["E"]), c["seed"], c["axes"]) for c in self.cells]


@dataclass
class SummaryRecord(_Record):
    """``summary.json``: per sweep point (``groups``, '' for a plain run) the variants' statistics
    (mean, std, n per metric and cost) and the gaps in the primary metric, paired by seed.

    Attributes:
        primary_metric: The task's primary metric.
        higher_is_better: Whether a higher primary metric is better.
        groups: Sweep point → its variants' statistics and ``gaps``.
        paper: A paper run's comparison with the published numbers.
        extra: Keys of the file that this version does not know, kept.
    """

    FORMAT: ClassVar[str] = SUMMARY_FORMAT
    _optional: ClassVar[tuple[str, ...]] = ("paper",)

    primary_metric: str
    higher_is_better: bool
    groups: dict[str, dict[str, Any]]
    #: A paper run's comparison with the published numbers (:func:`lcdense.paper.compare`); optional.
    paper: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], what: str = "summary record") -> SummaryRecord:
        _check_format(data, SUMMARY_FORMAT, what)
        known, extra = cls._split(data)
        return cls(**known, extra=extra)

    def gap(self, name: str, group: str = "", metric: str | None = None) -> dict[str, Any] | None:
        """The gap called ``name`` (e.g. ``"frozen - learnable"``) at sweep point ``group``, in
        ``metric`` (default: the primary metric; a gap without ``metric`` is of the primary)."""
        metric = metric or self.primary_metric
        return next((g for g in self.groups.get(group, {}).get("gaps", [])
                     if g["gap"] == name and g.get("metric", self.primary_metric) == metric), None)


def _read(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LcdenseError(f"cannot read {what} {path} ({type(exc).__name__}); fix or delete the file") from None
    if not isinstance(data, dict):
        raise LcdenseError(f"{what} {path} must hold a JSON object")
    return data


def write_cell(cell_dir: PathLike, record: CellRecord) -> None:
    """Write the cell's ``cell.json`` atomically."""
    write_json(CellDir(cell_dir).cell_json, record.to_dict())


def read_cell(cell_dir: PathLike) -> CellRecord | None:
    """The record of ``cell_dir`` (done or failed), or None if it has none or a half-written one."""
    path = CellDir(cell_dir).cell_json
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        raise LcdenseError(f"cell file {path} must hold a JSON object")
    return CellRecord.from_dict(data)


def finished_cell(cell_dir: PathLike) -> CellRecord | None:
    """The record of ``cell_dir`` if the cell finished (status done or diverged), else None."""
    record = read_cell(cell_dir)
    return record if record is not None and record.finished else None


def read_cells(run_dir: PathLike) -> list[CellRecord]:
    """Every finished cell of ``run_dir``, in cell-directory order."""
    found = (finished_cell(cell) for cell in RunDir(run_dir).cell_dirs())
    return [record for record in found if record is not None]


def write_plan(run_dir: PathLike, plan: PlanRecord) -> None:
    write_json(RunDir(run_dir).plan_json, plan.to_dict())


def read_plan(run_dir: PathLike) -> PlanRecord:
    """``plan.json`` of ``run_dir``; a directory without one is not a run directory."""
    path = RunDir(run_dir).plan_json
    if not path.is_file():
        raise LcdenseError(f"{run_dir} is not an lcdense run directory (no plan.json); check the path")
    return PlanRecord.from_dict(_read(path, "plan file"), what=path.name)


def write_summary(run_dir: PathLike, summary: SummaryRecord) -> None:
    write_json(RunDir(run_dir).summary_json, summary.to_dict())


def read_summary(run_dir: PathLike) -> SummaryRecord | None:
    """``summary.json`` of ``run_dir``, or None before the first report."""
    path = RunDir(run_dir).summary_json
    return SummaryRecord.from_dict(_read(path, "run summary"), what=path.name) if path.is_file() else None


__all__ = ["CELL_FORMAT", "FINISHED", "PLAN_FORMAT", "SUMMARY_FORMAT", "CellRecord", "PlanRecord", "RecordFormatError",
           "SummaryRecord", "finished_cell", "read_cell", "read_cells", "read_plan", "read_summary", "write_cell",
           "write_plan", "write_summary"]
