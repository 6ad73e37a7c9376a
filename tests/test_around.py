"""Around a run: experiment trackers read back from what they wrote, history.csv, the console
(lcdense's lines; a framework's output in train.log, shown with --verbose), the logger settings."""
from __future__ import annotations

import csv
import logging
import sys

import pytest

import lcdense
from lcdense.cli import main

TOY = {"E": 4, "variants": ["learnable", "frozen"], "epochs": 2, "analysis": False}


def _toy(tmp_path, **settings):
    return lcdense.run("toy", out=str(tmp_path), **{**TOY, "name": "r", **settings})


def test_tensorboard_event_files_hold_epochs_finals_digests_and_the_gap_table(toy_installed, tmp_path, capsys):
    pytest.importorskip("tensorboard", reason='needs the tensorboard extra: pip install "lcdense[tensorboard]"')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _toy(tmp_path, loggers=["tensorboard"])
    printed = capsys.readouterr().out
    for cell in result.cells:
        events = EventAccumulator(str(result.run_dir / "tensorboard" / cell.id))
        events.Reload()
        loss = events.Scalars("epoch/train_loss")
        assert [(e.step, e.value) for e in loss] == [(h["epoch"], pytest.approx(h["train_loss"])) for h in cell.history]
        assert events.Scalars("final/accuracy")[0].value == pytest.approx(cell.metrics["accuracy"])
        assert events.Scalars("cost/trainable_params")[0].value == cell.costs["trainable_params"]
        assert cell.frozen_digest_after in events.Tensors("frozen_digests/text_summary")[0].tensor_proto.string_val[0].decode()
        config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
        assert f"cell.id: {cell.id}" in config and "train.lr: 0.02" in config
        # history.csv: one row per epoch, the record's history
        rows = list(csv.DictReader((result.run_dir / "cells" / cell.id / "history.csv").open()))
        assert list(rows[0]) == ["epoch", "train_loss", "lr", "epoch_time_s", "data_wait_share"]
        assert [float(r["train_loss"]) for r in rows] == [h["train_loss"] for h in cell.history]
        # the console: a line per finished cell (no bar off a terminal, no per-epoch lines)
        assert f"{cell.id}  accuracy={cell.metrics['accuracy']:.4f}" in printed
    assert "epoch 1" not in printed
    gaps = EventAccumulator(str(result.run_dir / "tensorboard" / "gaps"))
    gaps.Reload()
    assert gaps.Tensors("gap_table/text_summary")[0].tensor_proto.string_val[0].decode() == result.table
    gap = result.summary.gap("frozen - learnable")
    assert gaps.Scalars("gap/frozen - learnable")[0].value == pytest.approx(gap["mean"])


def test_mlflow_store_in_the_run_directory_holds_cells_and_gaps(toy_installed, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason='needs the mlflow extra: pip install "lcdense[mlflow]"')
    pytest.importorskip("sqlalchemy", reason='needs the mlflow extra: pip install "lcdense[mlflow]"')
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = _toy(tmp_path, loggers="mlflow", variants=["frozen"])
    (cell,) = result.cells
    client = MlflowClient(tracking_uri=f"sqlite:///{result.run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lcdense-toy")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"r", cell.id}
    child, parent = runs[cell.id], runs["r"]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    history = client.get_metric_history(child.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(h["epoch"], pytest.approx(h["train_loss"])) for h in cell.history]
    assert child.data.metrics["final/accuracy"] == pytest.approx(cell.metrics["accuracy"])
    assert child.data.metrics["cost/frozen_params"] == cell.costs["frozen_params"]
    assert child.data.params["train.lr"] == "0.02" and child.data.params["cell.variant"] == "frozen"
    assert child.data.tags["lcdense.frozen_digest_after"] == cell.frozen_digest_after
    assert child.info.status == parent.info.status == "FINISHED"
    assert client.download_artifacts(parent.info.run_id, "gaps.md", str(tmp_path)).endswith("gaps.md")
    assert (tmp_path / "gaps.md").read_text() == result.table + "\n"
    assert str(experiment.artifact_location).startswith((result.run_dir / "mlartifacts").resolve().as_uri())


def test_wandb_runs_offline_in_the_run_directory(toy_installed, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason='needs the wandb extra: pip install "lcdense[wandb]"')
    import json

    for variable in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    result = _toy(tmp_path, loggers=["wandb"])
    runs = sorted((result.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 3  # two cells and the gaps, all offline runs (nothing was sent)
    # wandb keeps an offline run's records in its own binary log (no reader ships with wandb >= 0.19):
    # every cell's keys and digests are in it
    records = b"".join(next(r.glob("run-*.wandb")).read_bytes() for r in runs)
    for logged in ("epoch/train_loss", "final/accuracy", "cost/trainable_params", "train.lr",
                   *(c.frozen_digest_after for c in result.cells)):
        assert logged.encode() in records, logged
    (table,) = (result.run_dir / "wandb").glob("offline-run-*/files/media/table/gaps_*.table.json")
    gaps = json.loads(table.read_text())
    assert gaps["columns"] == ["sweep point", "gap", "mean", "ci95"]
    assert gaps["data"][0][1:3] == ["frozen - learnable", pytest.approx(result.summary.gap("frozen - learnable")["mean"])]


def test_framework_output_goes_to_train_log_and_verbose_shows_it(toy_installed, tmp_path, capsys, monkeypatch):
    import lcdense_toy

    fit = lcdense_toy.ToyTask.fit

    def chatty_fit(self, model, data, config, cell):
        print("CHATTY: Loading and preparing results...")
        logging.getLogger("chatty").warning("CHATTY warning")
        print("CHATTY progress", file=sys.stderr)
        return fit(self, model, data, config, cell)

    handler = logging.StreamHandler(sys.stdout)  # as a library sets itself up at import
    logging.getLogger("chatty").addHandler(handler)
    monkeypatch.setattr(lcdense_toy.ToyTask, "fit", chatty_fit)
    try:
        quiet = _toy(tmp_path, variants=["frozen"])
        printed = capsys.readouterr()
        assert "CHATTY" not in printed.out + printed.err and "[1/1] frozen__seed0  accuracy=" in printed.out
        log = (quiet.run_dir / "cells" / "frozen__seed0" / "train.log").read_text()
        assert "CHATTY: Loading and preparing results...\n" in log and "CHATTY warning" in log
        assert "CHATTY progress" in log and log.startswith("--- lcdense: cell frozen__seed0, ")
        assert handler.stream is sys.stdout  # restored
        loud = _toy(tmp_path, variants=["frozen"], name="loud", verbose=True)
        printed = capsys.readouterr()
        assert "CHATTY: Loading and preparing results..." in printed.out and "CHATTY warning" in printed.out
        assert "CHATTY progress" in printed.err
        assert "frozen s0 epoch 2/2: train_loss=" in printed.out  # verbose: a line per epoch
        assert "CHATTY warning" in (loud.run_dir / "cells" / "frozen__seed0" / "train.log").read_text()
    finally:
        logging.getLogger("chatty").removeHandler(handler)


def test_logger_settings_are_one_line_errors_and_parse_from_the_cli(toy_installed, tmp_path, capsys, monkeypatch):
    from lcdense.cli import build_parser
    from lcdense.commands.run import settings

    args = build_parser().parse_args(["run", "--task", "toy", "--logger", "tensorboard,mlflow", "--logger", "wandb", "-v"])
    assert settings(args) == {"run.loggers": ["tensorboard", "mlflow", "wandb"], "run.verbose": True}
    assert main(["run", "--task", "toy", "--logger", "nope", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "lcdense: error: unknown logger 'nope'; Known: mlflow, tensorboard, wandb"
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    assert main(["run", "--task", "toy", "--set", "run.loggers=[wandb]", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == ('lcdense: error: --logger wandb needs wandb, which is not installed: '
                                               'pip install "lcdense[wandb]"')
    assert main(["run", "--task", "toy", "--quiet", "--verbose", "--out", str(tmp_path)]) == 2
    assert "--quiet and --verbose contradict each other" in capsys.readouterr().err
    assert not (tmp_path / "toy").exists() or not any((tmp_path / "toy").iterdir())  # refused before any run dir


def test_trackers_and_history_in_cluster_jobs(toy_installed, tmp_path):
    """A job runs cells only (no run start in its process): the tracker attaches at the first cell."""
    pytest.importorskip("submitit", reason='needs the cluster extra: pip install "lcdense[cluster]"')
    pytest.importorskip("tensorboard", reason='needs the tensorboard extra: pip install "lcdense[tensorboard]"')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = lcdense.sweep("toy", executor="debug", out=str(tmp_path), **{**TOY, "epochs": 1, "loggers": ["tensorboard"]})
    assert result.complete
    for cell in result.cells:
        events = EventAccumulator(str(result.run_dir / "tensorboard" / cell.id))
        events.Reload()
        assert [e.step for e in events.Scalars("epoch/train_loss")] == [1]
        assert events.Scalars("final/accuracy")[0].value == pytest.approx(cell.metrics["accuracy"])
        assert (result.run_dir / "cells" / cell.id / "history.csv").read_text().count("\n") == 2
    gaps = EventAccumulator(str(result.run_dir / "tensorboard" / "gaps"))
    gaps.Reload()
    assert gaps.Tensors("gap_table/text_summary")[0].tensor_proto.string_val[0].decode() == result.table


def test_a_registered_tracker_is_a_logger_without_other_changes(toy_installed, tmp_path, monkeypatch, capsys):
    from lcdense.engine.trackers import TRACKERS, Tracker

    class Counting(Tracker):
        extra = "core"
        modules = ("json",)
        ends: list[str] = []

        def on_cell_end(self, event):
            self.ends.append(event.record.id)

    monkeypatch.setitem(TRACKERS._objects, "counting", Counting)
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "experiment tracker: counting, mlflow, tensorboard, wandb" in " ".join(capsys.readouterr().out.split())
    result = _toy(tmp_path, variants=["frozen"], loggers=["counting"])
    assert Counting.ends == [c.id for c in result.cells]


def test_a_logging_handler_left_on_a_closed_stream_does_not_break_a_cell(tmp_path):
    """A handler whose stream was closed (an embedding app's, an earlier test's capture) can write
    nothing: the cell's redirection leaves it alone instead of failing on its flush."""
    import io

    from lcdense import framework_output

    stale, live = open(tmp_path / "closed.txt", "w"), io.StringIO()  # noqa: SIM115 (closed below)
    logger = logging.getLogger("lcdense-test-stale")
    handlers = [logging.StreamHandler(stale), logging.StreamHandler(live)]
    for handler in handlers:
        logger.addHandler(handler)
    stale.close()
    try:
        with framework_output(tmp_path / "train.log", show=False):
            logger.handlers[1].emit(logging.LogRecord("x", logging.WARNING, "", 0, "into the log", None, None))
        assert handlers[0].stream is stale and handlers[1].stream is live  # both as they were
        assert "into the log" in (tmp_path / "train.log").read_text() and live.getvalue() == ""
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
