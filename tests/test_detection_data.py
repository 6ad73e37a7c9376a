"""VOC parsing, YOLO label conversion, error messages and the embedded shapes dataset."""
from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pytest

# found, not imported: lcdense_tasks.detection must load before ultralytics (it switches it offline)
if any(find_spec(m) is None for m in ("ultralytics", "pycocotools")):
    pytest.skip('needs the detection extra: pip install "lcdense[detection]"', allow_module_level=True)

from lcdense_tasks.detection.shapes import SHAPE_CLASSES, generate_shapes_voc  # noqa: E402
from lcdense_tasks.detection.voc import (  # noqa: E402
    VOC_CLASSES,
    build_yolo_dataset,
    parse_annotation,
    yolo_row,
)

from lcdense import LcdenseError  # noqa: E402

XML = """<annotation>
  <filename>000001.jpg</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
  <object><name>dog</name><truncated>1</truncated><difficult>0</difficult>
    <bndbox><xmin>48</xmin><ymin>240</ymin><xmax>195</xmax><ymax>371</ymax></bndbox></object>
  <object><name>person</name><truncated>0</truncated><difficult>1</difficult>
    <bndbox><xmin>{xmin}</xmin><ymin>12</ymin><xmax>352</xmax><ymax>498</ymax></bndbox></object>
</annotation>
"""


def _devkit(root: Path, xml: str, *, image_size: tuple[int, int] = (353, 500), ids: tuple[str, ...] = ("000001",)) -> Path:
    from PIL import Image

    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        Image.new("RGB", image_size, (90, 120, 30)).save(voc / "JPEGImages" / f"{image_id}.jpg")
    (voc / "Annotations" / f"{ids[0]}.xml").write_text(xml)
    for split in ("trainval", "test"):
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root / "VOCdevkit"


SPLITS = {"train": ["VOC2007/trainval"], "val": ["VOC2007/test"]}


def test_parse_and_convert_hand_made_xml(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    path.write_text(XML.format(w=353, h=500, xmin=8))
    annotation = parse_annotation(path)
    assert (annotation.width, annotation.height) == (353, 500)
    dog, person = annotation.objects
    assert (dog.name, dog.box, dog.truncated, dog.difficult) == ("dog", (48.0, 240.0, 195.0, 371.0), True, False)
    assert person.difficult and not person.truncated
    # [xmin-1, xmax] = [47, 195] → cx = 121/353, w = 148/353; [239, 371] → cy = 305/500, h = 132/500
    cls, cx, cy, w, h = yolo_row(dog, 11, width=353, height=500)
    assert cls == 11
    assert (cx, cy, w, h) == pytest.approx((121 / 353, 305 / 500, 148 / 353, 132 / 500), abs=1e-12)


def test_labels_written_and_difficult_policy(tmp_path: Path) -> None:
    devkit = _devkit(tmp_path / "src", XML.format(w=353, h=500, xmin=8))
    excluded = build_yolo_dataset(devkit, SPLITS, tmp_path / "cache", difficult="exclude")
    label = (excluded.yaml_path.parent / "labels" / "train" / "VOC2007_000001.txt").read_text().split()
    assert [float(v) for v in label] == pytest.approx([11, 121 / 353, 305 / 500, 148 / 353, 132 / 500], abs=1e-6)
    assert excluded.summary["train"] == {"images": 1, "objects": 1, "difficult_dropped": 1, "truncated": 1,
                                         "images_without_objects": 0}
    assert excluded.ground_truth["val"][0]["boxes"] == [[47.0, 239.0, 195.0, 371.0]]
    data = json.loads(excluded.yaml_path.read_text())
    assert data["names"] == {str(i): n for i, n in enumerate(VOC_CLASSES)} and "download" not in data
    image = excluded.yaml_path.parent / "images" / "train" / "VOC2007_000001.jpg"
    assert image.is_symlink() and image.resolve() == (devkit / "VOC2007" / "JPEGImages" / "000001.jpg").resolve()
    included = build_yolo_dataset(devkit, SPLITS, tmp_path / "cache", difficult="include")
    assert included.yaml_path != excluded.yaml_path  # content-keyed: the policy is part of the key
    assert included.summary["val"]["objects"] == 2
    again = build_yolo_dataset(devkit, SPLITS, tmp_path / "cache", difficult="exclude")
    assert again.yaml_path == excluded.yaml_path


def test_a_relative_cache_dir_gives_absolute_yaml_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    devkit = _devkit(tmp_path / "src", XML.format(w=353, h=500, xmin=8))
    monkeypatch.chdir(tmp_path)  # e.g. the default runs/.cache: ultralytics reads yaml paths against the cwd
    data = json.loads(build_yolo_dataset(devkit, SPLITS, Path("runs/.cache"), difficult="exclude").yaml_path.read_text())
    for key in ("path", "train", "val"):
        assert Path(data[key]).is_absolute() and Path(data[key]).exists(), key


@pytest.mark.parametrize(("xml", "message"), [
    ("<annotation><size><width>10</width>", "broken XML"),
    (XML.format(w=353, h=500, xmin=0), "outside the 353x500 image"),
    (XML.format(w=353, h=400, xmin=8), "outside the 353x400 image"),
    (XML.format(w=353, h=500, xmin=8).replace("<name>dog</name>", "<name>dragon</name>"), "unknown class 'dragon'"),
    (XML.format(w=353, h=500, xmin=8).replace("<size><width>353</width>", "<size>"), "missing <width>"),
])
def test_bad_annotations_name_the_file(tmp_path: Path, xml: str, message: str) -> None:
    devkit = _devkit(tmp_path, xml)
    with pytest.raises(LcdenseError, match=message) as error:
        build_yolo_dataset(devkit, SPLITS, tmp_path / "cache")
    assert "000001.xml" in str(error.value)
    assert not list((tmp_path / "cache").glob("voc-yolo-*"))  # nothing half-written is left behind


def test_missing_annotation_and_split_errors(tmp_path: Path) -> None:
    devkit = _devkit(tmp_path, XML.format(w=353, h=500, xmin=8), ids=("000001", "000002"))
    with pytest.raises(LcdenseError, match=r"annotation .*000002\.xml not found"):
        build_yolo_dataset(devkit, SPLITS, tmp_path / "cache")
    with pytest.raises(LcdenseError, match=r"split file .*VOC2012.* not found"):
        build_yolo_dataset(devkit, {"train": ["VOC2012/trainval"], "val": ["VOC2007/test"]}, tmp_path / "cache")
    with pytest.raises(LcdenseError, match="VOC root .* not found"):
        build_yolo_dataset(tmp_path / "nowhere", SPLITS, tmp_path / "cache")


def test_image_size_must_match_annotation(tmp_path: Path) -> None:
    devkit = _devkit(tmp_path, XML.format(w=353, h=500, xmin=8), image_size=(400, 500))
    with pytest.raises(LcdenseError, match="does not match the image"):
        build_yolo_dataset(devkit, SPLITS, tmp_path / "cache")


def test_shapes_dataset_is_deterministic_and_valid(tmp_path: Path) -> None:
    first = generate_shapes_voc(tmp_path / "a", n_trainval=6, n_test=3, size=64)
    second = generate_shapes_voc(tmp_path / "b", n_trainval=6, n_test=3, size=64)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 9 * 2 + 4
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    dataset = build_yolo_dataset(first, SPLITS, tmp_path / "cache", classes=SHAPE_CLASSES)
    assert dataset.summary["train"]["images"] == 6 and dataset.summary["val"]["images"] == 3
    assert dataset.summary["train"]["objects"] + dataset.summary["train"]["difficult_dropped"] >= 6
