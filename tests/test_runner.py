"""The runner through the CLI: run directory contents, statistics, resume after an interruption,
never overwriting, third-party tasks from entry points, and one-line errors."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lcdense.cli import main
from lcdense.reporting.summary import paired_gap

PLUGIN_DIR = Path(__file__).parent / "plugin"


def _run_dir(out: Path, task: str = "toy") -> Path:
    (run_dir,) = [p for p in (out / task).iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run_dir


def test_third_party_task_appears_and_runs_end_to_end(toy_installed, tmp_path, capsys):
    assert main(["tasks"]) == 0
    assert "toy" in capsys.readouterr().out.split()
    out = tmp_path / "runs"
    assert main(["run", "--task", "toy", "--E", "4", "--seeds", "0,1", "--out", str(out), "--quiet", "--no-analysis"]) == 0
    printed = capsys.readouterr().out
    assert "| frozen - learnable |" in printed and "95% CI" in printed
    run_dir = _run_dir(out)
    for name in ("config.yaml", "environment.json", "plan.json", "results.csv", "summary.json", "summary.md",
                 "figures/metric_per_variant.png"):
        assert (run_dir / name).is_file(), name
    rows = list(csv.DictReader((run_dir / "results.csv").open()))
    assert sorted(r["variant"] for r in rows) == sorted(["learnable", "frozen", "lc-learnable@4", "lc-frozen@4"] * 2)
    for row in rows:
        assert row["frozen_digest_before"] == row["frozen_digest_after"]
        assert float(row["accuracy"]) > 0.6 and int(row["trainable_params"]) > 0
        assert float(row["wall_time_s"]) > 0 and row["device"] == "cpu"
    frozen = [r for r in rows if r["variant"] == "frozen"]
    assert all(int(r["frozen_params"]) == 8 * 9 + 8 * 8 * 9 for r in frozen)
    summary = json.loads((run_dir / "summary.json").read_text())
    group = summary["groups"][""]
    gaps = {g["gap"]: g for g in group["gaps"]}
    acc = {v: {int(r["seed"]): float(r["accuracy"]) for r in rows if r["variant"] == v} for v in ("frozen", "learnable")}
    expected = paired_gap(acc["frozen"], acc["learnable"])
    assert gaps["frozen - learnable"]["mean"] == pytest.approx(expected["mean"])
    assert gaps["frozen - learnable"]["ci95"] == pytest.approx(expected["ci95"])
    assert "lc-frozen@4 - lc-learnable@4" in gaps
    # the same initial filters for every variant of a seed: frozen and learnable share the digest
    # of the seeded filters before training only for frozen variants; check seeds differ
    assert frozen[0]["frozen_digest_before"] != frozen[1]["frozen_digest_before"]
    # report re-renders identical numbers from the files alone
    before = (run_dir / "summary.json").read_text()
    (run_dir / "summary.json").unlink()
    assert main(["report", str(run_dir), "--no-analysis"]) == 0
    assert (run_dir / "summary.json").read_text() == before


def test_paired_gap_statistics_by_hand():
    gap = paired_gap({0: 0.90, 1: 0.80, 2: 0.70}, {0: 0.85, 1: 0.80, 2: 0.60})
    # differences 0.05, 0.00, 0.10: mean 0.05, sd 0.05, t(0.975, 2) = 4.302653
    assert gap["mean"] == pytest.approx(0.05)
    assert gap["std"] == pytest.approx(0.05)
    half = 4.302653 * 0.05 / 3**0.5
    assert gap["ci95"] == pytest.approx([0.05 - half, 0.05 + half], abs=1e-6)
    assert "ci95" not in paired_gap({0: 1.0}, {0: 0.5})


def test_interrupted_run_resumes_to_the_same_numbers(toy_installed, tmp_path, monkeypatch):
    from lcdense.engine.task import Cell

    args = ["run", "--task", "toy", "--E", "2", "--variants", "lc-frozen,learnable", "--epochs", "3", "--quiet",
            "--no-analysis"]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    saves = {"n": 0}
    original = Cell.save_checkpoint

    def save_then_die(self, state):
        original(self, state)
        saves["n"] += 1
        if saves["n"] == 4:  # first cell done (3 epochs), second cell after its first epoch
            raise KeyboardInterrupt

    monkeypatch.setattr(Cell, "save_checkpoint", save_then_die)
    assert main([*args, "--out", str(tmp_path / "broken")]) == 130
    monkeypatch.setattr(Cell, "save_checkpoint", original)
    run_dir = _run_dir(tmp_path / "broken")
    assert (run_dir / "cells" / "lc-frozen@2__seed0" / "cell.json").is_file()
    assert (run_dir / "cells" / "learnable__seed0" / "checkpoint.pt").is_file()
    assert main(["run", "--resume", str(run_dir), "--quiet", "--no-analysis"]) == 0
    resumed = list(csv.DictReader((run_dir / "results.csv").open()))
    straight = list(csv.DictReader((_run_dir(tmp_path / "straight") / "results.csv").open()))
    assert [(r["variant"], r["accuracy"]) for r in resumed] == [(r["variant"], r["accuracy"]) for r in straight]
    history = json.loads((run_dir / "cells" / "learnable__seed0" / "cell.json").read_text())["history"]
    straight_history = json.loads((_run_dir(tmp_path / "straight") / "cells" / "learnable__seed0" / "cell.json").read_text())["history"]
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in straight_history]
    # resume provenance: the learnable cell continued after its first epoch from the exact fp32 state
    resume = json.loads((run_dir / "cells" / "learnable__seed0" / "cell.json").read_text())["provenance"]["resume"]
    assert resume == {"resumed": True, "exact": True, "resumes": [
        {"after_epoch": 1, "source": "fp32_state", "exact": True, "data_order": "replayed"}]}
    finished = json.loads((run_dir / "cells" / "lc-frozen@2__seed0" / "cell.json").read_text())["provenance"]["resume"]
    assert finished["resumed"] is False
    assert "Approximate resumes" not in (run_dir / "summary.md").read_text()


@pytest.mark.parametrize(("sig", "code", "said"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_and_sigterm_exit_cleanly_and_resume_completes(toy_installed, tmp_path, sig, code, said):
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "lcdense.cli", "run", "--task", "toy", "--variants", "learnable", "--epochs", "16",
           "--set", "data.samples=2048", "--set", "train.batch_size=128", "--out", str(out), "--quiet", "--no-analysis"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(out.glob("toy/*/cells/*/checkpoint.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1].startswith(f"lcdense: {said}; finished cells are saved")
    run_dir = _run_dir(out)
    assert main(["run", "--resume", str(run_dir), "--quiet", "--no-analysis", "--set", "train.epochs=1"]) == 0
    record = json.loads((run_dir / "cells" / "learnable__seed0" / "cell.json").read_text())
    assert len(record["history"]) == 16  # the resumed run kept the saved config (16 epochs), not --set


def test_runs_are_never_overwritten(toy_installed, tmp_path, capsys):
    args = ["run", "--task", "toy", "--variants", "learnable", "--epochs", "1", "--out", str(tmp_path), "--quiet",
            "--no-analysis", "--name", "mine"]
    assert main(args) == 0
    stamp = (tmp_path / "toy" / "mine" / "results.csv").stat().st_mtime_ns
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "toy" / "mine" / "results.csv").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("argv,message", [
    (["run", "--task", "clasification"], "unknown task 'clasification'; did you mean 'classification'?"),
    (["run", "--task", "toy", "--E", "0"], "E must be a positive integer, got '0'"),
    (["run", "--task", "toy", "--E", "-2"], "E must be a positive integer"),
    (["run", "--task", "toy", "--variants", "lc-frozn"], "unknown variant 'lc-frozn'; did you mean 'lc-frozen'?"),
    (["run", "--task", "toy", "--set", "train.lrr=1"], "unknown config key 'train.lrr'"),
    (["run", "--task", "toy", "--config", "nope.yaml"], "config file not found: nope.yaml"),
    (["run"], "say which task to run"),
    (["run", "--task", "toy", "--download"], "unrecognized arguments: --download"),  # runs never download
    (["run", "--task", "classification", "--dataset", "cifar10"],
     "needs its files: pass --data PATH (nothing is downloaded; fetch it once with: python scripts/fetch_dataset.py"),
    (["sweep", "--task", "toy", "--depth", "8,14"], "task 'toy' cannot sweep 'depth'"),
    (["sweep", "--task", "toy", "--axis", "hidden=3"],
     "task 'toy' cannot sweep 'hidden'; it can sweep: E, init, mid, norm_groups, scope, width"),
    (["sweep", "--task", "toy", "--axis", "width"], "--axis takes NAME=V1,V2"),
    (["sweep", "--task", "toy", "--axis", "scope=all,head"], "unknown conversion scope 'head'; Known: all (task 'toy')"),
    (["run", "--task", "toy", "--set", "conversion.scope=encoder"],
     "unknown conversion scope 'encoder'; Known: all (task 'toy')"),
    (["sweep", "--task", "toy", "--width", "4", "--axis", "width=8"], "sweep axis 'width' is given twice"),
    (["run", "--resume", "/nonexistent/run"], "is not an lcdense run directory"),
    (["report", "/nonexistent/run"], "is not an lcdense run directory"),
])
def test_bad_input_is_one_line_and_exit_2(toy_installed, tmp_path, capsys, argv, message):
    assert main([*argv, *(["--out", str(tmp_path)] if argv[0] != "report" else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_tasks_verbose_lists_axes_and_conversion_scopes(capsys):
    assert main(["tasks", "-v"]) == 0
    out = capsys.readouterr().out
    assert "sweep axes: E, width, depth, kernel_size, model, init, mid, scope" in out
    assert "scope encoder+decoder (default): encoder and decoder; the segmentation head's 3x3 conv stays learnable" in out
    assert "scope backbone+neck (default): backbone and neck; the Detect head (its 3x3 and 1x1 convs) stays learnable" in out
    assert "scope stem: the stem alone" in out and "scope all (default): every spatial conv, the stem included" in out


def test_read_only_output_directory(toy_installed, tmp_path, capsys):
    if os.geteuid() == 0:
        target = "/proc/lcdense-out"  # root ignores permission bits; /proc refuses new directories
    else:
        target = str(tmp_path / "ro")
        Path(target).mkdir(mode=0o500)
    assert main(["run", "--task", "toy", "--out", target, "--quiet"]) == 2
    assert "output directory" in capsys.readouterr().err


def test_sweep_over_e_and_width_plots_against_the_axis(toy_installed, tmp_path):
    out = tmp_path / "runs"
    assert main(["sweep", "--task", "toy", "--E", "1,4", "--width", "4,8", "--variants", "lc-frozen,lc-learnable",
                 "--epochs", "1", "--out", str(out), "--quiet", "--no-analysis"]) == 0
    run_dir = _run_dir(out)
    rows = list(csv.DictReader((run_dir / "results.csv").open()))
    assert len(rows) == 8 and {r["width"] for r in rows} == {"4", "8"}
    assert (run_dir / "figures" / "metric_vs_width.png").is_file()
    assert (run_dir / "figures" / "metric_vs_E_width4.png").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["groups"]) == {"width=4", "width=8"}
    assert {g["gap"] for g in summary["groups"]["width=4"]["gaps"]} == {"lc-frozen@1 - lc-learnable@1",
                                                                       "lc-frozen@4 - lc-learnable@4"}


def test_a_plugin_task_sweeps_its_own_axis_from_the_cli(toy_installed, tmp_path):
    """``norm_groups`` is an axis only the toy plug-in declares: ``--axis`` sweeps it, in the task's
    axis order whatever the order on the command line."""
    from lcdense.engine.config import cell_config, load_yaml
    from lcdense.engine.records import read_plan

    out = tmp_path / "runs"
    assert main(["sweep", "--task", "toy", "--axis", "norm_groups=1,4", "--width", "4", "--variants", "frozen",
                 "--seeds", "1", "--epochs", "1", "--out", str(out), "--quiet", "--no-analysis"]) == 0
    run_dir = _run_dir(out)
    plan = read_plan(run_dir)
    assert plan.axis_keys == {"width": "model.width", "norm_groups": "model.norm_groups"}
    assert [c["axes"] for c in plan.cells] == [{"width": 4, "norm_groups": 1}, {"width": 4, "norm_groups": 4}]
    cells = {p.parent.name: json.loads(p.read_text()) for p in (run_dir / "cells").glob("*/cell.json")}
    assert {k: (c["status"], c["axes"]) for k, c in cells.items()} == {
        "frozen__width=4__norm_groups=1__seed0": ("done", {"width": 4, "norm_groups": 1}),
        "frozen__width=4__norm_groups=4__seed0": ("done", {"width": 4, "norm_groups": 4})}
    config = load_yaml(run_dir / "config.yaml")
    assert [cell_config(config, spec, plan.axis_keys)["model"]["norm_groups"] for spec in plan.specs()] == [1, 4]
    rows = list(csv.DictReader((run_dir / "results.csv").open()))
    assert sorted(r["norm_groups"] for r in rows) == ["1", "4"]


def test_readme_add_a_task_example_is_the_tested_plugin():
    readme = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()  # the docs' "Add a task" page
    code = (PLUGIN_DIR / "lcdense_toy.py").read_text()
    body = code.split('"""', 2)[2].strip()
    assert textwrap.dedent(body) in readme
