"""The run directory's layout has one owner (lcdense.engine.rundir): the exact paths, a fresh run's
files all where RunDir says, and no other module of lcdense/ spelling a run file's name."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lcdense
import lcdense.api.benchmark
from lcdense.engine.records import read_plan
from lcdense.engine.rundir import CellDir, RunDir, cache_folder, dry_run_file, runs_folder

PACKAGE = Path(__file__).resolve().parents[1] / "lcdense"

#: Attribute (or call) of RunDir("R") → its path relative to R.
RUN_LAYOUT = {
    "config_yaml": "config.yaml",
    "plan_json": "plan.json",
    "environment_json": "environment.json",
    "results_csv": "results.csv",
    "summary_json": "summary.json",
    "summary_md": "summary.md",
    "analysis_json": "analysis.json",
    "analysis_csv": "analysis.csv",
    "analysis_md": "analysis.md",
    "figures": "figures",
    "jobs_json": "jobs.json",
    "jobs": "jobs",
    "job_folder": "jobs/%j",
    "mlflow_db": "mlflow.db",
    "mlartifacts": "mlartifacts",
    "cells": "cells",
}
#: Attribute of CellDir("R/cells/C") → its path relative to the cell folder.
CELL_LAYOUT = {
    "cell_json": "cell.json",
    "conversion_txt": "conversion.txt",
    "filters_pt": "filters.pt",
    "checkpoint_pt": "checkpoint.pt",
    "train_log": "train.log",
    "history_csv": "history.csv",
}
#: The file names that only rundir.py may spell ("tensorboard" is also a logger's name).
NAMES = {*RUN_LAYOUT.values(), *CELL_LAYOUT.values(), "dry-run", ".cache"} - {"jobs/%j"}


def test_the_layout_paths():
    run = RunDir("R")
    assert {attr: getattr(run, attr).relative_to("R").as_posix() for attr in RUN_LAYOUT} == RUN_LAYOUT
    assert run.figure("gap.png") == Path("R/figures/gap.png")
    assert run.tensorboard("gaps") == Path("R/tensorboard/gaps")
    cell = run.cell("lc-frozen@8__seed0")
    assert cell == CellDir(Path("R/cells/lc-frozen@8__seed0")) and cell.name == "lc-frozen@8__seed0"
    assert {attr: getattr(cell, attr).relative_to(cell.path).as_posix() for attr in CELL_LAYOUT} == CELL_LAYOUT
    assert cell.per_unit_csv("class") == Path("R/cells/lc-frozen@8__seed0/per_class.csv")
    assert RunDir.at("out", "toy", "demo") == RunDir(Path("out/toy/demo")) == RunDir(RunDir("out/toy/demo"))
    assert runs_folder("out", "toy") == Path("out/toy")
    assert dry_run_file("out", "toy", "20260101-000000") == Path("out/toy/dry-run/20260101-000000.json")
    assert cache_folder("out") == Path("out/.cache")
    assert str(run) == "R" and Path(run) == Path("R") and run.relative(run.figure("a.png")) == "figures/a.png"


def test_cell_dirs_and_config(tmp_path):
    run = RunDir(tmp_path)
    assert run.cell_dirs() == []
    with pytest.raises(lcdense.LcdenseError, match="is not an lcdense run directory \\(no config.yaml\\)"):
        run.read_config()
    for name in ("b", "a"):
        run.cell(name).path.mkdir(parents=True)
    run.cells.joinpath("stray.txt").write_text("")
    assert [c.name for c in run.cell_dirs()] == ["a", "b"]
    run.write_config({"task": "toy", "run": {"seeds": [0, 1]}})
    assert run.read_config() == {"task": "toy", "run": {"seeds": [0, 1]}}


def test_a_fresh_run_writes_where_rundir_says(tmp_path, monkeypatch):
    def no_read_back(run_dir):
        raise AssertionError(f"plan.json of the new run {run_dir} read back on the rank that wrote it")

    with monkeypatch.context() as patch:
        patch.setattr(lcdense.api.benchmark, "read_plan", no_read_back)
        result = lcdense.run("classification", E=8, seeds=[0], variants=["learnable", "lc-frozen"],
                             model={"width": 4, "depth": 8}, train={"epochs": 1},
                             **{"data.train_limit": 64, "data.val_limit": 64}, quiet=True, out=str(tmp_path))
    run = RunDir(result.run_dir)
    assert run == RunDir.at(tmp_path, "classification", result.run_dir.name)
    assert read_plan(run) == result.plan and run.read_config() == lcdense.load(run).config
    expected = {getattr(run, attr) for attr in ("config_yaml", "plan_json", "environment_json", "results_csv",
                                                 "summary_json", "summary_md", "analysis_json", "analysis_csv",
                                                 "analysis_md")}
    assert [c.name for c in run.cell_dirs()] == ["lc-frozen@8__seed0", "learnable__seed0"]  # sorted by id
    for cell in run.cell_dirs():
        assert not cell.checkpoint_pt.exists()  # removed once the cell finished
        expected |= {cell.cell_json, cell.conversion_txt, cell.filters_pt, cell.train_log, cell.history_csv,
                     cell.per_unit_csv("class"), cell.weights_file("model")}
        assert cell.weights_files() == {"model": cell.weights_file("model")}
    files = {p for p in run.path.rglob("*") if p.is_file()}
    figures = {p for p in files if p.parent == run.figures}
    assert figures and files - figures == expected
    linked = {run.relative(p) for p in figures}
    assert all(f"]({name})" in run.summary_md.read_text() for name in linked if name.startswith("figures/metric_"))


def _string_constants(tree: ast.Module) -> list[ast.Constant]:
    """The string constants of ``tree`` other than docstrings and dict keys (record fields, not paths)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body \
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            skip.add(id(body[0].value))
        if isinstance(node, ast.Dict):
            skip |= {id(k) for k in node.keys if k is not None}
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip]


def test_only_rundir_spells_the_run_files():
    found = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}"
             for path in sorted(PACKAGE.rglob("*.py")) if path.name != "rundir.py"
             for node in _string_constants(ast.parse(path.read_text())) if node.value in NAMES]
    assert found == [], "join run paths through lcdense.engine.rundir.RunDir/CellDir:\n" + "\n".join(found)
