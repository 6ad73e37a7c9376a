"""A full disk or quota: the write that fails is one line naming the file and the space it needs,
the files written before are intact, and ``--resume`` continues once space is freed. The disk is
made full for real: the atomic writer's temporary file is opened on /dev/full, where every write
fails with ENOSPC."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest
import torch

from lcdense.base.files import DiskFull, write_json
from lcdense.cli import main

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")

#: the CLI, with the second write of a checkpoint (epoch 2's) going to /dev/full
FULL_ON_SECOND_CHECKPOINT = """
import os, sys, tempfile
real, seen = tempfile.mkstemp, []
def mkstemp(*args, prefix="", **kwargs):
    fd, name = real(*args, prefix=prefix, **kwargs)
    if prefix.startswith(".checkpoint.pt."):
        seen.append(name)
        if len(seen) == 2:
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
    return fd, name
tempfile.mkstemp = mkstemp
from lcdense.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_leaves_the_file_it_would_replace_intact(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_json(path, {"kept": True})
    real = tempfile.mkstemp

    def full(*args, **kwargs):
        fd, name = real(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(DiskFull) as error:
        write_json(path, {"kept": False, "pad": "x" * 5000})
    assert str(error.value).startswith(f"no space left on the disk (or quota) to write {path}: it needs 4.9 KiB; ")
    assert error.value.needed == len(json.dumps({"kept": False, "pad": "x" * 5000}, indent=2)) + 1
    assert json.loads(path.read_text()) == {"kept": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temporary file left


def test_a_run_that_fills_the_disk_says_so_in_one_line_and_resumes(toy_installed, tmp_path):
    out = tmp_path / "runs"
    args = ["run", "--task", "toy", "--E", "4", "--variants", "frozen", "--seeds", "1", "--epochs", "2", "--device", "cpu",
            "--quiet", "--no-analysis", "--set", "run.threads=1", "--out", str(out), "--name", "full"]
    full = subprocess.run([sys.executable, "-c", FULL_ON_SECOND_CHECKPOINT, *args], capture_output=True, text=True)
    run_dir = out / "toy" / "full"
    checkpoint = run_dir / "cells" / "frozen__seed0" / "checkpoint.pt"
    assert full.returncode == 2, full.stderr
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1, full.stderr
    assert lines[0].startswith(f"lcdense: error: no space left on the disk (or quota) to write {checkpoint}: it needs ")
    assert " free there; the run needs about " in lines[0] and " more for its 1 unfinished cell(s); " in lines[0]
    assert lines[0].endswith(f"; the files written before are intact: free space, then continue with --resume {run_dir}")
    state = torch.load(checkpoint, weights_only=True)  # epoch 1's checkpoint, intact
    assert state["epoch"] == 0 and len(state["history"]) == 1
    assert not list(run_dir.rglob("*.tmp")) and not list(run_dir.rglob("cell.json"))
    assert main(["run", "--resume", str(run_dir), "--quiet"]) == 0  # space freed: this process writes normally
    record = json.loads((checkpoint.parent / "cell.json").read_text())
    assert record["status"] == "done" and len(record["history"]) == 2
    assert [r["after_epoch"] for r in record["provenance"]["resume"]["resumes"]] == [1]
