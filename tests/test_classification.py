"""Classification task: dataset readers in their official layouts, the embedded default, the model,
augmentation, FGSM, and a small end-to-end run through the CLI."""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from lcdense_tasks.classification import ClassificationTask, _augment, fgsm
from lcdense_tasks.classification.data import (
    ensure_embedded,
    load_tensor_dataset,
    read_cifar100,
    read_fashion_mnist,
    read_svhn,
)
from torch import nn

from lcdense import LcdenseError
from lcdense.cli import main
from lcdense.core.models import cifar_resnet


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    return ensure_embedded(tmp_path_factory.mktemp("cache"))


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_embedded_default_is_cifar10_layout_and_deterministic(embedded, tmp_path):
    folder = embedded / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == ["batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    data = load_tensor_dataset("cifar10", embedded)
    assert data.train_x.shape == (3000, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.val_x.shape == (1000, 3, 32, 32)
    assert len(data.classes) == 10 and sorted(data.train_y.unique().tolist()) == list(range(10))
    assert _tree_hash(ensure_embedded(tmp_path)) == _tree_hash(embedded)


def test_corrupt_and_malicious_batches_are_refused(embedded, tmp_path):
    import shutil

    root = tmp_path / "c10"
    shutil.copytree(embedded, root)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(LcdenseError, match="data_batch_3.*corrupt"):
        load_tensor_dataset("cifar10", root)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    batch.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(LcdenseError, match="refusing to load builtins.print"):
        load_tensor_dataset("cifar10", root)
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(LcdenseError, match="data_batch_3|test_batch"):
        load_tensor_dataset("cifar10", root)
    with pytest.raises(LcdenseError, match="does not exist"):
        load_tensor_dataset("cifar10", tmp_path / "nothing")


def test_cifar100_svhn_fashion_mnist_readers(tmp_path):
    rng = np.random.default_rng(0)
    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    for split, n in (("train", 6), ("test", 4)):
        with (c100 / split).open("wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": list(range(n)), b"coarse_labels": [0] * n}, f)
    with (c100 / "meta").open("wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    data = read_cifar100(tmp_path)
    assert data.train_x.shape == (6, 3, 32, 32) and data.val_y.tolist() == [0, 1, 2, 3] and len(data.classes) == 100

    from scipy.io import savemat

    svhn = tmp_path / "svhn"
    svhn.mkdir()
    x = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    for split in ("train", "test"):
        savemat(svhn / f"{split}_32x32.mat", {"X": x, "y": np.array([[10], [1], [2], [3], [9]])})
    data = read_svhn(svhn)
    assert data.train_y.tolist() == [0, 1, 2, 3, 9]  # SVHN's label 10 is the digit 0
    assert torch.equal(data.train_x[4, 2], torch.from_numpy(x[:, :, 2, 4]))

    fm = tmp_path / "fm"
    fm.mkdir()
    images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    for prefix in ("train", "t10k"):
        header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape)
        (fm / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
        (fm / f"{prefix}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([7, 0, 9]))
    data = read_fashion_mnist(fm)
    assert data.train_x.shape == (3, 1, 32, 32) and data.train_y.tolist() == [7, 0, 9]
    (fm / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + (9).to_bytes(4, "big") + bytes([1]))
    with pytest.raises(LcdenseError, match="truncated or corrupt"):
        read_fashion_mnist(fm)


def test_resnet_d_w_structure():
    model = cifar_resnet(depth=20, width=16, kernel_size=3)
    spatial = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(spatial) == 19  # D = 19 spatial convs + the FC layer
    assert [m.out_channels for m in spatial][::6] == [16, 16, 32, 64]
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules()) == 2
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert cifar_resnet(depth=8, width=4, kernel_size=7).conv1.kernel_size == (7, 7)
    with pytest.raises(LcdenseError, match="6n\\+2"):
        cifar_resnet(depth=10)


def test_augmentation_crops_padded_images_and_flips():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).reshape(2, 3, 32, 32) % 251
    x = x.to(torch.uint8)
    out = _augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(out, _augment(x, torch.Generator().manual_seed(0)))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(2):
        found = any(torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32]) or
                    torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32].flip(-1))
                    for dy in range(9) for dx in range(9))
        assert found


def test_fgsm_moves_each_pixel_by_eps_against_the_label():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -1.0, 2.0, 0.5], [-1.0, 1.0, -2.0, -0.5]]))
    x = torch.full((1, 1, 2, 2), 0.5)
    adv = fgsm(model, x, torch.tensor([0]), eps=1 / 255)
    # d loss / dx for label 0 has the sign of w1 - w0 = (-2, 2, -4, -1)
    assert torch.allclose(adv.flatten(), 0.5 + torch.tensor([-1.0, 1.0, -1.0, -1.0]) / 255)
    assert torch.equal(fgsm(model, torch.zeros(1, 1, 2, 2), torch.tensor([0]), eps=0.1).clamp(0, 1),
                       fgsm(model, torch.zeros(1, 1, 2, 2), torch.tensor([0]), eps=0.1))


def test_embedded_run_end_to_end(tmp_path):
    out = tmp_path / "runs"
    assert main(["run", "--task", "classification", "--E", "8", "--variants", "learnable,lc-frozen",
                 "--epochs", "2", "--set", "data.train_limit=1500",
                 "--out", str(out), "--quiet"]) == 0
    (run_dir,) = (out / "classification").iterdir()
    rows = {r["variant"]: r for r in csv.DictReader((run_dir / "results.csv").open())}
    assert set(rows) == {"learnable", "lc-frozen@8"}
    for row in rows.values():
        assert float(row["top1"]) > 0.2  # ten classes: chance is 0.1
        assert 0 <= float(row["fgsm_top1"]) <= float(row["top1"])
        assert float(row["top5"]) >= float(row["top1"])
        assert row["frozen_digest_before"] == row["frozen_digest_after"]
        assert 0 <= float(row["data_wait_share"]) < 0.5
    assert int(rows["lc-frozen@8"]["frozen_params"]) > 0 and int(rows["learnable"]["frozen_params"]) == 0
    cell_dir = run_dir / "cells" / "lc-frozen@8__seed0"
    per_class = list(csv.DictReader((cell_dir / "per_class.csv").open()))
    assert len(per_class) == 10 and list(per_class[0]) == ["class", "top1", "images"]
    images = sum(int(r["images"]) for r in per_class)  # the per-class hits add up to the overall top-1
    hits = sum(float(r["top1"]) * int(r["images"]) for r in per_class)
    assert hits / images == pytest.approx(float(rows["lc-frozen@8"]["top1"]))
    history = list(csv.DictReader((cell_dir / "history.csv").open()))
    record = json.loads((cell_dir / "cell.json").read_text())
    assert [int(h["epoch"]) for h in history] == [1, 2]
    assert [float(h["top1"]) for h in history] == [h["top1"] for h in record["history"]]
    summary = (run_dir / "summary.md").read_text()
    assert "lc-frozen@8 - learnable" in summary and "## Filter analysis" in summary
    assert (run_dir / "analysis.json").is_file()


def test_unknown_dataset_and_missing_data(tmp_path, capsys):
    task = ClassificationTask()
    cfg = task.default_config()
    cfg["data"]["dataset"] = "cifar11"
    with pytest.raises(LcdenseError, match="unknown classification dataset 'cifar11'; did you mean 'cifar10'"):
        task.prepare_data(cfg, tmp_path)
    assert main(["run", "--task", "classification", "--dataset", "cifar10", "--out", str(tmp_path)]) == 2
    assert "needs its files: pass --data PATH" in capsys.readouterr().err
    assert main(["run", "--task", "classification", "--dataset", "svhn", "--data", str(tmp_path / "none"),
                 "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_fetching_is_a_separate_setup_script_never_part_of_a_run(tmp_path, capsys, monkeypatch):
    import importlib.util

    import lcdense_tasks
    import lcdense_tasks.classification as classification

    import lcdense

    assert "download" not in classification.ClassificationTask().default_config()["data"]
    for package in (lcdense, lcdense_tasks):  # nothing installed with lcdense can fetch a dataset
        for source in Path(package.__file__).parent.rglob("*.py"):
            assert "download=True" not in source.read_text(), source
    path = Path(__file__).parents[1] / "scripts" / "fetch_dataset.py"
    spec = importlib.util.spec_from_file_location("fetch_dataset", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["imagefolder", str(tmp_path)]) == 2  # refused before anything is fetched
    assert "no official archive to fetch for 'imagefolder'" in capsys.readouterr().err
    assert script.main(["cifar10", str(tmp_path)]) == 2  # offline by default: it only looks
    err = capsys.readouterr().err
    assert err.startswith(f"fetch_dataset: error: cifar10 is not in {tmp_path}") and "add --download" in err
    assert list(tmp_path.iterdir()) == []
    import torchvision.datasets as tvd

    calls = []
    monkeypatch.setattr(tvd, "CIFAR10", lambda root, train, download: calls.append((train, download)))
    assert script.main(["cifar10", str(tmp_path)]) == 0 and calls == [(True, False), (False, False)]
    assert script.main(["cifar10", str(tmp_path), "--download"]) == 0 and calls[2:] == [(True, True), (False, True)]


def test_a_sweep_over_the_conversion_scope_records_it_in_every_cell(tmp_path, capsys):
    """``--axis scope=all,stem,body``: one cell per scope; each cell's record and conversion.txt name its
    scope, and the stem (a single 3x3 conv in ResNet-D-W) is frozen or left learnable accordingly."""
    out = tmp_path / "runs"
    assert main(["sweep", "--task", "classification", "--axis", "scope=body,all,stem", "--variants", "frozen",
                 "--epochs", "1", "--set", "data.train_limit=128", "--set", "data.val_limit=64",
                 "--out", str(out), "--quiet", "--no-analysis"]) == 0
    (run_dir,) = (out / "classification").iterdir()
    records = {p.parent.name: json.loads(p.read_text()) for p in (run_dir / "cells").glob("*/cell.json")}
    assert sorted(records) == ["frozen__scope=all__seed0", "frozen__scope=body__seed0", "frozen__scope=stem__seed0"]
    for name, record in records.items():
        scope = record["axes"]["scope"]
        assert record["conversion"]["scope"].startswith(f"{scope}: ")
        assert f"scope: {scope}: " in (run_dir / "cells" / name / "conversion.txt").read_text()
        frozen = [layer["name"] for layer in record["conversion"]["layers"] if layer["action"] == "frozen"]
        assert frozen == {"all": frozen, "stem": ["net.conv1"], "body": frozen}[scope]
        assert ("net.conv1" in frozen) == (scope != "body") and len(frozen) == {"all": 7, "stem": 1, "body": 6}[scope]
    assert {r["axes"]["scope"] for r in records.values()} == {"all", "stem", "body"}
    rows = list(csv.DictReader((run_dir / "results.csv").open()))
    assert sorted(r["scope"] for r in rows) == ["all", "body", "stem"]
    capsys.readouterr()
    assert main(["run", "--task", "classification", "--set", "conversion.scope=stem", "--set", "conversion.stem=false",
                 "--variants", "frozen", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("lcdense: error: conversion.stem false contradicts conversion scope 'stem' (stem only); "
                   "set conversion.stem=true or pick another conversion.scope")
