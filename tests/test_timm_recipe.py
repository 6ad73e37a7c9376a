"""The timm training path (``train.recipe: timm``, the paper's Table 2 recipe) on the embedded
ImageNet-layout folder: all four variants end to end, kill + resume, frozen banks bitwise exact
under LAMB and ModelEmaV3, the ImageNet layout and its one-line errors."""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from lcdense_tasks.classification import IMAGENET_STATS, ClassificationTask
from lcdense_tasks.classification.imagenet import ensure_embedded_imagefolder
from lcdense_tasks.classification.models import Normalized
from lcdense_tasks.classification.timm_recipe import loss_for, optimizer_and_schedule

import lcdense
from lcdense import convert, frozen_digest, frozen_tensors
from lcdense.cli import main
from lcdense.core.models import create_model

# every test here trains or builds timm models (timm is imported lazily, so the imports above work without it)
pytestmark = pytest.mark.skipif(importlib.util.find_spec("timm") is None,
                                reason='needs the timm extra: pip install "lcdense[timm]"')

A2 = str(Path(__file__).parents[1] / "configs" / "classification" / "imagenet_resnet18d_rsb_a2.yaml")
# the A2 config at CI size: timm's small test ResNet (deep 3x3 stem like resnet18d), 32 px, 2 epochs
TINY = ["--config", A2, "--model", "timm:test_resnet", "--device", "cpu", "--quiet", "--no-analysis",
        "--set", "data.image_size=32", "--set", "data.workers=0", "--set", "train.batch_size=20",
        "--set", "train.epochs=2", "--set", "train.warmup_epochs=1", "--set", "eval.batch_size=50"]
COMPARED = ("train_loss", "lr", "top1", "top5", "val_loss", "ema_top1", "ema_val_loss")


def _run_dir(out: Path) -> Path:
    (run_dir,) = [p for p in (out / "classification").iterdir() if not p.name.startswith(".")]
    return run_dir


def _cells(run_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (run_dir / "cells").glob("*/cell.json")}


def test_embedded_imagefolder_is_the_imagenet_layout_and_deterministic(tmp_path):
    from PIL import Image

    def tree(root: Path) -> str:
        h = hashlib.sha256()
        for path in sorted(root.rglob("*")):
            if path.is_file():
                h.update(str(path.relative_to(root)).encode() + path.read_bytes())
        return h.hexdigest()

    root = ensure_embedded_imagefolder(tmp_path / "a")
    wnids = sorted(p.name for p in (root / "train").iterdir())
    assert len(wnids) == 10 and wnids[0] == "n90000000" and sorted(p.name for p in (root / "val").iterdir()) == wnids
    assert sorted(p.name for p in (root / "train" / "n90000003").iterdir())[:2] == ["n90000003_1.JPEG", "n90000003_10.JPEG"]
    assert len(list((root / "train").glob("*/*.JPEG"))) == 200 and len(list((root / "val").glob("*/*.JPEG"))) == 50
    assert (root / "val" / "n90000000" / "ILSVRC2012_val_00000001.JPEG").is_file()
    with Image.open(root / "val" / "n90000009" / "ILSVRC2012_val_00000050.JPEG") as image:
        assert (image.format, image.size, image.mode) == ("JPEG", (32, 32), "RGB")
    assert tree(ensure_embedded_imagefolder(tmp_path / "b")) == tree(root)


def test_timm_recipe_end_to_end_all_four_variants(tmp_path):
    out = tmp_path / "runs"
    assert main(["run", *TINY, "--dataset", "embedded-imagefolder", "--set", "run.E=[2]", "--out", str(out)]) == 0
    run_dir = _run_dir(out)
    rows = {r["variant"]: r for r in csv.DictReader((run_dir / "results.csv").open())}
    assert sorted(rows) == ["frozen", "lc-frozen@2", "lc-learnable@2", "learnable"]
    for variant, row in rows.items():
        assert row["frozen_digest_before"] == row["frozen_digest_after"]
        assert float(row["top1"]) == float(row["top1_best"]) >= float(row["top1_last"])
        assert 0.0 <= float(row["fgsm_top1"]) <= 1.0 and float(row["top5"]) >= float(row["top1"])
        assert 0.0 < float(row["data_wait_share"]) < 1.0
    assert int(rows["learnable"]["frozen_params"]) == 0 < int(rows["frozen"]["frozen_params"])
    assert int(rows["lc-frozen@2"]["trainable_params"]) < int(rows["lc-learnable@2"]["trainable_params"])
    cells = _cells(run_dir)
    for record in cells.values():
        history, facts = record["history"], record["extra_metrics"]["training"]
        # timm's cosine schedule with 1 warmup epoch over 2 epochs, stepped per epoch as timm steps it
        assert [h["lr"] for h in history] == pytest.approx([1e-5, 2.5e-3])
        best = max(history, key=lambda h: h["top1"])
        assert record["metrics"]["top1_best"] == best["top1"] and record["metrics"]["best_epoch"] == best["epoch"]
        assert record["metrics"]["top1_last"] == history[-1]["top1"]
        assert (facts["recipe"], facts["channels_last"]) == ("timm", True)
        assert record["provenance"]["precision"] == {"train": "fp32", "eval": "fp32"}
        assert record["provenance"]["resume"]["resumed"] is False and record["provenance"]["primary_weights"] == "best"
        assert sorted(record["models"]) == ["best", "model"]  # top1 is the best epoch's: its weights are kept
        assert record["models"]["best"]["epoch"] == record["metrics"]["best_epoch"]
        assert (facts["optimizer"], facts["scheduler"], facts["loss"]) == ("Lamb", "CosineLRScheduler", "BinaryCrossEntropy")
        assert facts["auto_augment"] == "rand-m7-mstd0.5-inc1" and facts["mixup"] == {"mixup": 0.1, "cutmix": 1.0}
        assert facts["updates_per_epoch"] == 10 and facts["data_config"]["crop_pct"] == 0.95
        assert facts["aug_repeats"] == 0  # timm repeats augmentations across data-parallel ranks only
        assert facts["ema"] is None and "top1_last" in facts["primary"]
    for cell_dir in (run_dir / "cells").iterdir():  # per-class top-1 of the best epoch, the one top1 reports
        record = cells[cell_dir.name]
        per_class = list(csv.DictReader((cell_dir / "per_class.csv").open()))
        assert [r["class"] for r in per_class] == [f"n9000000{i}" for i in range(10)]
        assert sum(int(r["images"]) for r in per_class) == 50  # every val image counted once
        hits = sum(float(r["top1"]) * int(r["images"]) for r in per_class)
        assert hits / 50 == pytest.approx(record["metrics"]["top1"])
        assert record["extra_metrics"]["per_class"]["n90000000"]["images"] == 5
    assert "frozen - learnable" in (run_dir / "summary.md").read_text()


def test_timm_recipe_killed_and_resumed_gives_identical_numbers_and_ema_stays_frozen(tmp_path, monkeypatch):
    from lcdense.engine.task import Cell

    args = ["run", *TINY, "--dataset", "embedded-imagefolder", "--variants", "lc-frozen", "--E", "2",
            "--set", "train.timm.ema=true", "--set", "train.timm.ema_decay=0.9"]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    original = Cell.save_checkpoint

    def save_then_die(self, state):
        original(self, state)
        raise KeyboardInterrupt  # killed right after epoch 1's checkpoint

    monkeypatch.setattr(Cell, "save_checkpoint", save_then_die)
    assert main([*args, "--out", str(tmp_path / "broken")]) == 130
    monkeypatch.setattr(Cell, "save_checkpoint", original)
    run_dir = _run_dir(tmp_path / "broken")
    assert (run_dir / "cells" / "lc-frozen@2__seed0" / "checkpoint.pt").is_file()
    assert main(["run", "--resume", str(run_dir), "--quiet", "--no-analysis"]) == 0
    (straight,) = _cells(_run_dir(tmp_path / "straight")).values()
    (resumed,) = _cells(run_dir).values()
    assert [[h[k] for k in COMPARED] for h in resumed["history"]] == [[h[k] for k in COMPARED] for h in straight["history"]]
    assert resumed["metrics"] == straight["metrics"]
    assert resumed["extra_metrics"]["per_class"] == straight["extra_metrics"]["per_class"] != {}
    assert straight["provenance"]["resume"]["resumed"] is False
    assert resumed["provenance"]["resume"]["resumes"] == [
        {"after_epoch": 1, "source": "fp32_state", "exact": True, "data_order": "replayed"}]
    for record in (straight, resumed):
        assert record["frozen_digest_before"] == record["frozen_digest_after"] \
            == record["provenance"]["frozen_digests"]["ema"] == record["provenance"]["frozen_digests"]["model"]
        assert record["extra_metrics"]["training"]["ema"] == {"decay": 0.9, "warmup": False}
        assert 0.0 <= record["metrics"]["ema_top1_best"] <= 1.0
    assert resumed["history"][0]["ema_val_loss"] != resumed["history"][0]["val_loss"]  # the EMA is its own model
    # the kept weights survive the kill: the resumed cell's best, final and EMA weights are the straight run's
    assert sorted(resumed["models"]) == sorted(straight["models"]) == ["best", "ema", "model"]
    runs = [lcdense.load(_run_dir(tmp_path / "straight")), lcdense.load(run_dir)]
    for weights in ("best", "ema", "model"):
        a, b = (run.model("lc-frozen@2__seed0", weights=weights).state_dict() for run in runs)
        assert all(torch.equal(a[k], b[k]) for k in a), weights


@pytest.mark.parametrize("foreach", [True, False])
def test_frozen_banks_bitwise_exact_under_lamb_and_model_ema(foreach):
    from timm.utils import ModelEmaV3

    train = ClassificationTask().default_config()["train"] | {"lr": 0.05, "weight_decay": 0.5}
    for mode, kwargs in (("frozen", {}), ("lc", {"E": 2, "spatial": "frozen"})):
        torch.manual_seed(0)
        model = Normalized(create_model("timm:test_resnet", num_classes=10), *IMAGENET_STATS)
        convert(model, mode, seed=0, input_size=(3, 32, 32), **kwargs)
        model = model.to(memory_format=torch.channels_last)
        optimizer, _, _ = optimizer_and_schedule(model, train, steps=4)
        assert type(optimizer).__name__ == "Lamb"
        frozen = frozen_tensors(model)
        assert frozen and not {id(t) for t in frozen.values()} & {id(p) for g in optimizer.param_groups for p in g["params"]}
        ema = ModelEmaV3(model, decay=0.9, foreach=foreach)
        before = frozen_digest(model)
        head = model.net.fc.weight.detach().clone()
        loss_fn = loss_for(train["timm"], 0.1)
        for step in range(4):
            x = torch.rand(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
            loss = loss_fn(model(x), torch.randint(0, 10, (8,)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            ema.update(model, step=step + 1)
        assert frozen_digest(model) == before == frozen_digest(ema.module), mode
        assert not torch.equal(model.net.fc.weight, head)  # LAMB did train (and decay) the rest
        assert not torch.equal(ema.module.net.fc.weight, model.net.fc.weight)


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    root = tmp_path / "imagenet"
    shutil.copytree(ensure_embedded_imagefolder(tmp_path / "cache", train_per_class=2, val_per_class=1), root)
    return root


def _bad_run(root: Path, out: Path, *extra: str) -> list[str]:
    return ["run", *TINY, "--dataset", "imagefolder", "--data", str(root), "--variants", "learnable",
            "--set", "train.batch_size=4", "--set", "train.epochs=1", "--set", "train.warmup_epochs=0",
            "--out", str(out), *extra]


def test_the_lcdense_recipe_reads_the_same_folders(tmp_path):
    out = tmp_path / "runs"
    assert main(["run", "--task", "classification", "--dataset", "embedded-imagefolder", "--variants", "learnable",
                 "--epochs", "1", "--set", "data.image_size=32", "--set", "train.batch_size=50", "--quiet",
                 "--no-analysis", "--out", str(out)]) == 0
    (record,) = _cells(_run_dir(out)).values()
    assert 0.0 <= record["metrics"]["top1"] <= 1.0 and "training" not in record["extra_metrics"]


@pytest.mark.parametrize("recipe", ["timm", "lcdense"])
def test_unsorted_val_folder_is_one_line(tiny_folder, tmp_path, capsys, recipe):
    for image in list((tiny_folder / "val").glob("*/*.JPEG")):
        image.rename(tiny_folder / "val" / image.name)  # the official val archive: loose files
    assert main(_bad_run(tiny_folder, tmp_path / "runs", "--set", f"train.recipe={recipe}")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{tiny_folder / 'val'} holds 10 images directly, not in class subfolders; sort them into" in err


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_jpeg_is_one_line_naming_the_file(tiny_folder, tmp_path, capsys, workers):
    bad = tiny_folder / "train" / "n90000004" / "n90000004_2.JPEG"
    bad.write_bytes(bad.read_bytes()[:40])  # a truncated download
    assert main(_bad_run(tiny_folder, tmp_path / "runs", "--set", f"data.workers={workers}")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err == f"lcdense: error: cannot decode image {bad}; replace or remove the file"


@pytest.mark.parametrize("extra,message", [
    (["--model", "timm:resnet18dd"], "unknown model 'resnet18dd'; did you mean 'resnet18d'?"),
    (["--set", "train.recipe=tim"], "unknown train.recipe 'tim'; did you mean 'timm'?"),
    (["--dataset", "cifar10"], "train.recipe 'timm' reads image folders (train/<wnid>/, val/<wnid>/)"),
    (["--set", "train.batch_size=5"], "Mixup/CutMix needs an even batch per rank; train.batch_size 5 gives"),
])
def test_bad_timm_input_is_one_line(tiny_folder, tmp_path, capsys, extra, message):
    assert main([*_bad_run(tiny_folder, tmp_path / "runs"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("size,ranks", [(5, 2), (7, 3), (6, 2)])
def test_sharded_evaluation_counts_every_val_image_once(size, ranks):
    from types import SimpleNamespace

    from lcdense_tasks.classification.timm_recipe import _rank_batches
    from timm.data.distributed_sampler import OrderedDistributedSampler

    from lcdense.engine.distributed import World

    data = torch.utils.data.TensorDataset(torch.arange(size).float().view(-1, 1), torch.arange(size))
    seen = []
    for rank in range(ranks):  # timm pads the last shards with repeats of the first images
        sampler = OrderedDistributedSampler(data, num_replicas=ranks, rank=rank)
        loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=sampler)
        cell = SimpleNamespace(world=World(rank=rank, size=ranks))
        seen += [int(i) for _, y in _rank_batches(loader, lambda x: x, cell) for i in y]
    assert sorted(seen) == list(range(size))


def test_gpu_check_script_runs_on_cpu_at_a_tiny_size(capsys):
    import importlib.util

    path = Path(__file__).parents[1] / "scripts" / "gpu_check_timm.py"
    spec = importlib.util.spec_from_file_location("gpu_check_timm", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--device", "cpu", "--model", "timm:test_resnet", "--size", "32", "--batch", "4",
                        "--steps", "2", "--warmup", "1", "--E", "2", "--classes", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["variant", "images/s", "peak", "GiB", "precision", "frozen", "unchanged"]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["learnable", "lc-frozen@2", "lc-learnable@2"]
    assert all(float(r[1]) > 0 and r[3] == "fp32" and r[4] == "True" for r in rows)
