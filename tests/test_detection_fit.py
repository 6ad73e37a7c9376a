"""Tiny detection fits: frozen filters stay bitwise through training, EMA, checkpoints and resume; no network."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import lcdense
from lcdense import Cell
from lcdense_tasks.detection import DetectionTask

ROOT = Path(__file__).resolve().parents[1]


def tiny_config() -> dict:
    config = DetectionTask().default_config()
    config["data"].update(imgsz=64, shapes={"n_trainval": 8, "n_test": 4, "size": 64, "max_objects": 2, "seed": 0})
    config["model"].update(name="yolov5n", width=0.125)
    config["train"].update(epochs=2, batch_size=4, warmup_epochs=0.0)
    return config


def lc_frozen(model: torch.nn.Module) -> lcdense.ConversionReport:
    return lcdense.convert(model, "lc", E=2, spatial="frozen", seed=0)


def fresh_model(task: DetectionTask, config: dict, data) -> torch.nn.Module:
    torch.manual_seed(0)
    return lc_frozen(task.build_model(config, data)).model


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    task, config = DetectionTask(), tiny_config()
    data = task.prepare_data(config, tmp_path_factory.mktemp("cache"))
    return task, config, data


def make_cell(path: Path) -> Cell:
    return Cell(variant="lc-frozen@2", seed=0, init_seed=0, data_seed=0, dir=path, device=torch.device("cpu"),
                convert=lc_frozen, quiet=True)


def test_fit_resume_and_evaluate_keep_frozen_filters(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lcdense_tasks.detection.trainer import LcdenseDetectionTrainer

    task, config, data = setup
    model = fresh_model(task, config, data)
    digest = lcdense.frozen_digest(model)
    original_save = LcdenseDetectionTrainer.save_model
    ema_digests: list[str] = []

    def interrupt_after_first_epoch(self: LcdenseDetectionTrainer) -> bool:
        ema_digests.append(lcdense.frozen_digest(self.ema.ema))
        saved = original_save(self)
        if self.epoch == 0:
            raise KeyboardInterrupt("simulated interruption")
        return saved

    monkeypatch.setattr(LcdenseDetectionTrainer, "save_model", interrupt_after_first_epoch)
    cell = make_cell(tmp_path / "cell")
    with pytest.raises(KeyboardInterrupt):
        task.fit(model, data, config, cell)
    assert ema_digests == [digest]  # the EMA's frozen buffers did not drift either
    assert (cell.dir / "train" / "weights" / "last.pt").is_file()
    assert cell.load_checkpoint()["epoch"] == 0
    assert not any(p for p in cell.dir.rglob("*") if not p.resolve().is_relative_to(cell.dir.resolve()))

    trained, history = task.fit(fresh_model(task, config, data), data, config, cell)  # exact fp32 resume
    assert lcdense.frozen_digest(trained) == digest == ema_digests[-1]
    assert [h["epoch"] for h in history] == [1.0, 2.0] and history[-1]["train_box_loss"] > 0
    assert any(isinstance(m, lcdense.LCConv) for m in trained.modules())

    metrics = task.evaluate(trained, data, config, cell)
    assert lcdense.frozen_digest(trained) == digest  # evaluation fuses a copy, never the model
    for key in ("map50_95", "map50", "precision", "recall", "coco_map50_95", "coco_map50"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["map50"] >= metrics["map50_95"]
    assert set(metrics["per_class_ap"]) <= {"circle", "square", "triangle"}
    again, _ = task.fit(fresh_model(task, config, data), data, config, cell)  # finished: loads, no retraining
    assert lcdense.frozen_digest(again) == digest
    assert torch.equal(again.state_dict()["model.24.cv3.0.2.weight"], trained.state_dict()["model.24.cv3.0.2.weight"])


def test_resume_from_fp16_ema_restores_seeded_frozen_filters(setup, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from lcdense_tasks.detection.trainer import LcdenseDetectionTrainer

    task, config, data = setup
    model = fresh_model(task, config, data)
    digest = lcdense.frozen_digest(model)
    original_save = LcdenseDetectionTrainer.save_model

    def interrupt(self: LcdenseDetectionTrainer) -> bool:
        original_save(self)
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(LcdenseDetectionTrainer, "save_model", interrupt)
    cell = make_cell(tmp_path / "cell")
    with pytest.raises(KeyboardInterrupt):
        task.fit(model, data, config, cell)
    cell.checkpoint_path.unlink()  # as if the run died between last.pt and the fp32 state
    monkeypatch.setattr(LcdenseDetectionTrainer, "save_model", original_save)
    resumed = []
    monkeypatch.setattr(LcdenseDetectionTrainer, "final_eval", lambda self: resumed.append(self.resumed_from))
    trained, _ = task.fit(fresh_model(task, config, data), data, config, cell)
    assert resumed == ["ema"]
    assert lcdense.frozen_digest(trained) == digest


def test_ultralytics_ddp_workers_rebuild_the_lcdense_trainer(setup, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Multi-GPU detection goes through ultralytics' own DDP launcher, which pickles the trainer's
    class, arguments, model and callbacks into a file that each worker runs. Here the parent
    writes that file exactly as ultralytics does and one worker runs it on CPU (no GPUs: one
    process, but the same hand-over); fit then reads the workers' result back."""
    from ultralytics.utils.dist import generate_ddp_file

    from lcdense_tasks.detection.trainer import LcdenseDetectionTrainer

    task, config, data = setup
    model = fresh_model(task, config, data)
    digest = lcdense.frozen_digest(model)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    launched: list[str] = []

    def train_in_a_worker(self: LcdenseDetectionTrainer) -> None:
        file = generate_ddp_file(self)
        launched.append(file)
        try:
            subprocess.run([sys.executable, file], check=True, capture_output=True, text=True)
        finally:
            for path in (Path(file), Path(file).with_suffix(".pt")):
                path.unlink(missing_ok=True)
        self.ddp = True  # what ultralytics' parent process knows once its workers are done

    monkeypatch.setattr(LcdenseDetectionTrainer, "train", train_in_a_worker)
    trained, history = task.fit(model, data, config, make_cell(tmp_path / "cell"))
    assert len(launched) == 1
    assert lcdense.frozen_digest(trained) == digest
    assert [h["epoch"] for h in history] == [1.0, 2.0]
    moved = [k for k, v in trained.state_dict().items() if v.is_floating_point() and not torch.equal(v, initial[k])]
    assert moved  # the worker's training reached the parent's model


def test_the_trainer_needs_its_cell_context() -> None:
    from lcdense_tasks.detection.trainer import LcdenseDetectionTrainer

    with pytest.raises(lcdense.LcdenseError, match="needs its CellContext"):
        LcdenseDetectionTrainer(overrides={})


def test_fit_and_evaluate_make_no_network_access(tmp_path: Path) -> None:
    """A fresh interpreter (so ultralytics' import-time checks are covered) with sockets that refuse."""
    script = textwrap.dedent(f"""
        import json, socket, sys
        attempts = []
        def refuse(name):
            def blocked(*args, **kwargs):
                attempts.append(name)
                raise OSError("network disabled by test")
            return blocked
        socket.socket.connect = refuse("connect")
        socket.create_connection = refuse("create_connection")
        socket.getaddrinfo = refuse("getaddrinfo")
        sys.path.insert(0, {str(ROOT)!r})
        sys.path.insert(0, {str(ROOT / "tests")!r})
        import torch
        from pathlib import Path
        from test_detection_fit import tiny_config, fresh_model, make_cell
        from lcdense_tasks.detection import DetectionTask
        task, config = DetectionTask(), tiny_config()
        config["train"]["epochs"] = 1
        data = task.prepare_data(config, Path({str(tmp_path / "cache")!r}))
        model, _ = task.fit(fresh_model(task, config, data), data, config, make_cell(Path({str(tmp_path / "cell")!r})))
        metrics = task.evaluate(model, data, config, make_cell(Path({str(tmp_path / "cell")!r})))
        print(json.dumps({{"attempts": attempts, "map50": metrics["map50"]}}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLO_")}
    env["HOME"] = str(tmp_path / "home")  # an ultralytics settings dir under ~ would show up here
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["attempts"] == []
    assert not list((tmp_path / "home").rglob("*ltralytics*")), list((tmp_path / "home").rglob("*"))[:20]
    assert (tmp_path / "cache" / "ultralytics" / "Ultralytics" / "Arial.ttf").is_file()
