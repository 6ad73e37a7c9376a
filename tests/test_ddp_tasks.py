"""Every built-in task's embedded default trains data-parallel: ``lcdense run --ddp 2 --device cpu``
(two gloo ranks started by torchrun), a few steps per cell; one run per task, shared by the
module's tests. Classification runs all four variants: how a variant is built, wrapped and
checked under DDP is the engine's, the same for every task. Segmentation and detection, whose
runs prove their own trainers, data and models under DDP, run the two variants that bound the
others: learnable (no frozen tensor) and lc-frozen (LC-Blocks over a frozen bank).

Each run is started from this process, the launcher, with ``torch.cuda`` and the task's
``build_model`` made to fail here: the launcher holds no model and no CUDA context beside rank 0's
(the ranks are processes of their own). The frozen filters of every cell equal those of the same
cell built in one process, every rank's peak memory is recorded beside the per-rank prediction, and
detection, the task that runs a framework's trainer (ultralytics') in each rank, streams its epochs
to the run's real callbacks and a tracker.
"""
from __future__ import annotations

import json
import math
import os
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import torch

from lcdense.cli import main
from lcdense.core.digest import frozen_digest
from lcdense.engine.config import cell_config
from lcdense.engine.runner import converter, load_run, prepare_data
from lcdense.engine.task import TASKS

COMMON = ["--ddp", "2", "--device", "cpu", "--seeds", "1", "--E", "2", "--epochs", "1", "--quiet", "--no-analysis"]
EMPTY = frozen_digest(torch.nn.Identity())  # a model without frozen filters
VARIANTS = {"learnable__seed0", "frozen__seed0", "lc-learnable@2__seed0", "lc-frozen@2__seed0"}
BOUNDS = ["--variants", "learnable,lc-frozen"]  # see the module's docstring
BOUNDED = {"learnable__seed0", "lc-frozen@2__seed0"}
CUDA_CALLS = ("is_available", "device_count", "init", "set_device", "current_device", "get_device_properties",
              "mem_get_info", "reset_peak_memory_stats", "max_memory_allocated", "_lazy_init")

#: task → (its extra's modules, the arguments of its tiny embedded run: a few steps of one epoch)
RUNS: dict[str, tuple[tuple[str, ...], list[str]]] = {
    "classification": ((), ["--task", "classification", "--batch-size", "32", "--set", "data.train_limit=96",
                            "--set", "data.val_limit=32", "--set", "eval.batch_size=32"]),  # 3 steps
    "timm-recipe": (("timm",), ["--task", "classification", "--dataset", "embedded-imagefolder", "--model",
                                "timm:test_resnet", "--set", "train.recipe=timm", "--set", "data.image_size=32",
                                "--set", "train.batch_size=20", "--set", "train.warmup_epochs=0",
                                "--set", "eval.batch_size=50"]),
    "segmentation": (("segmentation_models_pytorch", "albumentations", "timm"),
                     ["--task", "segmentation", "--batch-size", "8", "--set", "data.image_size=[32,48]",
                      "--set", "model.name=resnet18", "--set", "model.encoder_depth=3",
                      "--set", "model.decoder_channels=[16,8,4]", *BOUNDS]),
    "detection": (("ultralytics", "pycocotools"),
                  ["--task", "detection", "--batch-size", "4", "--logger", "tensorboard", "--set", "train.warmup_epochs=0",
                   "--set", "data.shapes={n_trainval: 12, n_test: 4, size: 64, max_objects: 2, seed: 0}", *BOUNDS]),  # 3 steps
}


def _refuse(what: str) -> Any:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"the launcher called {what}")
    return refused


def _launch(name: str, out: Path) -> tuple[Path, float]:
    """``lcdense run ... --ddp 2 --device cpu`` of ``name``, from this process as its launcher; the run directory and its wall time."""
    import time

    modules, args = RUNS[name]
    if any(find_spec(m) is None for m in modules):
        pytest.skip(f"needs {', '.join(modules)}")
    if name == "detection" and find_spec("tensorboard") is None:
        args = [a for a in args if a not in ("--logger", "tensorboard")]
    task = TASKS.get(args[args.index("--task") + 1])
    began = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch:
        for call in CUDA_CALLS:
            patch.setattr(torch.cuda, call, _refuse(f"torch.cuda.{call}"))
        patch.setattr(task, "build_model", _refuse(f"{task.__name__}.build_model"))
        code = main(["run", *args, *COMMON, "--out", str(out), "--name", "ddp"])
    assert code == 0
    (run_dir,) = out.glob("*/ddp")
    return run_dir, time.perf_counter() - began


def _records(run_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (run_dir / "cells").glob("*/cell.json")}


def _one_process_digests(run_dir: Path, cache: Path) -> dict[str, str]:
    """The frozen digest of every cell of ``run_dir`` with frozen filters, built and converted in this one process."""
    config, task, cells, axis_keys = load_run(run_dir)
    data = prepare_data(task, config, cache)
    digests = {}
    for spec in (c for c in cells if c.variant.kind.endswith("frozen")):
        cfg = cell_config(config, spec, axis_keys)
        torch.manual_seed(spec.seed)
        digests[spec.id] = frozen_digest(converter(cfg, spec, task)(task.build_model(cfg, data)).model)
    return digests


#: the timm recipe's ranks take the same torchrun path as classification's: beyond the default suite (-m slow)
PARAMS = [pytest.param(name, marks=pytest.mark.slow) if name == "timm-recipe" else name for name in RUNS]


@pytest.fixture(scope="module", params=PARAMS)
def ddp_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, float]:
    out = tmp_path_factory.mktemp(request.param)
    run_dir, seconds = _launch(request.param, out)
    return request.param, run_dir, seconds


def test_every_variant_trains_on_two_gloo_ranks_with_the_one_process_filters(ddp_run):
    name, run_dir, seconds = ddp_run
    records = _records(run_dir)
    assert set(records) == (BOUNDED if "--variants" in RUNS[name][1] else VARIANTS), name
    assert json.loads((run_dir / "environment.json").read_text())["world_size"] == 2
    single = _one_process_digests(run_dir, run_dir.parent.parent / ".cache")
    for cell_id, record in records.items():
        assert record["status"] == "done"
        assert record["costs"]["world_size"] == 2
        assert record["frozen_digest_before"] == record["frozen_digest_after"] == single.get(cell_id, EMPTY), cell_id
        assert [h["epoch"] for h in record["history"]] == [1]
        assert all(math.isfinite(v) for v in record["metrics"].values()), cell_id
        assert not (run_dir / "cells" / cell_id / "checkpoint.pt").exists()
    assert sorted(single) == sorted(i for i, r in records.items() if r["kind"].endswith("frozen")) != []
    assert all(records[i]["costs"]["frozen_params"] > 0 and single[i] != EMPTY for i in single)
    print(f"{name}: --ddp 2 --device cpu, 4 cells in {seconds:.1f}s")


def test_every_rank_records_its_peak_beside_the_per_rank_prediction(ddp_run):
    _, run_dir, _ = ddp_run
    for cell_id, record in _records(run_dir).items():
        costs = record["costs"]
        peaks = costs["peak_memory_mb_per_rank"]
        assert len(peaks) == 2 and all(p > 0 for p in peaks), cell_id
        assert costs["peak_memory_mb"] == max(peaks)
        assert all(0.5 < peak / costs["predicted_peak_memory_mb"] < 2 for peak in peaks), (cell_id, peaks, costs)
        assert costs["peak_memory_kind"] == "cpu_tensor_peak"


@pytest.mark.parametrize("ddp_run", ["detection"], indirect=True)  # the task whose ranks run ultralytics' trainer
def test_detection_ranks_report_their_epochs_to_the_runs_callbacks_and_tracker(ddp_run):
    _, run_dir, _ = ddp_run
    records = _records(run_dir)
    for cell_id, record in records.items():
        assert record["provenance"]["frozen_digests"]["ema"] == record["frozen_digest_after"]
        history = (run_dir / "cells" / cell_id / "history.csv").read_text().splitlines()
        assert len(history) == 2 and "box_loss" in history[0]
    if find_spec("tensorboard") is not None:
        from tensorboard.backend.event_processing.event_accumulator import (
            EventAccumulator,
        )

        for cell_id in records:
            events = EventAccumulator(str(run_dir / "tensorboard" / cell_id))
            events.Reload()
            assert "epoch/train_box_loss" in events.Tags()["scalars"], cell_id
    assert (run_dir / "summary.md").is_file()
    # the ranks' trainers launched no workers of their own: ultralytics' launcher would have pickled
    # the trainer and its callbacks (the run's console, trackers) into its settings directory's DDP/
    settings = Path(os.environ.get("YOLO_CONFIG_DIR", run_dir.parent.parent / ".cache" / "ultralytics"))
    assert settings.is_dir() and not (settings / "DDP").exists()  # the ranks' ultralytics settings directory
