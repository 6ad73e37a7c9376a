"""A diverging cell: with a huge learning rate the loss goes NaN while the accuracy stays finite
(chance level). The cell is marked ``diverged``, the table shows it, the gaps leave it out and say
so, and the run exits non-zero unless the user allows it (``--allow-diverged``)."""
from __future__ import annotations

import json

from lcdense.cli import main
from lcdense.engine.records import CellRecord
from lcdense.reporting.summary import markdown_table, summarize

RUN = ["run", "--task", "toy", "--E", "4", "--variants", "frozen", "--seeds", "1", "--epochs", "1",
       "--device", "cpu", "--quiet", "--no-analysis", "--set", "run.threads=1", "--set", "train.lr=1e6"]


def test_a_diverged_cell_is_marked_and_fails_the_run_unless_allowed(toy_installed, tmp_path, capsys):
    assert main([*RUN, "--out", str(tmp_path), "--name", "huge-lr"]) == 2
    run_dir = tmp_path / "toy" / "huge-lr"
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lcdense: error: 1 cell(s) diverged (loss or metrics not finite), first frozen__seed0: train_loss "
                   "is nan at epoch 1; they are marked in the table and left out of the gaps. Lower train.lr in a "
                   "new run, or accept them with --allow-diverged (run.allow_diverged)"]
    for cell in ("frozen__seed0",):
        record = json.loads((run_dir / "cells" / cell / "cell.json").read_text(), parse_constant=str)
        assert record["status"] == "diverged" and record["error"] == "train_loss is nan at epoch 1"
        assert record["history"][0]["train_loss"] == "NaN"  # what was measured is kept
        assert 0.3 < record["metrics"]["accuracy"] < 0.7  # chance level, finite: not what marks it
        assert not (run_dir / "cells" / cell / "checkpoint.pt").exists()
    summary = json.loads((run_dir / "summary.json").read_text())["groups"][""]
    assert summary["gaps"] == [] and summary["variants"]["frozen"]["diverged"] == ["frozen__seed0"]
    assert summary["diverged"] == {"frozen__seed0": "train_loss is nan at epoch 1"}
    table = (run_dir / "summary.md").read_text()
    assert "| frozen | 0 (1 diverged) | diverged | n/a | n/a | n/a |" in table
    assert "**Diverged** (loss or metrics not finite; left out of the statistics and the gaps): frozen__seed0" in table
    assert "diverged,toy,frozen" in (run_dir / "results.csv").read_text()
    assert main(["run", "--resume", str(run_dir), "--allow-diverged", "--quiet"]) == 0  # nothing retrained
    assert "lcdense: error" not in capsys.readouterr().err


def _record(variant: str, seed: int, top1: float, status: str = "done") -> CellRecord:
    return CellRecord(id=f"{variant}__seed{seed}", variant=variant, seed=seed, status=status, metrics={"top1": top1},
                      error="train_loss is nan at epoch 3" if status == "diverged" else None,
                      costs={"trainable_params": 10, "wall_time_s": 1.0})


def test_the_gaps_leave_a_diverged_seed_out_and_the_table_says_so():
    records = [_record("frozen", 0, 0.5), _record("frozen", 1, 0.6), _record("learnable", 0, 0.7),
               _record("learnable", 1, 0.1, status="diverged")]
    summary = summarize(records, "top1", True)
    group = summary.groups[""]
    assert group["variants"]["learnable"]["seeds"] == [0] and group["variants"]["learnable"]["diverged"] == \
        ["learnable__seed1"]
    assert group["variants"]["learnable"]["metrics"]["top1"]["mean"] == 0.7
    gap = summary.gap("frozen - learnable")
    assert gap["seeds"] == [0] and abs(gap["mean"] - (0.5 - 0.7)) < 1e-12
    table = markdown_table(summary)
    assert "| learnable | 1 (+1 diverged) | 0.7000 ± 0.0000 |" in table
    assert "left out of the statistics and the gaps): learnable__seed1 (train_loss is nan at epoch 3)" in table
