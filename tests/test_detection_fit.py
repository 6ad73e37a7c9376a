"""Tiny detection fits: frozen filters stay bitwise through training, EMA, checkpoints and resume; no network."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

# found, not imported: lcdense_tasks.detection must load before ultralytics (it switches it offline)
if any(find_spec(m) is None for m in ("ultralytics", "pycocotools")):
    pytest.skip('needs the detection extra: pip install "lcdense[detection]"', allow_module_level=True)

from lcdense_tasks.detection import DetectionTask  # noqa: E402

import lcdense  # noqa: E402
from lcdense import Cell  # noqa: E402

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


def _ema_fallback_path_late_decay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ultralytics' ModelEMA take its ``d·ema + (1 − d)·model`` path (no _foreach_lerp_) at a
    decay d ≈ 0.78 (as after 3000 updates), where that arithmetic rounds equal values."""
    from ultralytics.utils import torch_utils

    original = torch_utils.ModelEMA.update

    def late_update(self, model):
        self.updates = max(self.updates, 3000)
        return original(self, model)

    monkeypatch.setattr(torch_utils, "TORCH_2_0", False)
    monkeypatch.setattr(torch_utils.ModelEMA, "update", late_update)


def test_ema_arithmetic_and_the_frozen_copy(setup, monkeypatch: pytest.MonkeyPatch) -> None:  # setup: ultralytics offline
    """ultralytics' ModelEMA keeps equal values bitwise on its lerp path, not on its fallback path
    (d ≈ 0.78 here, as after 3000 updates); copy_frozen, which the trainer applies after every
    update, makes them equal again."""
    from lcdense_tasks.detection.trainer import copy_frozen
    from ultralytics.utils import torch_utils

    model = lcdense.convert(torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.Conv2d(16, 16, 3)), "lc", E=4,
                            spatial="frozen", seed=0).model
    digest = lcdense.frozen_digest(model)
    lerp = torch_utils.ModelEMA(model, updates=3000)
    fallback = torch_utils.ModelEMA(model, updates=3000)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    lerp.update(model)
    assert lcdense.frozen_digest(lerp.ema) == digest
    monkeypatch.setattr(torch_utils, "TORCH_2_0", False)  # the path taken where _foreach_lerp_ is unavailable
    fallback.update(model)
    assert lcdense.frozen_digest(fallback.ema) != digest  # d·x + (1 − d)·x rounded the frozen banks
    copy_frozen(model, fallback.ema)
    assert lcdense.frozen_digest(fallback.ema) == digest


def test_fit_resume_and_evaluate_keep_frozen_filters(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lcdense_tasks.detection.trainer import LcdenseDetectionTrainer

    task, config, data = setup
    model = fresh_model(task, config, data)
    digest = lcdense.frozen_digest(model)
    original_save = LcdenseDetectionTrainer.save_model
    ema_digests: list[str] = []
    _ema_fallback_path_late_decay(monkeypatch)  # frozen EMA tensors must stay exact on that path too

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

    saved = cell.load_checkpoint()
    restored: list[dict] = []
    original_restore = LcdenseDetectionTrainer._load_checkpoint_state

    def capture_restored(self: LcdenseDetectionTrainer, ckpt: dict) -> None:
        original_restore(self, ckpt)
        restored.append({"ema": {k: v.clone() for k, v in self.ema.ema.state_dict().items()},
                         "optimizer": {i: {n: v.clone() for n, v in st.items()}
                                       for i, st in self.optimizer.state_dict()["state"].items()},
                         "updates": self.ema.updates})

    monkeypatch.setattr(LcdenseDetectionTrainer, "_load_checkpoint_state", capture_restored)
    trained, history = task.fit(fresh_model(task, config, data), data, config, cell)  # exact fp32 resume
    assert lcdense.frozen_digest(trained) == digest == ema_digests[-1]
    assert [h["epoch"] for h in history] == [1.0, 2.0] and history[-1]["train_box_loss"] > 0
    assert any(isinstance(m, lcdense.LCConv) for m in trained.modules())
    # the resume restored the fp32 EMA and optimizer state bit for bit (last.pt holds them in fp16)
    (state,) = restored
    assert state["updates"] == saved["ema_updates"] and set(state["ema"]) == set(saved["ema"])
    assert all(torch.equal(state["ema"][k], saved["ema"][k]) for k in saved["ema"])
    moments = [(k, name) for k, v in saved["optimizer"]["state"].items() for name in v if name == "exp_avg"]
    assert moments and all(torch.equal(state["optimizer"][k][n], saved["optimizer"]["state"][k][n]) for k, n in moments)
    assert cell.provenance.resumes == [{"after_epoch": 1, "source": "fp32_state", "exact": True,
                                        "data_order": "restarted"}]
    assert cell.provenance.train_precisions == ["fp32"]  # train.amp false

    validated: list[dict] = []
    original_validate = DetectionTask._validate

    def capture_validated(self, model, *args):
        validated.append({k: v.clone() for k, v in model.state_dict().items()})
        return original_validate(self, model, *args)

    monkeypatch.setattr(DetectionTask, "_validate", capture_validated)
    final = cell.load_checkpoint()
    metrics = task.evaluate(trained, data, config, cell)
    assert lcdense.frozen_digest(trained) == digest  # evaluation fuses a copy, never the model
    for key in ("map50_95", "map50", "precision", "recall", "coco_map50_95", "coco_map50", "raw_map50_95", "raw_map50"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["map50"] >= metrics["map50_95"]
    # primary metrics come from the fp32 EMA weights, the raw_ ones from the trained weights
    ema_state, raw_state = validated
    assert all(torch.equal(ema_state[k], final["ema"][k]) for k in final["ema"])
    assert all(torch.equal(raw_state[k], v) for k, v in trained.state_dict().items())
    assert any(not torch.equal(ema_state[k], raw_state[k]) for k in raw_state if raw_state[k].is_floating_point())
    assert cell.provenance.primary_weights == "ema" and cell.provenance.eval_precision == "fp32"
    assert cell.provenance.frozen_digests == {"ema": digest}
    assert set(metrics["per_class"]) <= {"circle", "square", "triangle"} and metrics["per_class"]
    for values in metrics["per_class"].values():  # AP50 bounds AP50-95 from above, class by class
        assert set(values) == {"ap50_95", "ap50"} and 0 <= values["ap50_95"] <= values["ap50"] <= 1
    means = [sum(v[k] for v in metrics["per_class"].values()) / len(metrics["per_class"]) for k in ("ap50_95", "ap50")]
    assert means == pytest.approx([metrics["map50_95"], metrics["map50"]])  # ultralytics' mAP is their mean
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
    trained, _ = task.fit(fresh_model(task, config, data), data, config, cell)
    assert cell.provenance.resumes == [{"after_epoch": 1, "source": "ultralytics_fp16_ema", "exact": False,
                                        "data_order": "restarted"}]
    assert cell.provenance.to_dict("kaiming_uniform")["resume"]["exact"] is False
    assert lcdense.frozen_digest(trained) == digest


def test_detection_cell_records_ema_as_primary_with_both_digests(tmp_path: Path, capsys) -> None:
    from lcdense.cli import main

    shapes = "data.shapes={n_trainval: 8, n_test: 4, size: 64, max_objects: 2, seed: 0}"
    assert main(["run", "--task", "detection", "--variants", "lc-frozen", "--E", "2", "--epochs", "1", "--batch-size", "4",
                 "--set", shapes, "--set", "train.warmup_epochs=0", "--device", "cpu", "--out", str(tmp_path),
                 "--no-analysis"]) == 0
    printed = capsys.readouterr()
    from lcdense_tasks.detection.offline import INTEGRATIONS
    from ultralytics.utils import SETTINGS

    assert not any(SETTINGS[key] for key in INTEGRATIONS)  # ultralytics' MLflow would write mlflow.db to the cwd
    (record_path,) = tmp_path.glob("detection/*/cells/lc-frozen@2__seed0/cell.json")
    record = json.loads(record_path.read_text())
    # the console shows lcdense's lines only; ultralytics' and pycocotools' output is in the cell's train.log
    assert "[1/1] lc-frozen@2__seed0  map50_95=" in printed.out and "| lc-frozen@2 |" in printed.out
    for framework in ("Ultralytics", "Starting training", "Loading and preparing results", "index created"):
        assert framework not in printed.out + printed.err
        assert framework in (record_path.parent / "train.log").read_text()
    per_class = (record_path.parent / "per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,ap50_95,ap50" and len(per_class) == 1 + len(record["extra_metrics"]["per_class"])
    history = (record_path.parent / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_box_loss,train_cls_loss,train_dfl_loss,") and len(history) == 2
    provenance = record["provenance"]
    assert provenance["primary_weights"] == "ema"
    assert provenance["frozen_digests"] == {"model": record["frozen_digest_after"], "ema": record["frozen_digest_after"]}
    assert provenance["precision"] == {"train": "fp32", "eval": "fp32", "fp32_math": "ieee", "epoch_eval": None}
    assert 0.0 <= record["metrics"]["raw_map50_95"] <= record["metrics"]["raw_map50"] <= 1.0
    decay = provenance["weight_decay"]  # ultralytics' optimizer: conv weights decay, norms and biases do not
    assert decay["norms_and_biases"] == "not decayed" and decay["decayed"]["tensors"] > 0 and len(decay["rates"]) == 1
    assert record["conversion"]["scope"].startswith("backbone+neck: ")  # the default: the Detect head learnable
    assert {layer["name"].split(".")[1] for layer in record["conversion"]["layers"] if layer["action"] == "skipped"} == {"24"}
    summary = (record_path.parents[2] / "summary.md").read_text()
    assert "Primary metric from the ema weights (lc-frozen@2)" in summary
    assert "| map50_95 (mean ± std) | raw_map50_95 (mean ± std) |" in summary
    assert "EMA: map50_95 is of the EMA weights, raw_map50_95 of the trained (raw) weights" in summary
    assert "Conversion scope: backbone+neck (every variant)" in summary


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
