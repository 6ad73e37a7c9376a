"""Scaling out: a cell trained data-parallel by torchrun (2 gloo ranks on CPU) equals the
single-process cell, and sweeps run as submitit jobs that can fail and be re-submitted."""
from __future__ import annotations

import json
import os
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

from lcdense.cli import main
from lcdense.engine import executors
from lcdense.engine.variants import CellSpec, Variant

CONFIGS = Path(__file__).parents[1] / "configs" / "executors"
#: the sweep executors (debug, local, slurm) are submitit's
needs_submitit = pytest.mark.skipif(find_spec("submitit") is None,
                                    reason='needs the cluster extra: pip install "lcdense[cluster]"')
TOY = ["--task", "toy", "--E", "4", "--seeds", "1", "--quiet", "--no-analysis", "--device", "cpu",
       "--set", "run.threads=1"]


def _cells(run_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (run_dir / "cells").glob("*/cell.json")}


def test_two_gloo_ranks_train_the_same_cell_as_one_process(toy_installed, tmp_path):
    out = tmp_path / "runs"
    common = ["run", *TOY, "--variants", "learnable,lc-frozen", "--out", str(out)]
    assert main([*common, "--name", "one"]) == 0
    assert main([*common, "--name", "two", "--ddp", "2"]) == 0
    assert sorted(p.name for p in (out / "toy").iterdir() if not p.name.startswith(".")) == ["one", "two"]
    one, two = _cells(out / "toy" / "one"), _cells(out / "toy" / "two")
    assert sorted(two) == sorted(one) == ["lc-frozen@4__seed0", "learnable__seed0"]
    for cell_id, single in one.items():
        parallel = two[cell_id]
        assert (single["costs"]["world_size"], parallel["costs"]["world_size"]) == (1, 2)
        assert parallel["frozen_digest_before"] == parallel["frozen_digest_after"] == single["frozen_digest_after"]
        assert parallel["metrics"]["accuracy"] == pytest.approx(single["metrics"]["accuracy"], abs=1e-6)
        losses = [(a["train_loss"], b["train_loss"]) for a, b in zip(single["history"], parallel["history"])]
        assert len(losses) == 3
        for a, b in losses:
            assert b == pytest.approx(a, rel=1e-5)
        layers = [torch.load(out / "toy" / name / "cells" / cell_id / "filters.pt", weights_only=True)["layers"]
                  for name in ("one", "two")]
        assert len(layers[0]) == len(layers[1]) == 2  # the toy's two spatial convs, trained filters W'
        for a, b in zip(*layers):
            assert a["name"] == b["name"]
            torch.testing.assert_close(b["weight"], a["weight"], rtol=1e-4, atol=1e-5)
        assert not (out / "toy" / "two" / "cells" / cell_id / "checkpoint.pt").exists()
    environment = json.loads((out / "toy" / "two" / "environment.json").read_text())
    assert environment["world_size"] == 2


def test_data_parallel_refusals_are_one_line(toy_installed, tmp_path, monkeypatch, capsys):
    import lcdense_toy

    out = ["--out", str(tmp_path / "runs")]
    assert main(["run", *TOY, "--ddp", "3", *out]) == 2  # the toy's global batch is 32
    assert "train.batch_size 32 (the global batch) must be a multiple of the 3 ranks" in capsys.readouterr().err
    assert main(["run", "--task", "toy", "--device", "0,gpu1", *out]) == 2
    assert "device list '0,gpu1' must be GPU indices" in capsys.readouterr().err
    (tmp_path / "runs" / "toy" / "taken").mkdir(parents=True)
    assert main(["run", *TOY, "--ddp", "2", "--name", "taken", *out]) == 2  # said once, before torchrun starts
    assert "toy/taken already exists; pick another --name" in capsys.readouterr().err
    monkeypatch.setattr(lcdense_toy.ToyTask, "data_parallel", None)
    assert main(["run", *TOY, "--ddp", "2", *out]) == 2
    assert "task 'toy' does not support data-parallel training" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "runs" / "toy").iterdir()] == ["taken"]



def test_a_cell_too_large_for_its_ranks_is_refused_on_all_of_them(toy_installed, tmp_path, capfd):
    """Rank 0 estimates the cell and every rank gets its refusal, before any rank converts or
    trains: no rank waits in a collective for one that stopped."""
    out = tmp_path / "runs"
    assert main(["run", *TOY, "--variants", "lc-frozen", "--ddp", "2", "--set", "run.max_memory=4KiB",
                 "--out", str(out), "--name", "small"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    refusals = [line for line in err if line.startswith("lcdense: error: cell lc-frozen@4__seed0 needs about")]
    assert len(refusals) == 2 and "4.0 KiB is available (run.max_memory); nothing was allocated" in refusals[0], err
    assert err[-1].startswith("lcdense: error: the 2 data-parallel ranks failed")
    assert not list((out / "toy" / "small" / "cells").glob("*/*"))


@needs_submitit
def test_failed_cell_job_is_rerun_by_resubmission(toy_installed, tmp_path, monkeypatch, capsys):
    import lcdense_toy

    fit, calls, failed = lcdense_toy.ToyTask.fit, [], []

    def flaky_fit(self, model, data, config, cell):
        calls.append(cell.variant)
        if cell.variant == "frozen" and not failed:
            failed.append(cell.variant)
            raise RuntimeError("injected failure")
        return fit(self, model, data, config, cell)

    monkeypatch.setattr(lcdense_toy.ToyTask, "fit", flaky_fit)
    out = tmp_path / "runs"
    sweep = ["sweep", *TOY, "--variants", "learnable,frozen", "--width", "4,8", "--out", str(out),
             "--name", "grid", "--executor", "debug"]
    assert main(sweep) == 2
    err = capsys.readouterr().err
    assert "job failed: frozen__width=4__seed0: injected failure" in err
    assert "lcdense sweep --resume" in err.strip().splitlines()[-1]
    run_dir = out / "toy" / "grid"
    cells = _cells(run_dir)
    assert sorted(cells) == ["frozen__width=8__seed0", "learnable__width=4__seed0", "learnable__width=8__seed0"]
    assert (run_dir / "results.csv").read_text().count("\n") == 4  # header + the 3 finished cells
    jobs = json.loads((run_dir / "jobs.json").read_text())
    assert len(jobs) == 4 and {j["executor"] for j in jobs.values()} == {"debug"}

    assert main(["report", str(run_dir), "--no-analysis"]) == 0  # assembles whatever has finished
    capsys.readouterr()
    calls.clear()
    assert main(["sweep", "--resume", str(run_dir), "--executor", "debug", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "4 cell(s), 3 finished, 1 to run on 'debug'" in printed
    assert calls == ["frozen"]
    assert sorted(_cells(run_dir)) == sorted([*cells, "frozen__width=4__seed0"])
    assert (run_dir / "results.csv").read_text().count("\n") == 5


@needs_submitit
def test_local_executor_runs_the_cells_in_a_job_process(toy_installed, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["sweep", *TOY, "--variants", "lc-frozen", "--width", "4,8", "--out", str(out), "--name", "local",
                 "--executor", "local", "--set", "train.epochs=1"]) == 0
    run_dir = out / "toy" / "local"
    assert sorted(_cells(run_dir)) == ["lc-frozen@4__width=4__seed0", "lc-frozen@4__width=8__seed0"]
    jobs = json.loads((run_dir / "jobs.json").read_text())
    (job_id,) = {j["job_id"] for j in jobs.values()}  # CPU only: one job runs both cells in turn
    assert list((run_dir / "jobs").glob(f"{job_id}/*_log.out"))
    assert "| lc-frozen@4" in capsys.readouterr().out
    assert main(["sweep", "--resume", str(run_dir), "--executor", "local", "--quiet"]) == 0
    assert "2 cell(s), 2 finished, 0 to run" in capsys.readouterr().out


@needs_submitit
def test_slurm_settings_become_an_sbatch_array(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"  # submitit checks that srun exists; nothing is submitted here
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    settings = executors.executor_settings("slurm", CONFIGS / "slurm.yaml",
                                           {"partition": "gpu", "gpus_per_job": 4, "timeout_min": 90})
    executor = executors.get_executor("slurm").make(tmp_path / "jobs" / "%j", "lcdense-x", settings)
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --time=90", "#SBATCH --nodes=1"):
        assert line in script, line
    assert executors.executor_settings("local", CONFIGS / "local.yaml", {})["gpus_per_job"] == 1


def _fake_slurm(tmp_path, monkeypatch, sinfo: str) -> None:
    """srun (submitit checks it exists) and an sinfo printing ``sinfo`` (nothing is submitted)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sinfo").write_text(f"#!/bin/sh\nprintf '{sinfo}'\n")
    for tool in ("srun", "sinfo"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


@needs_submitit
@pytest.mark.parametrize(("device", "sinfo", "gpus", "note"), [
    ("cpu", "gpu:8|gpu*\\n", 0, ""),
    ("auto", "(null)|debug*\\n", 0, "the default partition has no GPU: the jobs run on CPU"),
    ("auto", "(null)|cpu\\ngpu:a100:4|gpu*\\n", 1, ""),
    ("cuda", "(null)|debug*\\n", 1, ""),  # asked for: sbatch's refusal is then one line
])
def test_a_cpu_only_job_asks_for_no_gpu(tmp_path, monkeypatch, device, sinfo, gpus, note):
    """The first real sweep on a CPU-only Slurm node failed at sbatch: 'Invalid generic resource
    (gres) specification' (tests/test_slurm.py runs it on a real cluster)."""
    _fake_slurm(tmp_path, monkeypatch, sinfo)
    slurm = executors.get_executor("slurm")
    settings, said = slurm.place(executors.executor_settings("slurm", CONFIGS / "slurm.yaml", {}), device)
    assert (settings["gpus_per_job"], said) == (gpus, note)
    executor = slurm.make(tmp_path / "jobs" / "%j", "lcdense-x", settings)
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    assert ("#SBATCH --gpus-per-node" in script) == bool(gpus)
    assert "#SBATCH --cpus-per-task=8" in script and "#SBATCH --mem=48GB" in script  # one GPU's share


@needs_submitit
def test_slurm_without_slurm_is_a_one_line_error(toy_installed, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    assert main(["sweep", *TOY, "--out", str(tmp_path / "runs"), "--executor", "slurm"]) == 2
    assert "cannot use the slurm executor here" in capsys.readouterr().err


@needs_submitit
def test_executor_settings_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("partitions: gpu\n")
    with pytest.raises(Exception, match="unknown executor setting 'partitions'"):
        executors.executor_settings("slurm", bad, {})
    with pytest.raises(Exception, match="unknown executor 'slrum'; did you mean 'slurm'"):
        executors.executor_settings("slrum", None, {})
    with pytest.raises(Exception, match=r"gpus_per_job must be >= 0 \(0: CPU-only jobs\), got -1"):
        executors.executor_settings("slurm", None, {"gpus_per_job": -1})


def test_resubmission_skips_cells_whose_slurm_job_is_alive(tmp_path, monkeypatch):
    specs = [CellSpec(Variant("frozen"), 0, {}), CellSpec(Variant("learnable"), 0, {})]
    (tmp_path / "jobs.json").write_text(json.dumps({
        "frozen__seed0": {"job_id": "11_0", "executor": "slurm", "submitted": "x"},
        "learnable__seed0": {"job_id": "11_1", "executor": "slurm", "submitted": "x"}}))
    states = {"11_0": "RUNNING", "11_1": "FAILED"}
    monkeypatch.setattr(executors.SlurmExecutor, "state", lambda self, run_dir, job_id: states[job_id])
    todo, notes = executors.cells_to_submit(tmp_path, specs, "slurm")
    assert [c.id for c in todo] == ["learnable__seed0"]
    assert notes == ["frozen__seed0: job 11_0 is running, not submitted again"]


def test_unknown_executor_is_one_line_naming_the_known_ones(capsys):
    assert main(["sweep", "--task", "toy", "--executor", "slrum"]) == 2
    assert "invalid choice: 'slrum' (choose from 'debug', 'local', 'slurm')" in capsys.readouterr().err
    with pytest.raises(Exception) as error:
        executors.get_executor("slrum")
    assert str(error.value) == "unknown executor 'slrum'; did you mean 'slurm'? Known: debug, local, slurm"


@needs_submitit
def test_a_registered_executor_is_one_class(toy_installed, tmp_path, monkeypatch, capsys):
    """A new executor (here: local processes, one job per cell) is one registered class: the
    command line offers it and the sweep submits through it."""

    class PerCell(executors.LocalExecutor):
        summary = "percell (one local job per cell)"

        def groups(self, cells):
            return [[c.id] for c in cells]

    monkeypatch.setitem(executors.EXECUTORS._objects, "percell", PerCell)
    out = tmp_path / "runs"
    assert main(["sweep", *TOY, "--variants", "learnable,frozen", "--out", str(out), "--name", "each",
                 "--executor", "percell", "--set", "train.epochs=1"]) == 0
    run_dir = out / "toy" / "each"
    assert sorted(_cells(run_dir)) == ["frozen__seed0", "learnable__seed0"]
    jobs = json.loads((run_dir / "jobs.json").read_text())
    assert len({j["job_id"] for j in jobs.values()}) == 2 and {j["executor"] for j in jobs.values()} == {"percell"}
    assert "2 to run on 'percell'" in capsys.readouterr().out


@needs_submitit
def test_a_failed_job_is_explained_in_one_line():
    from submitit.core.utils import FailedJobError, UncompletedJobError

    killed = UncompletedJobError("Job 7 (task: 0) with path /x/7_0_result.pkl\n"
                                 "has not produced any output (state: NO PROCESS AND NO RESULT)\nlog lines")
    assert executors._reason(killed) == "the job ended without a result (state: NO PROCESS AND NO RESULT)"
    crashed = FailedJobError(  # the text submitit's Job.exception() builds (core/core.py)
        "Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent call "
        "last):\n  File \"x\", line 1\nRuntimeError: CUDA out of memory\n\n----------------------\nYou can check "
        "full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:\n  - /r/7_0_log.err\n  - /r/7_0_log.out")
    assert executors._reason(crashed) == "RuntimeError: CUDA out of memory"
