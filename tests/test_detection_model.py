"""LC-Blocks inside ultralytics YOLO models: BN fusion, model names, and the AP cross-check."""
from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch

# found, not imported: lcdense_tasks.detection must load before ultralytics (it switches it offline)
if any(find_spec(m) is None for m in ("ultralytics", "pycocotools")):
    pytest.skip('needs the detection extra: pip install "lcdense[detection]"', allow_module_level=True)

from lcdense_tasks.detection.offline import load_ultralytics  # noqa: E402

import lcdense  # noqa: E402
from lcdense import LcdenseError  # noqa: E402

NAMES = {0: "circle", 1: "square", 2: "triangle"}


@pytest.fixture(scope="module")
def yolo(tmp_path_factory: pytest.TempPathFactory):
    load_ultralytics(tmp_path_factory.mktemp("cache"))
    from lcdense_tasks.detection import trainer

    return trainer


def test_lc_model_survives_ultralytics_fuse(yolo) -> None:
    torch.manual_seed(0)
    model = yolo.build_detection_model(yolo.model_yaml("yolov5n", width=0.125), NAMES)
    report = lcdense.convert(model, "lc", E=2, spatial="frozen", seed=0)
    assert report.counts()["lc"] == 30  # every spatial conv, the 6x6 stem included
    assert report.layers[0].name == "model.0.conv" and report.layers[0].shape[2:] == (6, 6)
    model = model.double().eval()
    for m in model.modules():  # non-trivial BN statistics, so fusion has something to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)[0]
        fused = model.fuse(verbose=False)
        after = fused(x)[0]
    assert not any(isinstance(m, lcdense.LCConv) for m in fused.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert torch.allclose(before, after, rtol=1e-9, atol=1e-9)


def _cell_conversion(variant: str, scope: str | None = None, name: str = "yolov5n") -> lcdense.ConversionReport:
    """The conversion report of a detection cell as the runner makes it (its converter, the scope applied)."""
    from lcdense_tasks.detection import DetectionTask
    from lcdense_tasks.detection.trainer import build_detection_model, model_yaml

    from lcdense.engine.config import RUN_DEFAULTS, resolve
    from lcdense.engine.runner import converter
    from lcdense.engine.variants import CellSpec, Variant

    task = DetectionTask()
    cfg = resolve({**RUN_DEFAULTS, **task.default_config()}, {}, {"conversion.scope": scope, "model.name": name})
    torch.manual_seed(0)
    model = build_detection_model(model_yaml(name, None, 0.125), NAMES)
    return converter(cfg, CellSpec(Variant.parse(variant, 2), 0), task)(model)


def test_the_default_scope_keeps_the_detect_head_learnable(yolo) -> None:
    """Frozen YOLOv5n-u, default scope backbone+neck: the Detect layer's twelve 3x3 convs stay learnable
    parameters, the backbone (6x6 stem included) and neck are frozen; scopes follow the model's own yaml."""
    report = _cell_conversion("frozen")
    skipped = [r.name for r in report.layers if r.action == "skipped"]
    assert len(skipped) == 12 and all(n.startswith("model.24.cv") for n in skipped)
    assert {r.reason for r in report.layers if r.action == "skipped"} == {"outside scope 'backbone+neck' (learnable)"}
    assert report.counts() == {"frozen": 18, "skipped": 12} and report.layers[0].name == "model.0.conv"
    assert all(p.requires_grad for p in report.model.model[24].parameters() if p.dim() == 4 and p.shape[-1] == 3)
    assert report.scope.startswith("backbone+neck: ") and report.selection["exclude"] == ["model.24.*"]
    assert _cell_conversion("frozen", "all").counts() == {"frozen": 30}
    backbone = _cell_conversion("lc-frozen", "backbone")
    converted = {int(r.name.split(".")[1]) for r in backbone.layers if r.action == "lc"}
    assert converted == {0, 1, 2, 3, 4, 5, 6, 7, 8} and backbone.counts() == {"lc": 12, "skipped": 18}
    v8 = _cell_conversion("frozen", name="yolov8n")  # another layout: its Detect layer is model.22
    assert {r.name.split(".")[1] for r in v8.layers if r.action == "skipped"} == {"22"}


def test_model_names_and_scales(yolo) -> None:
    cfg = yolo.model_yaml("yolov5s", width=0.125)
    assert cfg["yaml_file"] == "yolov5su.yaml" and cfg["scales"] == {"s": [0.33, 0.125, 1024]}
    with pytest.raises(LcdenseError, match="unknown model 'yolov5q'"):
        yolo.model_yaml("yolov5q")


def test_pycocotools_agrees_with_ultralytics_ap(yolo, tmp_path: Path) -> None:
    """Same detections, two AP implementations: jittered ground truth, misses and false positives."""
    from lcdense_tasks.detection.evaluation import coco_metrics
    from lcdense_tasks.detection.shapes import SHAPE_CLASSES, generate_shapes_voc
    from lcdense_tasks.detection.voc import build_yolo_dataset
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils.metrics import ap_per_class

    devkit = generate_shapes_voc(tmp_path, n_trainval=2, n_test=60, size=128)
    ground_truth = build_yolo_dataset(devkit, {"train": ["VOC2007/trainval"], "val": ["VOC2007/test"]}, tmp_path,
                                      classes=SHAPE_CLASSES).ground_truth["val"]
    rng = np.random.default_rng(0)
    validator = DetectionValidator()
    predictions, stats = {}, {"tp": [], "conf": [], "pred_cls": [], "target_cls": []}
    for item in ground_truth:
        boxes, scores, classes = [], [], []
        for box, cls in zip(item["boxes"], item["classes"]):
            if rng.random() < 0.8:  # found, with a jittered box
                size = max(box[2] - box[0], box[3] - box[1])
                boxes.append([v + rng.normal(0, 0.08 * size) for v in box])
                scores.append(float(rng.uniform(0.3, 1.0)))
                classes.append(cls if rng.random() < 0.9 else (cls + 1) % 3)
        for _ in range(int(rng.integers(0, 3))):  # false positives
            x, y = rng.uniform(0, 100, size=2)
            boxes.append([x, y, x + rng.uniform(8, 28), y + rng.uniform(8, 28)])
            scores.append(float(rng.uniform(0.0, 0.6)))
            classes.append(int(rng.integers(3)))
        predictions[item["image"]] = (boxes, scores, classes)
        pred = {"bboxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "cls": torch.tensor(classes, dtype=torch.float32)}
        target = {"bboxes": torch.tensor(item["boxes"], dtype=torch.float32).reshape(-1, 4),
                  "cls": torch.tensor(item["classes"], dtype=torch.float32)}
        stats["tp"].append(validator._process_batch(pred, target)["tp"])
        stats["conf"].append(np.array(scores))
        stats["pred_cls"].append(np.array(classes))
        stats["target_cls"].append(np.array(item["classes"]))
    tp, conf, pred_cls, target_cls = (np.concatenate(stats[k], 0) for k in ("tp", "conf", "pred_cls", "target_cls"))
    ap = ap_per_class(tp, conf, pred_cls, target_cls)[5]  # (classes, 10 IoU thresholds)
    ours = coco_metrics(ground_truth, predictions, num_classes=3, max_det=300)
    assert 0.3 < ap[:, 0].mean() < 0.95  # a non-trivial operating point
    assert ours["coco_map50"] == pytest.approx(ap[:, 0].mean(), abs=0.02)
    assert ours["coco_map50_95"] == pytest.approx(ap.mean(), abs=0.02)
