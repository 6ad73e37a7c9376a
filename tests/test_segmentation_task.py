"""Segmentation task: config profiles, metrics, init sources, and a tiny fit/evaluate/resume."""
from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

if any(find_spec(m) is None for m in ("segmentation_models_pytorch", "albumentations", "timm")):
    pytest.skip('needs the segmentation extra: pip install "lcdense[segmentation]"', allow_module_level=True)

from lcdense_tasks.segmentation import PROFILES, SegmentationTask  # noqa: E402
from lcdense_tasks.segmentation.embedded import generate_carvana, generate_lgg  # noqa: E402
from lcdense_tasks.segmentation.metrics import ConfusionCounts  # noqa: E402
from lcdense_tasks.segmentation.model import PARTS, init_sources  # noqa: E402

import lcdense  # noqa: E402
from lcdense import Cell, LcdenseError  # noqa: E402


def _tiny_config(root: Path, dataset: str = "carvana", epochs: int = 2) -> dict:
    config = SegmentationTask().default_config()
    config["data"].update(dataset=dataset, root=str(root), image_size=[32, 48] if dataset == "carvana" else [32, 32],
                          val_fraction=0.25)
    config["model"].update(name="resnet18", encoder_depth=3, decoder_channels=[16, 8, 4])
    config["train"].update(epochs=epochs, batch_size=8, lr=3e-3)
    config["conversion"] = {"init": "kaiming_uniform"}
    return config


def _lc_frozen(model):
    return lcdense.convert(model, "lc", E=2, spatial="frozen", seed=0)


class _Crash(Exception):
    pass


def _cell(path: Path, *, crash_after: int | None = None) -> Cell:
    cell = Cell(variant="lc-frozen@2", seed=0, init_seed=0, data_seed=1000, dir=path, device=torch.device("cpu"),
                convert=_lc_frozen, quiet=True)
    path.mkdir(parents=True, exist_ok=True)
    if crash_after is not None:  # simulate a run killed right after its first checkpoints
        save, saved = cell.save_checkpoint, []

        def save_then_crash(state):
            save(state)
            saved.append(state["epoch"])
            if len(saved) == crash_after:
                raise _Crash

        cell.save_checkpoint = save_then_crash
    return cell


def _train(task, config, data, cell):
    torch.manual_seed(0)
    model = task.build_model(config, data)
    cell.convert(model)
    digest = lcdense.frozen_digest(model)
    model, history = task.fit(model, data, config, cell)
    assert lcdense.frozen_digest(model) == digest
    return model, history, task.evaluate(model, data, config, cell)


@pytest.fixture(scope="module")
def carvana_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("carvana")
    generate_carvana(root, cars=4, size=(48, 32))
    return root


def test_profiles_fill_null_keys_and_respect_overrides():
    task = SegmentationTask()
    config = task.default_config()
    resolved = task.resolve_config(config)
    assert resolved["data"]["image_size"] == PROFILES[("carvana", "embedded")]["data.image_size"]
    assert config["data"]["image_size"] is None  # the input is not modified
    config["data"].update(dataset="brain-mri", root="/data/lgg")
    config["train"]["epochs"] = 3
    resolved = task.resolve_config(config)
    assert resolved["model"]["name"] == "resnet34" and resolved["data"]["image_size"] == [256, 256]
    assert resolved["train"]["epochs"] == 3
    assert task.input_size(config) == (3, 256, 256)
    with pytest.raises(LcdenseError, match="unknown data.dataset 'voc'"):
        task.resolve_config({**config, "data": {**config["data"], "dataset": "voc"}})
    with pytest.raises(LcdenseError, match=r"multiples of 32 .* got \[250, 256\]"):
        task.resolve_config({**config, "data": {**config["data"], "image_size": [250, 256]}})


def test_unknown_encoder_and_bad_decoder_are_clear_errors(carvana_root):
    task = SegmentationTask()
    config = _tiny_config(carvana_root)
    config["model"]["name"] = "resnet-typo"
    with pytest.raises(LcdenseError, match="unknown smp encoder 'resnet-typo'"):
        task.build_model(config, None)
    config["model"].update(name="resnet18", decoder_channels=[16, 8])
    with pytest.raises(LcdenseError, match="one entry per encoder stage: 3"):
        task.build_model(config, None)


def test_unused_encoder_stages_are_dropped(carvana_root):
    model = SegmentationTask().build_model(_tiny_config(carvana_root), None)  # resnet18 cut to 3 stages
    assert isinstance(model.encoder.layer3, torch.nn.Identity) and isinstance(model.encoder.layer4, torch.nn.Identity)
    assert not isinstance(model.encoder.layer2, torch.nn.Identity)
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert model(torch.zeros(2, 3, 32, 48)).shape == (2, 1, 32, 48)
    report = lcdense.convert(model, "lc", E=2, spatial="frozen")
    assert not any(layer.name.startswith(("encoder.layer3", "encoder.layer4")) for layer in report.layers)


def test_metrics_match_a_hand_computed_example():
    # image a (patient p1): 4 mask pixels, predicted 3 of them plus 1 false positive
    # image b (patient p1): empty mask, 2 false positives
    # image c (patient p2): empty mask, empty prediction
    target = torch.zeros(3, 1, 4, 4)
    target[0, 0, 0, :4] = 1
    logits = torch.full((3, 1, 4, 4), -5.0)
    logits[0, 0, 0, :3] = 5.0
    logits[0, 0, 3, 3] = 5.0
    logits[1, 0, 2, 1:3] = 5.0
    counts = ConfusionCounts()
    counts.add(logits[:2], target[:2], ["p1", "p1"])
    counts.add(logits[2:], target[2:], ["p2"])
    scores = counts.scores(per_group=True)
    tp, fp, fn = 3, 1 + 2, 1
    assert scores["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))  # 6/10
    assert scores["iou"] == pytest.approx(tp / (tp + fp + fn))  # 3/7
    assert scores["patient_dice"] == pytest.approx((6 / 10 + 1.0) / 2)  # p2: empty and nothing predicted -> 1
    empty = ConfusionCounts()
    empty.add(torch.full((1, 1, 2, 2), -1.0), torch.zeros(1, 1, 2, 2), ["p"])
    assert empty.scores(per_group=True) == {"dice": 1.0, "iou": 1.0, "patient_dice": 1.0}
    wrong = ConfusionCounts()
    wrong.add(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), ["p"])
    assert wrong.scores(per_group=True) == {"dice": 0.0, "iou": 0.0, "patient_dice": 0.0}


def test_init_sources_name_the_conversion_or_smp_scheme(carvana_root):
    task = SegmentationTask()
    config = _tiny_config(carvana_root)
    model = task.build_model(config, None)
    lcdense.convert(model, "learnable", include=PARTS["encoder"], seed=0)
    sources = init_sources(model, "kaiming_uniform")
    assert sources["encoder.conv1"] == "lcdense kaiming_uniform"  # the 7x7 stride-2 stem is in scope
    assert sources["decoder.blocks.0.conv1.0"] == "smp decoder scheme (kaiming_uniform fan_in, relu gain)"
    assert sources["segmentation_head.0"] == "smp head scheme (xavier_uniform)"
    model = task.build_model(config, None)
    report = lcdense.convert(model, "lc", E=2, spatial="frozen", seed=0)
    assert report.counts() == {"lc": len(init_sources(model, "kaiming_uniform"))}  # default scope: every spatial conv
    assert set(init_sources(model, "kaiming_uniform").values()) == {
        "lcdense kaiming_uniform (LC-Block spatial bank)"}


def _cell_conversion(config: dict, variant: str, scope: str | None = None) -> lcdense.ConversionReport:
    """The conversion report of a cell as the runner makes it (its converter, the scope axis applied)."""
    from lcdense.engine.config import RUN_DEFAULTS, resolve
    from lcdense.engine.runner import converter
    from lcdense.engine.variants import CellSpec, Variant

    task = SegmentationTask()
    cfg = resolve({**RUN_DEFAULTS, **task.default_config()}, {k: config[k] for k in ("data", "model", "train")},
                  {"conversion.scope": scope})
    torch.manual_seed(0)
    return converter(cfg, CellSpec(Variant.parse(variant, 2), 0), task)(task.build_model(cfg, None))


def test_the_default_scope_keeps_the_segmentation_head_learnable(carvana_root):
    """Frozen U-Net, default scope encoder+decoder: smp's 3x3 segmentation head stays learnable (its
    weight a parameter with smp's init), every other spatial conv is frozen; the report names the scope."""
    report = _cell_conversion(_tiny_config(carvana_root), "frozen")
    actions = {r.name: (r.action, r.reason) for r in report.layers}
    assert actions.pop("segmentation_head.0") == ("skipped", "outside scope 'encoder+decoder' (learnable)")
    assert set(actions.values()) == {("frozen", "")} and len(actions) == 15
    assert report.model.segmentation_head[0].weight.requires_grad
    assert report.scope.startswith("encoder+decoder: encoder and decoder; the segmentation head's 3x3 conv stays")
    assert report.selection["exclude"] == ["segmentation_head.*"]
    assert "scope: encoder+decoder" in str(report) and report.to_dict()["scope"] == report.scope
    every = _cell_conversion(_tiny_config(carvana_root), "frozen", "all")
    assert every.counts() == {"frozen": 16} and every.scope.startswith("all: ")
    encoder = _cell_conversion(_tiny_config(carvana_root), "lc-frozen", "encoder")
    assert {r.name.split(".")[0] for r in encoder.layers if r.action == "lc"} == {"encoder"}
    assert {r.name.split(".")[0] for r in encoder.layers if r.action == "skipped"} == {"decoder", "segmentation_head"}
    with pytest.raises(LcdenseError, match=r"unknown conversion scope 'decoder'; did you mean 'encoder'\? Known: all, encoder, encoder\+decoder \(task 'segmentation'\)"):
        _cell_conversion(_tiny_config(carvana_root), "frozen", "decoder")


def test_lc_frozen_fit_evaluate_and_resume_replays_exactly(carvana_root, tmp_path):
    task = SegmentationTask()
    config = _tiny_config(carvana_root)
    data = task.prepare_data(config, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*"))  # a user root is read in place, nothing generated
    assert len(data.train) == 48 and len(data.val) == 16

    straight = _cell(tmp_path / "straight")
    model, history, metrics = _train(task, config, data, straight)
    assert straight.provenance.train_precisions == ["fp32"] and straight.provenance.eval_precision == "fp32"  # CPU
    assert straight.provenance.resumes == []
    assert [h["epoch"] for h in history] == [1, 2]
    assert set(metrics) == {"dice", "iou", "per_car"} and 0.0 <= metrics["iou"] <= metrics["dice"] <= 1.0
    assert metrics["dice"] == history[-1]["dice"] and "per_car" not in history[-1]
    assert set(metrics["per_car"]) == {s.group for s in data.val}  # one entry per held-out car
    for car in metrics["per_car"].values():
        assert set(car) == {"dice", "iou"} and 0.0 <= car["iou"] <= car["dice"] <= 1.0
    assert (tmp_path / "straight" / "init_sources.json").is_file()

    with pytest.raises(_Crash):
        _train(task, config, data, _cell(tmp_path / "resumed", crash_after=1))
    cell = _cell(tmp_path / "resumed")
    resumed, history2, metrics2 = _train(task, config, data, cell)
    assert cell.provenance.resumes == [{"after_epoch": 1, "source": "fp32_state", "exact": True, "data_order": "replayed"}]
    assert metrics2 == metrics
    assert [h["train_loss"] for h in history2] == [h["train_loss"] for h in history]
    for (name, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_brain_mri_fit_reports_patient_dice(tmp_path):
    root = tmp_path / "lgg"
    generate_lgg(root, patients=4, size=32)
    task = SegmentationTask()
    config = _tiny_config(root, "brain-mri", epochs=1)
    config["data"]["augment"] = False
    data = task.prepare_data(config, tmp_path / "cache")
    assert {s.group for s in data.train}.isdisjoint({s.group for s in data.val})
    _, history, metrics = _train(task, config, data, _cell(tmp_path / "cell"))
    assert set(metrics) == {"dice", "iou", "patient_dice", "per_patient"}
    per_patient = metrics.pop("per_patient")
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert set(per_patient) == {s.group for s in data.val}  # patient_dice is the mean of the per-patient Dice
    assert metrics["patient_dice"] == pytest.approx(sum(p["dice"] for p in per_patient.values()) / len(per_patient))
    assert history[-1]["patient_dice"] == metrics["patient_dice"]
