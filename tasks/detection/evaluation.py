"""pycocotools cross-check of ultralytics' detection metrics, on the same predictions.

``trainer.CollectingValidator`` keeps every image's final detections (after NMS, in
original-image pixels) while ultralytics computes its metrics; :func:`coco_metrics` scores them with
pycocotools against ground truth written from the VOC annotations (not from the validator),
so the two numbers are computed independently from the same detections.

Both use 101-point interpolated AP over IoU 0.50:0.05:0.95, but they are not identical:
ultralytics matches each IoU threshold by highest IoU (COCO: by highest score, one pass per
threshold), integrates the precision envelope with the trapezoid rule (COCO: samples it at
101 recall points), and COCO caps detections per image at ``maxDets`` (set to the same
``max_det``). Expect agreement to about 0.02 absolute, not exactly.

>>> gt = [{"image": "a.jpg", "width": 10, "height": 10, "boxes": [[0, 0, 5, 5]], "classes": [0]}]
>>> preds = {"a.jpg": ([[0, 0, 5, 5]], [0.9], [0])}
>>> round(coco_metrics(gt, preds, num_classes=1, max_det=100)["coco_map50"], 6)
1.0
"""
from __future__ import annotations

import contextlib
import io

Predictions = dict[str, tuple[list[list[float]], list[float], list[int]]]  # image name → (xyxy boxes, scores, classes)


def coco_metrics(ground_truth: list[dict], predictions: Predictions, *, num_classes: int, max_det: int,
                 quiet: bool = True) -> dict[str, float]:
    """COCO-style mAP50-95 and mAP50 with pycocotools (boxes in 0-based pixel edges, xyxy)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, detections = [], [], []
    for image_id, item in enumerate(ground_truth, start=1):
        images.append({"id": image_id, "width": item["width"], "height": item["height"], "file_name": item["image"]})
        for (x0, y0, x1, y1), cls in zip(item["boxes"], item["classes"]):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        boxes, scores, classes = predictions.get(item["image"], ([], [], []))
        for (x0, y0, x1, y1), score, cls in zip(boxes, scores, classes):
            detections.append({"image_id": image_id, "category_id": int(cls) + 1,
                               "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})
    if not detections or not annotations:
        return {"coco_map50_95": 0.0, "coco_map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(detections), iouType="bbox")
        evaluation.params.maxDets = [max_det]
        evaluation.evaluate()
        evaluation.accumulate()
    # precision: (IoU thresholds, recall points, classes, area ranges, max dets); -1 marks classes without ground truth
    precision = evaluation.eval["precision"][:, :, :, 0, -1]
    has_truth = (precision > -1).all(axis=(0, 1))
    per_class = precision[:, :, has_truth].mean(axis=1)  # (IoU thresholds, classes)
    return {"coco_map50_95": float(per_class.mean()), "coco_map50": float(per_class[0].mean())}
