"""Sweeps on a real single-node Slurm cluster (scripts/slurm_cluster.py; ``.ci/run`` starts one):
the embedded classification config as a job array of CPU-only jobs, a job cancelled mid-training
and the sweep resubmitted, and a job preempted the way Slurm does it (SIGTERM, then submitit's
USR2), each resuming from its epoch checkpoint to the numbers of the uninterrupted cell.

Skipped, with the reason, where no cluster is reachable (``SLURM_CONF`` names the cluster to
use). The runs are tiny (512 images, 12 epochs of under a second here: a job cancelled after its
first epoch is killed about 4 s later, before its last; with 4 epochs it finished first on a quiet machine) and are submitted together at the start, so their jobs overlap
on the node's CPUs; each interruption comes as soon as its cell wrote its first epoch checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lcdense.cli import main

pytestmark = pytest.mark.extra("cluster")

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "scripts" / "slurm_cluster.py"
#: one CPU and 1 GB per job: the node (this machine) runs two at once
SMALL = "gpus_per_job: 1\ncpus_per_gpu: 1\nmem_gb_per_gpu: 1\ntimeout_min: 30\n"
#: enough epochs after the first that a cancelled job is killed (about 4 s after scancel here) before it ends
EPOCHS = 12
COMMON = ["--task", "classification", "--device", "cpu", "--epochs", str(EPOCHS), "--batch-size", "64", "--quiet",
          "--no-analysis", "--set", "data.train_limit=512", "--set", "data.val_limit=128", "--set", "run.threads=1"]
CELL = "frozen__seed0"


def _reachable() -> str:
    """'' if a cluster answers, else why not (one line)."""
    check = subprocess.run([sys.executable, str(SCRIPT), "check"], capture_output=True, text=True)
    if check.returncode:
        return check.stderr.strip()
    conf = os.environ.get("SLURM_CONF")
    if not conf or not Path(conf).is_file():
        return (f"no Slurm cluster to test on (SLURM_CONF {'is not set' if not conf else f'{conf} does not exist'}); "
                "start one: python3 scripts/slurm_cluster.py start, then export SLURM_CONF=… as it says")
    sinfo = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=30)
    if sinfo.returncode or not sinfo.stdout.split():
        return f"no Slurm cluster reachable through {conf} ({(sinfo.stderr.strip() or 'no node').splitlines()[-1]})"
    return ""


def _wait_for(what: str, check, seconds: float = 600):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def _sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "--noheader", "--parsable2", "--format=JobID,State", "-j", job_id],
                         capture_output=True, text=True).stdout
    states = [line.split("|")[1] for line in out.splitlines() if line.split("|")[0] == job_id]
    return states[-1] if states else ""


def _job_id(run_dir: Path) -> str:
    return json.loads((run_dir / "jobs.json").read_text())[CELL]["job_id"]


def _record(run_dir: Path, cell: str = CELL) -> dict:
    return json.loads((run_dir / "cells" / cell / "cell.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs submitted at once: 'cancel' (through the CLI, waiting: it reports the cancelled
    job), 'preempt' (one cell) and 'array' (two cells, one job array: the reference numbers)."""
    if reason := _reachable():
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("slurm")
    (base / "small.yaml").write_text(SMALL)
    out = base / "runs"
    common = [*COMMON, "--out", str(out), "--executor", "slurm", "--executor-config", str(base / "small.yaml")]
    cancel = subprocess.Popen([sys.executable, "-m", "lcdense", "sweep", *common, "--variants", "frozen",
                               "--name", "cancel", "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dirs = {"cancel": out / "classification" / "cancel"}
    for name, variants in (("preempt", "frozen"), ("array", "frozen,learnable")):
        assert main(["sweep", *common, "--variants", variants, "--name", name]) == 0
        run_dirs[name] = out / "classification" / name
    interrupt = {  # what Slurm sends on preemption: SIGTERM, then submitit's --signal USR2 (as its job._interrupt())
        "cancel": [["scancel"]], "preempt": [["scancel", "--signal", "SIGTERM"], ["scancel", "--signal", "USR2"]]}
    sent: dict[str, str] = {}

    def interrupted() -> bool:
        for name, commands in interrupt.items():
            if name not in sent and (run_dirs[name] / "cells" / CELL / "checkpoint.pt").is_file():
                sent[name] = _job_id(run_dirs[name])
                for command in commands:
                    subprocess.run([*command, sent[name]], check=True)
        return len(sent) == len(interrupt)

    _wait_for("the first epoch checkpoints of the cancel and preempt runs", interrupted, 300)
    _wait_for("the preempted job requeued", lambda: _squeue(sent["preempt"]) == "BeginTime", 120)
    subprocess.run(["scontrol", "update", f"JobId={sent['preempt']}", "StartTime=now"], check=True)  # not in 2 min
    yield {"dirs": run_dirs, "cancel": cancel, "common": common, "jobs": sent}
    cancel.kill()


@pytest.fixture(scope="module")
def reference(runs):
    """The uninterrupted frozen cell of the job array."""
    run_dir = runs["dirs"]["array"]
    _wait_for("the job array", lambda: all((run_dir / "cells" / c / "cell.json").is_file()
                                           for c in (CELL, "learnable__seed0")))
    return _record(run_dir)


def test_a_sweep_runs_as_a_job_array_of_cpu_only_jobs(runs, reference):
    run_dir = runs["dirs"]["array"]
    jobs = json.loads((run_dir / "jobs.json").read_text())
    array_ids = {cell: job["job_id"].split("_") for cell, job in jobs.items()}
    assert len({ids[0] for ids in array_ids.values()}) == 1, array_ids  # one array
    assert sorted(ids[1] for ids in array_ids.values()) == ["0", "1"]
    array = next(iter(array_ids.values()))[0]
    script = (run_dir / "jobs" / array / f"{array}_submission.sh").read_text()
    assert "#SBATCH --array=0-1" in script and "#SBATCH --cpus-per-task=1" in script
    assert "gpu" not in script.lower()  # a CPU-only job asks for no GPU (sbatch refused gres on this node)
    for cell in jobs:
        _wait_for(f"sacct to see {cell} completed", lambda cell=cell: _sacct_state(jobs[cell]["job_id"]) == "COMPLETED",
                  60)
        record = _record(run_dir, cell)
        assert record["status"] == "done" and record["costs"]["device"] == "cpu"
        assert len(record["history"]) == EPOCHS and 0.0 <= record["metrics"]["top1"] <= 1.0
        assert record["frozen_digest_before"] == record["frozen_digest_after"]
    assert main(["report", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["groups"][""]["gaps"][0]["gap"] == "frozen - learnable"


def _assert_resumed_to_reference(run_dir: Path, reference: dict) -> None:
    record = _record(run_dir)
    resumes = record["provenance"]["resume"]["resumes"]
    assert len(resumes) == 1 and 1 <= resumes[0]["after_epoch"] < EPOCHS and record["provenance"]["resume"]["exact"], resumes
    assert record["metrics"] == reference["metrics"]
    assert [h["train_loss"] for h in record["history"]] == [h["train_loss"] for h in reference["history"]]
    assert record["frozen_digest_after"] == reference["frozen_digest_after"]
    assert not (run_dir / "cells" / CELL / "checkpoint.pt").exists()


def test_a_cancelled_job_is_reported_in_one_line_and_its_cell_resumes(runs, reference, capsys):
    run_dir, cli = runs["dirs"]["cancel"], runs["cancel"]
    checkpoint = run_dir / "cells" / CELL / "checkpoint.pt"
    job = runs["jobs"]["cancel"]
    _wait_for("the cancelled job to end", lambda: _sacct_state(job).startswith("CANCELLED"), 120)
    assert not (run_dir / "cells" / CELL / "cell.json").exists() and checkpoint.is_file()
    out, err = cli.communicate(timeout=300)
    assert cli.returncode == 2, (out, err)
    failed = [line for line in err.splitlines() if line.startswith("lcdense: job failed:")]
    assert len(failed) == 1, err
    assert re.fullmatch(rf"lcdense: job failed: {CELL}: the job ended without a result \(state: CANCELLED by \d+\) "
                        rf"\(log: {re.escape(str(run_dir.resolve() / 'jobs' / job / f'{job}_0_log.err'))}\)", failed[0])
    assert err.splitlines()[-1].startswith("lcdense: error: 1 job(s) failed; finished cells are kept.")
    assert main(["sweep", "--resume", str(run_dir), "--executor", "slurm", "--executor-config",
                 runs["common"][runs["common"].index("--executor-config") + 1], "--wait", "--quiet"]) == 0
    assert "1 cell(s), 0 finished, 1 to run on 'slurm'" in capsys.readouterr().out
    _assert_resumed_to_reference(run_dir, reference)


def test_preemption_requeues_the_job_which_resumes_from_its_checkpoint(runs, reference):
    run_dir = runs["dirs"]["preempt"]
    job = runs["jobs"]["preempt"]
    _wait_for("the requeued job to finish the cell", (run_dir / "cells" / CELL / "cell.json").is_file, 300)
    _wait_for("sacct to see the job completed", lambda: _sacct_state(job) == "COMPLETED", 60)
    history = subprocess.run(["sacct", "--duplicates", "--noheader", "--parsable2", "--allocations",
                              "--format=State", "-j", job], capture_output=True, text=True).stdout.split()
    assert history == ["REQUEUED", "COMPLETED"], history
    _assert_resumed_to_reference(run_dir, reference)


def _squeue(job: str) -> str:
    return subprocess.run(["squeue", "--noheader", "--format=%r", "--jobs", job], capture_output=True,
                          text=True).stdout.strip()


def test_a_gpu_request_the_cluster_cannot_serve_is_refused_in_one_line(runs, capsys):
    """What the first real sweep met (then on device auto; auto and cpu now ask for no GPU)."""
    assert main(["sweep", *runs["common"], "--device", "cuda", "--variants", "frozen", "--name", "gpu"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "lcdense: error: the slurm executor refused the jobs: sbatch: error: Invalid generic resource (gres) "
        "specification (the partition may have no GPU: use --gpus-per-job 0, or --device cpu, for CPU-only jobs)"]
