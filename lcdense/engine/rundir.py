"""The layout of a run directory, in this one place: :class:`RunDir` and :class:`CellDir` know
every path of a run, and no other module joins them.

::

    OUT/TASK/NAME/               RunDir.at(OUT, TASK, NAME)
      config.yaml                the resolved config (read_config, write_config)
      plan.json                  the cell plan (lcdense.engine.records.PlanRecord)
      environment.json           versions, host and device
      results.csv, summary.json, summary.md         the report
      analysis.json, analysis.csv, analysis.md      the filter analysis
      figures/                   the report's and the analysis's PNGs
      jobs.json, jobs/           the executors' jobs (submitit's files under jobs/<job id>/)
      tensorboard/, mlflow.db, mlartifacts/         the experiment trackers
      cells/<cell id>/           CellDir: cell.json, conversion.txt, filters.pt, checkpoint.pt,
                                 train.log, history.csv, per_<unit>.csv, the trained weights
                                 (model.safetensors; best, ema: <name>.safetensors), export/,
                                 suites/ (lcdense evaluate's progress while a suite runs)
    OUT/TASK/dry-run/<time>.json the estimates of a dry run
    OUT/.cache/                  generated datasets (unless run.cache_dir says otherwise)

>>> run = RunDir.at("runs", "classification", "demo")
>>> run.plan_json.as_posix(), run.relative(run.figure("gap.png"))
('runs/classification/demo/plan.json', 'figures/gap.png')
>>> cell = run.cell("lc-frozen@8__seed0")
>>> cell.name, cell.cell_json.as_posix()
('lc-frozen@8__seed0', 'runs/classification/demo/cells/lc-frozen@8__seed0/cell.json')
>>> RunDir("runs/classification/demo") == run, CellDir(cell) == cell  # any path, or a RunDir/CellDir
(True, True)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base.errors import LcdenseError
from ..base.files import write_text
from .config import dump, load_yaml

PathLike = str | os.PathLike[str]


def runs_folder(out: PathLike, task: str) -> Path:
    """``OUT/TASK``: where the runs of ``task`` (and its dry runs' estimates) go."""
    return Path(out) / task


def dry_run_file(out: PathLike, task: str, stamp: str) -> Path:
    """``OUT/TASK/dry-run/<stamp>.json``: the estimates of one dry run."""
    return runs_folder(out, task) / "dry-run" / f"{stamp}.json"


def cache_folder(out: PathLike) -> Path:
    """``OUT/.cache``: the default cache of generated datasets."""
    return Path(out) / ".cache"


def check_run_name(name: str) -> str:
    """``name`` if it is a plain directory name (a run stays inside ``OUT/TASK``), else a one-line error.

    >>> check_run_name("demo-1")
    'demo-1'
    >>> check_run_name("../../x")
    Traceback (most recent call last):
    ...
    lcdense.base.errors.LcdenseError: run name '../../x' must be a plain directory name (no '/', '\\', '..' or leading '.'), so that the run stays inside --out

    Args:
        name: the run's name (``--name``, ``run.name``).

    Returns:
        The name, unchanged.
    """
    text = str(name)
    if not text or text != text.strip() or text.startswith(".") or any(c in text for c in "/\\\0") \
            or Path(text).name != text:
        raise LcdenseError(f"run name '{text}' must be a plain directory name (no '/', '\\', '..' or leading '.'), "
                           "so that the run stays inside --out")
    return text


@dataclass(frozen=True)
class _Folder:
    """A folder given as any path-like (or another folder object), usable wherever a path is."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class CellDir(_Folder):
    """``cells/<cell id>/`` of a run: one cell's files (``path`` may be any path-like)."""

    @property
    def name(self) -> str:
        """The cell id."""
        return self.path.name

    @property
    def cell_json(self) -> Path:
        """The cell's record (:class:`lcdense.engine.records.CellRecord`); written last."""
        return self.path / "cell.json"

    @property
    def conversion_txt(self) -> Path:
        return self.path / "conversion.txt"

    @property
    def filters_pt(self) -> Path:
        """What the filter analysis needs of the trained model."""
        return self.path / "filters.pt"

    @property
    def checkpoint_pt(self) -> Path:
        """The last epoch's resume point (removed once the cell finished)."""
        return self.path / "checkpoint.pt"

    def weights_file(self, weights: str) -> Path:
        """``<weights>.safetensors``: the learned tensors of the cell's ``model`` (final), ``best`` or ``ema`` weights."""
        return self.path / f"{weights}.safetensors"

    def weights_files(self) -> dict[str, Path]:
        """The weights files that exist: name → path, sorted by name."""
        if not self.path.is_dir():
            return {}
        return {p.name.removesuffix(".safetensors"): p for p in sorted(self.path.glob("*.safetensors")) if p.is_file()}

    def suite_progress(self, suite: str) -> Path:
        """``suites/<suite>.partial.json``: the finished steps of a suite still running on the cell
        (removed once its results are in ``cell.json``)."""
        return self.path / "suites" / f"{suite}.partial.json"

    @property
    def export(self) -> Path:
        """``export/``: the cell's folded model as its library's own checkpoint (``lcdense export``)."""
        return self.path / "export"

    @property
    def train_log(self) -> Path:
        """The framework output of the cell's training and evaluation."""
        return self.path / "train.log"

    @property
    def history_csv(self) -> Path:
        return self.path / "history.csv"

    def per_unit_csv(self, unit: str) -> Path:
        """``per_<unit>.csv``: per-class (``class``), per-car, per-patient results."""
        return self.path / f"per_{unit}.csv"


@dataclass(frozen=True)
class RunDir(_Folder):
    """A run directory (``path`` may be any path-like): the paths of its files and cells, and its
    ``config.yaml``, read and written here only."""

    @classmethod
    def at(cls, out: PathLike, task: str, name: str) -> RunDir:
        """``OUT/TASK/NAME``; a ``name`` that is not a plain directory name is refused (:func:`check_run_name`)."""
        return cls(runs_folder(out, task) / check_run_name(name))

    @property
    def config_yaml(self) -> Path:
        return self.path / "config.yaml"

    @property
    def plan_json(self) -> Path:
        return self.path / "plan.json"

    @property
    def environment_json(self) -> Path:
        return self.path / "environment.json"

    @property
    def results_csv(self) -> Path:
        return self.path / "results.csv"

    @property
    def summary_json(self) -> Path:
        return self.path / "summary.json"

    @property
    def summary_md(self) -> Path:
        return self.path / "summary.md"

    @property
    def analysis_json(self) -> Path:
        return self.path / "analysis.json"

    @property
    def analysis_csv(self) -> Path:
        return self.path / "analysis.csv"

    @property
    def analysis_md(self) -> Path:
        return self.path / "analysis.md"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    def figure(self, name: str) -> Path:
        """``figures/<name>``."""
        return self.figures / name

    @property
    def jobs_json(self) -> Path:
        """Cell id → the last job submitted for it."""
        return self.path / "jobs.json"

    @property
    def jobs(self) -> Path:
        """submitit's folder of the run's jobs."""
        return self.path / "jobs"

    @property
    def job_folder(self) -> Path:
        """submitit's folder pattern of one job (``jobs/<job id>``)."""
        return self.jobs / "%j"

    def tensorboard(self, name: str) -> Path:
        """``tensorboard/<name>``: the event files of a cell (its id) or of the gap table (``gaps``)."""
        return self.path / "tensorboard" / name

    @property
    def mlflow_db(self) -> Path:
        return self.path / "mlflow.db"

    @property
    def mlartifacts(self) -> Path:
        return self.path / "mlartifacts"

    @property
    def cells(self) -> Path:
        return self.path / "cells"

    def cell(self, cell_id: str) -> CellDir:
        """``cells/<cell_id>``."""
        return CellDir(self.cells / cell_id)

    def cell_dirs(self) -> list[CellDir]:
        """The cell folders that exist, sorted by cell id."""
        if not self.cells.is_dir():
            return []
        return [CellDir(p) for p in sorted(self.cells.iterdir()) if p.is_dir()]

    def relative(self, path: PathLike) -> str:
        """``path`` relative to the run directory, with ``/`` (how ``summary.md`` links figures)."""
        return Path(path).relative_to(self.path).as_posix()

    def read_config(self) -> dict[str, Any]:
        """The run's resolved config (``config.yaml``); a directory without one is not a run directory."""
        if not self.config_yaml.is_file():
            raise LcdenseError(f"{self.path} is not an lcdense run directory (no config.yaml); check the path")
        return load_yaml(self.config_yaml)

    def write_config(self, config: dict[str, Any]) -> None:
        """Write the resolved config atomically."""
        write_text(self.config_yaml, dump(config))


__all__ = ["CellDir", "PathLike", "RunDir", "cache_folder", "check_run_name", "dry_run_file", "runs_folder"]
