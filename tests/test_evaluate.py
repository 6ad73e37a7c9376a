"""Evaluation after the run (``lcdense evaluate``): the corruptions (generated, seeded; or CIFAR-10-C
files read in place), the adversarial attacks and CIFAR-10.1 on the kept models of a finished run;
their numbers join the records, the report, its gaps and figures; evaluated cells are skipped and an
interrupted evaluation resumes. Detection and segmentation evaluate corrupted validation images."""
from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

import lcdense
from lcdense import LcdenseError
from lcdense.cli import main
from lcdense.engine.corruptions import CORRUPTIONS, Corruption, corrupt_image
from lcdense.engine.records import read_cell

pytestmark = pytest.mark.extra("robustness")

TINY = {"epochs": 1, "quiet": True, "analysis": False, "data.train_limit": 128, "data.val_limit": 32,
        "train.batch_size": 64, "eval.batch_size": 64}
QUICK = {"evaluate.corruptions.names": "gaussian_noise,fog", "evaluate.corruptions.severities": [1, 5],
         "evaluate.corruptions.limit": 12, "evaluate.adversarial.limit": 6, "evaluate.adversarial.pgd_steps": 3,
         "evaluate.adversarial.autoattack": None}  # AutoAttack: test_autoattack_from_its_official_code


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished two-variant, two-seed classification run on the embedded data."""
    result = lcdense.run("classification", variants="learnable,lc-frozen", E="2", seeds=[0, 1],
                         out=str(tmp_path_factory.mktemp("runs")), **TINY)
    return result.run_dir


@pytest.fixture(scope="module")
def evaluated(run, tmp_path_factory) -> tuple[Path, lcdense.Evaluation]:
    copy = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(run, copy)
    return copy, lcdense.evaluate(copy, "corruptions,adversarial", device="cpu", settings=QUICK, quiet=True)


def test_every_corruption_is_seeded_keeps_shape_and_changes_the_image() -> None:
    rng = np.random.default_rng(0)
    rgb, grey, small = (rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((32, 40, 3), (32, 32), (16, 16, 1)))
    state = np.random.get_state()[1].copy()
    for name in CORRUPTIONS:
        out = corrupt_image(rgb, name, 3, seed=7)
        assert out.shape == rgb.shape and out.dtype == np.uint8, name
        assert not np.array_equal(out, rgb), name
        assert np.array_equal(out, corrupt_image(rgb, name, 3, seed=7)), name  # the same seed, the same image
    assert np.array_equal(np.random.get_state()[1], state)  # numpy's global generator is left alone
    assert not np.array_equal(corrupt_image(rgb, "gaussian_noise", 3, 7), corrupt_image(rgb, "gaussian_noise", 3, 8))
    assert np.abs(corrupt_image(rgb, "fog", 5, 0).astype(int) - rgb).mean() > \
        np.abs(corrupt_image(rgb, "fog", 1, 0).astype(int) - rgb).mean()
    assert corrupt_image(grey, "fog", 2, 0).shape == (32, 32)
    assert corrupt_image(small, "pixelate", 2, 0).shape == (16, 16, 1)
    with pytest.raises(LcdenseError, match="unknown corruption 'fogg'; did you mean 'fog'"):
        corrupt_image(rgb, "fogg", 1, 0)


def test_suites_join_the_records_report_and_figures(evaluated) -> None:
    run_dir, evaluation = evaluated
    assert {(cell, suite) for cell, suite, _, _ in evaluation.done} == {
        (c, s) for c in ("learnable__seed0", "learnable__seed1", "lc-frozen@2__seed0", "lc-frozen@2__seed1")
        for s in ("corruptions", "adversarial")}
    for cell in run_dir.joinpath("cells").iterdir():
        record = read_cell(cell)
        m = record.metrics
        grid = [m[f"corruptions/top1/{c}/s{s}"] for c in ("gaussian_noise", "fog") for s in (1, 5)]
        assert m["corruptions/top1"] == pytest.approx(statistics.fmean(grid))
        assert m["corruptions/top1/fog"] == pytest.approx((m["corruptions/top1/fog/s1"] + m["corruptions/top1/fog/s5"]) / 2)
        assert all(0 <= v <= 1 for v in grid)
        assert all(0 <= m[f"adversarial/{k}_top1"] <= 1 for k in ("clean", "fgsm", "pgd"))
        assert record.suites["adversarial"]["headline"] == ["fgsm_top1", "pgd_top1"]
        assert record.suites["corruptions"]["settings"]["limit"] == 12 and record.suites["corruptions"]["seconds"] > 0
        assert not (cell / "suites" / "corruptions.partial.json").exists()
    # the number in the record is the model's, recomputed here from the kept weights
    task, result = lcdense.get_task("classification"), lcdense.load(run_dir)
    record = result.cell("lc-frozen@2__seed1")
    config = {**result.config, "eval": {**result.config["eval"], "batch_size": 64}}
    data = task.prepare_data(config, Path(result.config["run"]["out"]) / ".cache")
    cell = lcdense.Cell(variant=record.variant, seed=1, init_seed=1, data_seed=1, dir=run_dir, device=torch.device("cpu"),
                        convert=None)
    fog = task.evaluate_images(result.model(record.id), data, config, cell, Corruption("fog", 5), limit=12)
    assert fog["top1"] == pytest.approx(record.metrics["corruptions/top1/fog/s5"])
    summary = json.loads((run_dir / "summary.json").read_text())["groups"][""]
    gap = summary["suite_gaps"]["corruptions/top1"][0]
    assert gap["gap"] == "lc-frozen@2 - learnable" and gap["n"] == 2 and "ci95" in gap
    assert set(summary["suite_gaps"]) == {"corruptions/top1", "adversarial/fgsm_top1", "adversarial/pgd_top1"}
    text = (run_dir / "summary.md").read_text()
    assert "top1 of **learnable** per corruption and severity" in text and "| fog |" in text
    assert "| lc-frozen@2 - learnable | adversarial/pgd_top1 |" in text
    for figure in ("corruptions_top1_per_variant.png", "corruptions_top1_vs_severity.png",
                   "adversarial_pgd_top1_per_variant.png"):
        assert (run_dir / "figures" / figure).stat().st_size > 0
    assert "corruptions/top1/fog/s5" in (run_dir / "results.csv").read_text().splitlines()[0]


def test_an_evaluated_cell_is_skipped(evaluated, capsys) -> None:
    run_dir, _ = evaluated
    before = {p.name: p.read_bytes() for p in run_dir.glob("cells/*/cell.json")}
    again = lcdense.evaluate(run_dir, ["corruptions"], device="cpu", settings=QUICK)
    assert again.done == [] and len(again.skipped) == 4
    assert "learnable__seed0 corruptions: evaluated earlier, skipped" in capsys.readouterr().out
    assert before == {p.name: p.read_bytes() for p in run_dir.glob("cells/*/cell.json")}


def test_an_interrupted_evaluation_resumes_from_its_last_step(run, tmp_path, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(run, run_dir)
    task_class = type(lcdense.get_task("classification"))
    original, calls = task_class.evaluate_images, []

    def interrupted(self, *args, **kwargs):
        calls.append(args[3] if len(args) > 3 else kwargs.get("transform"))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(task_class, "evaluate_images", interrupted)
    settings = {**QUICK, "evaluate.corruptions.limit": 4}
    with pytest.raises(KeyboardInterrupt):
        lcdense.evaluate(run_dir, "corruptions", device="cpu", settings=settings, quiet=True)
    first = sorted(run_dir.glob("cells/*/suites/corruptions.partial.json"))
    assert len(first) == 1 and len(json.loads(first[0].read_text())["steps"]) == 2
    calls.clear()
    monkeypatch.setattr(task_class, "evaluate_images", original)
    tensorboard = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from lcdense.engine.trackers import TensorBoardLogger

    done = lcdense.evaluate(run_dir, "corruptions", device="cpu", settings=settings, quiet=True,
                            callbacks=[TensorBoardLogger()])
    assert len(done.done) == 4
    record = read_cell(first[0].parent.parent)
    assert record.suites["corruptions"]["resumed_steps"] == 2
    assert not first[0].exists()
    events = tensorboard.EventAccumulator(str(run_dir / "tensorboard" / record.id))  # the trackers see the suite
    events.Reload()
    assert events.Scalars("final/corruptions/top1")[0].value == pytest.approx(record.metrics["corruptions/top1"])
    gaps = tensorboard.EventAccumulator(str(run_dir / "tensorboard" / "gaps"))
    gaps.Reload()
    assert "gap/corruptions/top1/lc-frozen@2 - learnable" in gaps.Tags()["scalars"]


def test_cifar10_c_and_cifar10_1_files_are_read_in_place(run, tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(run, run_dir)
    images = np.random.default_rng(0).integers(0, 256, (5 * 6, 32, 32, 3), dtype=np.uint8)
    labels = np.tile(np.arange(6) % 10, 5).astype(np.int64)
    c10c = tmp_path / "data" / "CIFAR-10-C"
    c10c.mkdir(parents=True)
    np.save(c10c / "fog.npy", images)
    np.save(c10c / "labels.npy", labels)
    c101 = tmp_path / "c101"
    c101.mkdir()
    np.save(c101 / "cifar10.1_v6_data.npy", images[:8])
    np.save(c101 / "cifar10.1_v6_labels.npy", labels[:8])
    code = main(["evaluate", str(run_dir), "--suite", "corruptions,cifar10.1", "--device", "cpu", "--data",
                 f"corruptions={c10c.parent}", "--data", f"cifar10.1={c101}", "--set",
                 "evaluate.corruptions.names=fog,snow", "--set", "evaluate.corruptions.severities=2,5"])
    out = capsys.readouterr().out
    assert code == 0, out
    model = lcdense.load(run_dir).model("learnable__seed0")
    record = read_cell(run_dir / "cells" / "learnable__seed0")
    with torch.no_grad():
        x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).float() / 255
        hits = (model(x).argmax(1) == torch.from_numpy(labels)).float()
    assert record.metrics["corruptions/top1/fog/s2"] == pytest.approx(hits[6:12].mean().item())
    assert record.metrics["corruptions/top1/fog/s5"] == pytest.approx(hits[24:30].mean().item())
    assert "corruptions/top1/snow/s2" not in record.metrics  # not among the files
    assert record.metrics["cifar10.1/top1"] == pytest.approx(hits[:8].mean().item())
    assert record.suites["corruptions"]["info"]["source"].startswith("files: ")
    np.save(c10c / "fog.npy", images[:, :16])
    code = main(["evaluate", str(tmp_path / "run"), "--suite", "cifar10.1", "--device", "cpu"])
    assert code == 2
    assert "cifar10.1 reads folder of cifar10.1_v6_data.npy" in capsys.readouterr().err


def test_bad_requests_are_one_line(run, capsys) -> None:
    assert main(["evaluate", str(run), "--suite", "corruptons"]) == 2
    assert "unknown suite 'corruptons'; did you mean 'corruptions'?" in capsys.readouterr().err
    with pytest.raises(LcdenseError, match="unknown config key 'evaluate.corruptions.limt'"):
        lcdense.evaluate(run, "corruptions", settings={"evaluate.corruptions.limt": 3})
    with pytest.raises(LcdenseError, match="corruption severities must be integers 1-5"):
        lcdense.evaluate(run, "corruptions", settings={"evaluate.corruptions.severities": [0]}, quiet=True)


@pytest.mark.extra("segmentation")
def test_segmentation_dice_under_corruption(tmp_path) -> None:
    task = lcdense.get_task("segmentation")
    config = task.default_config()
    data = task.prepare_data(config, tmp_path / "cache")

    class Brightness(torch.nn.Module):  # foreground where the (normalised) image is bright: Dice depends on the pixels
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(1, keepdim=True) * 4

    model = Brightness()
    cell = lcdense.Cell(variant="learnable", seed=0, init_seed=0, data_seed=0, dir=tmp_path, device=torch.device("cpu"),
                        convert=None)
    clean = task.evaluate_images(model, data, config, cell, None, limit=4)
    assert clean == pytest.approx(task.evaluate_images(model, data, config, cell, lambda image, index: image, limit=4))
    noisy = task.evaluate_images(model, data, config, cell, Corruption("gaussian_noise", 5), limit=4)
    assert set(noisy) >= {"dice", "iou"} and 0 < clean["dice"] and noisy["dice"] != clean["dice"]


@pytest.fixture(scope="module")
def linear():
    """Grey images whose class is their brightness, 1.5/255 apart, and the model that reads it: clean
    top-1 is 1, and an ℓ∞ step of 1/255 in the right direction crosses a class boundary."""
    from lcdense_tasks.classification.data import TensorData

    task = lcdense.get_task("classification")
    levels = 0.5 + (torch.arange(10) - 4.5) * 1.5 / 255
    y = torch.arange(12) % 10
    x = (levels[y].view(-1, 1, 1, 1).expand(-1, 3, 32, 32) * 255).round().to(torch.uint8)
    data = TensorData(x, y, x, y, [str(c) for c in range(10)], (0.5,) * 3, (0.25,) * 3, "test")

    class Brightness(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return -((images.mean((1, 2, 3))[:, None] - levels[None]) * 255) ** 2

    return task, task.default_config(), data, Brightness()


def _adversarial(task, config, data, model, tmp_path, **settings):
    from lcdense.engine.suites import suite_settings

    suite = lcdense.get_suite("adversarial")
    cell = lcdense.Cell(variant="learnable", seed=0, init_seed=0, data_seed=0, dir=tmp_path, device=torch.device("cpu"),
                        convert=None)
    context = lcdense.SuiteContext(cell=cell, config=config, settings=suite_settings(suite, config, settings))
    return suite.run(task, model, data, context)


def test_autoattack_from_its_official_code(linear, tmp_path) -> None:
    task, config, data, model = linear
    # its APGD-CE (the standard version's targeted attacks, FAB-T and Square take minutes on a shared 2-core machine)
    result = _adversarial(task, config, data, model, tmp_path, limit=6, autoattack=["apgd-ce"])
    m = result.metrics
    assert m["clean_top1"] == 1.0
    assert m["fgsm_top1"] < 0.5 and m["pgd_top1"] < 0.5 and m["autoattack_top1"] < 0.5  # 1/255 crosses a boundary
    assert result.headline == ["fgsm_top1", "pgd_top1", "autoattack_top1"]
    assert result.info["autoattack"]["version"] == ["apgd-ce"] and result.info["eps"] == pytest.approx(1 / 255)


def test_a_missing_autoattack_is_skipped_in_one_line(linear, tmp_path, monkeypatch) -> None:
    task, config, data, model = linear
    monkeypatch.setitem(__import__("sys").modules, "pyautoattack", None)
    result = _adversarial(task, config, data, model, tmp_path, limit=4, pgd_steps=2)
    assert "autoattack_top1" not in result.metrics and result.metrics["clean_top1"] == 1.0
    assert result.notes == ['AutoAttack skipped: pyautoattack is not installed (pip install "lcdense[robustness]")']


@pytest.mark.extra("detection")
def test_detection_validates_a_cached_corrupted_copy(tmp_path) -> None:
    from PIL import Image

    from lcdense_tasks.detection.transformed import transformed_split

    task = lcdense.get_task("detection")
    config = task.default_config()
    data = task.prepare_data(config, tmp_path / "cache")
    fog = Corruption("fog", 5)
    changed = transformed_split(data.dataset, fog, limit=3)
    folder = changed.yaml_path.parent
    assert folder.name == "fog-5-seed0-first3" and json.loads(changed.yaml_path.read_text())["val"] == str(folder / "val.txt")
    listed = folder.joinpath("val.txt").read_text().split()
    assert len(listed) == 3 and [item["image"] for item in changed.ground_truth["val"]] == [Path(p).name for p in listed]
    original = [line for line in data.dataset.yaml_path.parent.joinpath("val.txt").read_text().split()][:3]
    for index, (source, target) in enumerate(zip(original, listed)):
        expected = fog(np.asarray(Image.open(source).convert("RGB")), index)
        assert np.array_equal(np.asarray(Image.open(target)), expected)  # PNG: no second compression
        label = Path(source).parent.parent.parent / "labels" / "val" / f"{Path(source).stem}.txt"
        assert (folder / "labels" / "val" / label.name).read_text() == label.read_text()
    stamp = changed.yaml_path.stat().st_mtime_ns
    assert transformed_split(data.dataset, fog, limit=3).yaml_path.stat().st_mtime_ns == stamp  # made once
    torch.manual_seed(0)
    cell = lcdense.Cell(variant="learnable", seed=0, init_seed=0, data_seed=0, dir=tmp_path, device=torch.device("cpu"),
                        convert=None, quiet=True)
    metrics = task.evaluate_images(task.build_model(config, data).eval(), data, config, cell, fog, limit=3)
    assert set(metrics) == {"map50_95", "map50", "precision", "recall"} and all(0 <= v <= 1 for v in metrics.values())
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # the validator's scratch folder is gone


def test_a_config_runs_its_suites_at_the_end_and_a_typo_is_refused_before_training(tmp_path) -> None:
    with pytest.raises(LcdenseError, match="unknown suite 'corruptons'"):
        lcdense.run("classification", variants="learnable", seeds=[0], out=str(tmp_path / "bad"),
                    **TINY, **{"evaluate.suites": ["corruptons"]})
    assert not (tmp_path / "bad").exists()  # refused before a run directory was made
    result = lcdense.run("classification", variants="learnable", seeds=[0], out=str(tmp_path / "runs"), **TINY,
                         **{"evaluate.suites": ["corruptions"], "evaluate.corruptions.names": "fog",
                            "evaluate.corruptions.severities": [2], "evaluate.corruptions.limit": 4})
    record = result.cells[0]
    assert record.metrics["corruptions/top1"] == record.metrics["corruptions/top1/fog/s2"]
    assert "corruptions/top1" in result.summary.groups[""]["suite_gaps"]
