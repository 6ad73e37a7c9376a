"""The Python API (lcdense.run / sweep / report / load), its records and events, and the packaging rules."""
from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lcdense
from lcdense.cli import main
from lcdense.engine.records import CellRecord, read_cells

ROOT = Path(__file__).parents[1]
TOY = {"E": 4, "epochs": 2, "quiet": True}


def _readme_block(heading: str, language: str = "python") -> str:
    section = (ROOT / "README.md").read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)[0]


def test_readme_python_api_example_runs(tmp_path, monkeypatch):
    """The README's example, as a notebook user would run it (in a fresh working directory)."""
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(printed):
        exec(compile(_readme_block("Python API"), "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.run_dir.parent == Path("runs/classification") and (result.run_dir / "summary.md").is_file()
    assert sorted(c.id for c in result.cells) == ["lc-frozen@8__seed0", "lc-frozen@8__seed1", "learnable__seed0",
                                                  "learnable__seed1"]
    width_8 = lcdense.count_parameters(lcdense.cifar_resnet(8, 8, num_classes=10))["trainable"]
    assert {c.costs["trainable_params"] for c in result.cells if c.variant == "learnable"} == {width_8}
    out = printed.getvalue()
    assert "learnable__seed0 epoch 1: train_loss" in out  # the callback saw every cell's epoch
    top1 = {(c.variant, c.seed): c.metrics["top1"] for c in result.cells}
    diffs = [top1[("lc-frozen@8", s)] - top1[("learnable", s)] for s in (0, 1)]
    gap = namespace["gap"]
    assert gap["mean"] == pytest.approx(sum(diffs) / 2) and gap["seeds"] == [0, 1]
    assert gap["ci95"][0] <= gap["mean"] <= gap["ci95"][1]
    on_disk = json.loads((result.run_dir / "summary.json").read_text())
    assert on_disk["format"] == "lcdense-summary/1"
    assert next(g for g in on_disk["groups"][""]["gaps"] if g["gap"] == "lc-frozen@8 - learnable") == gap


def test_cli_and_api_give_the_same_run(toy_installed, tmp_path):
    assert main(["run", "--task", "toy", "--E", "4", "--variants", "frozen,lc-learnable", "--epochs", "2", "--set",
                 "train.lr=0.05", "--quiet", "--no-analysis", "--out", str(tmp_path), "--name", "cli"]) == 0
    api = lcdense.run("toy", E="4", variants="frozen,lc-learnable", epochs=2, quiet=True, analysis=False,
                      out=str(tmp_path), name="api", train={"lr": 0.05})
    cli = lcdense.load(tmp_path / "toy" / "cli")
    assert api.run_dir == tmp_path / "toy" / "api" and api.complete and cli.complete
    assert (tmp_path / "toy" / "api" / "config.yaml").read_text().replace("name: api", "name: cli") == \
        (tmp_path / "toy" / "cli" / "config.yaml").read_text()
    assert [c.id for c in api.cells] == [c.id for c in cli.cells]
    for a, b in zip(api.cells, cli.cells):
        assert a.metrics == b.metrics and a.frozen_digest_after == b.frozen_digest_after
        assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert _same_but_costs(api.summary.groups, cli.summary.groups)
    assert api.config["train"]["lr"] == 0.05 and api.config["train"]["epochs"] == 2


def _same_but_costs(a: dict, b: dict) -> bool:
    strip = {g: {n: {k: v for k, v in d.items() if k != "costs"} for n, d in c["variants"].items()} for g, c in a.items()}
    other = {g: {n: {k: v for k, v in d.items() if k != "costs"} for n, d in c["variants"].items()} for g, c in b.items()}
    return strip == other and [c["gaps"] for c in a.values()] == [c["gaps"] for c in b.values()]


def test_settings_spellings_and_errors(toy_installed, tmp_path):
    with pytest.raises(lcdense.LcdenseError, match="unknown config key 'train.lrr'"):
        lcdense.run("toy", **{"train.lrr": 1}, out=str(tmp_path))
    with pytest.raises(lcdense.LcdenseError, match="unknown setting 'speed'; pass a dotted key"):
        lcdense.run("toy", speed=3, out=str(tmp_path))
    with pytest.raises(lcdense.LcdenseError, match="unknown key 'lrr' in settings.train"):
        lcdense.run("toy", train={"lrr": 1}, out=str(tmp_path))
    with pytest.raises(lcdense.LcdenseError, match="task 'toy' cannot sweep 'depth'"):
        lcdense.sweep("toy", axes={"depth": [8]}, out=str(tmp_path))
    assert not (tmp_path / "toy").exists()


def test_events_reach_callbacks_in_order(toy_installed, tmp_path):
    seen: list[tuple] = []

    class Spy(lcdense.Callback):
        def on_run_start(self, event):
            seen.append(("run_start", len(event.plan.cells), (event.run_dir / "plan.json").is_file()))

        def on_cell_start(self, event):
            seen.append(("cell_start", event.cell.id, event.index, event.skipped))

        def on_epoch_end(self, event):
            seen.append(("epoch_end", event.cell_id, event.epoch, round(event.metrics["train_loss"], 9)))

        def on_cell_end(self, event):  # before cell.json; the built-in SaveFilters ran first
            seen.append(("cell_end", event.record.id, (event.cell_dir / "cell.json").exists(),
                         (event.cell_dir / "filters.pt").exists()))

        def on_run_end(self, event):  # after the report callback
            seen.append(("run_end", len(event.records), event.summary.primary_metric, "## Filter analysis"
                         in (event.run_dir / "summary.md").read_text()))

    result = lcdense.run("toy", **TOY, variants="learnable,frozen", out=str(tmp_path), callbacks=[Spy()])
    losses = {c.id: [round(h["train_loss"], 9) for h in c.history] for c in result.cells}
    assert seen == [
        ("run_start", 2, True),
        ("cell_start", "learnable__seed0", 1, False),
        *[("epoch_end", "learnable__seed0", e, losses["learnable__seed0"][e - 1]) for e in (1, 2)],
        ("cell_end", "learnable__seed0", False, True),
        ("cell_start", "frozen__seed0", 2, False),
        *[("epoch_end", "frozen__seed0", e, losses["frozen__seed0"][e - 1]) for e in (1, 2)],
        ("cell_end", "frozen__seed0", False, True),
        ("run_end", 2, "accuracy", True),
    ]
    seen.clear()
    resumed = lcdense.run(resume=result.run_dir, callbacks=[Spy()], quiet=True)
    assert [s[:4] for s in seen if s[0] == "cell_start"] == [("cell_start", "learnable__seed0", 1, True),
                                                              ("cell_start", "frozen__seed0", 2, True)]
    assert [c.metrics for c in resumed.cells] == [c.metrics for c in result.cells]


def test_records_round_trip_and_refuse_other_versions(toy_installed, tmp_path, capsys):
    result = lcdense.run("toy", **TOY, variants="frozen", out=str(tmp_path), analysis=False)
    cell_file = result.run_dir / "cells" / "frozen__seed0" / "cell.json"
    raw = json.loads(cell_file.read_text())
    assert raw["format"] == "lcdense-cell/1" and raw["status"] == "done"
    record = CellRecord.from_dict({**raw, "added_later": {"x": 1}})
    assert record.to_dict() == {**raw, "added_later": {"x": 1}}  # unknown keys survive a round trip
    unversioned = {k: v for k, v in raw.items() if k != "format"}  # written before the field existed
    assert CellRecord.from_dict(unversioned).metrics == result.cells[0].metrics
    cell_file.write_text(json.dumps({**raw, "format": "lcdense-cell/2"}))
    assert main(["report", str(result.run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("lcdense: error: cell record frozen__seed0 is format lcdense-cell/2; this lcdense reads "
                   "lcdense-cell/1 (upgrade lcdense to read it)")
    plan = json.loads((result.run_dir / "plan.json").read_text())
    (result.run_dir / "plan.json").write_text(json.dumps({**plan, "format": "lcdense-plan/0"}))
    with pytest.raises(lcdense.RecordFormatError, match="plan.json is format lcdense-plan/0"):
        lcdense.run(resume=result.run_dir)


def test_tasks_use_only_the_public_api():
    """A built-in task imports lcdense itself, never its modules (what it needs is exported)."""
    offenders = []
    for path in sorted((ROOT / "tasks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith("lcdense.")]
            if isinstance(node, ast.ImportFrom) and node.module == "lcdense":
                missing = [a.name for a in node.names if a.name not in lcdense.__all__]
                offenders += [f"{path.relative_to(ROOT)}: lcdense.{n} is not in lcdense.__all__" for n in missing]
    assert offenders == []


def test_a_missing_extra_names_the_pip_install(tmp_path):
    """Without ultralytics the detection task says, in one line, what to install."""
    code = ("import importlib.util as u; find = u.find_spec; "
            "u.find_spec = lambda name, *a: None if name == 'ultralytics' else find(name, *a); "
            "from lcdense.cli import main; raise SystemExit(main(['run', '--task', 'detection', '--out', %r]))"
            % str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == ("lcdense: error: task 'detection' needs ultralytics, which is not installed: "
                                   "pip install \"lcdense[detection]\"")


def test_built_in_tasks_are_entry_points_of_lcdense_tasks():
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group="lcdense.tasks")}
    assert {k: found[k] for k in ("classification", "detection", "segmentation")} == {
        "classification": "lcdense_tasks.classification:ClassificationTask",
        "detection": "lcdense_tasks.detection:DetectionTask",
        "segmentation": "lcdense_tasks.segmentation:SegmentationTask"}
    assert type(lcdense.get_task("classification")).__module__ == "lcdense_tasks.classification"


def test_read_cells_skips_failed_and_half_written_cells(tmp_path):
    from lcdense.engine.records import write_cell
    from lcdense.engine.variants import CellSpec, Variant

    for name in "abc":
        (tmp_path / "cells" / name).mkdir(parents=True)
    write_cell(tmp_path / "cells" / "a", CellRecord(id="learnable__seed0", variant="learnable", metrics={"m": 1.0}))
    write_cell(tmp_path / "cells" / "b", CellRecord.failed(CellSpec(Variant("frozen"), 0, {}), "moved"))
    (tmp_path / "cells" / "c" / "cell.json").write_text('{"id": "x", "var')
    assert [r.id for r in read_cells(tmp_path)] == ["learnable__seed0"]
    failed = json.loads((tmp_path / "cells" / "b" / "cell.json").read_text())
    assert failed == {"format": "lcdense-cell/1", "id": "frozen__seed0", "variant": "frozen", "seed": 0,
                      "status": "failed", "error": "moved"}


def test_every_package_folder_is_installed():
    """pyproject lists the packages (tasks/ maps to lcdense_tasks): a new sub-package must be listed."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert project["package-dir"] == {"lcdense_tasks": "tasks"}
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.glob("lcdense/**/__init__.py")}
    folders |= {".".join(("lcdense_tasks", *p.parent.relative_to(ROOT / "tasks").parts))
                for p in (ROOT / "tasks").glob("**/__init__.py")}
    assert "tasks" not in project["packages"] and sorted(project["packages"]) == sorted(folders)
