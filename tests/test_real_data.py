"""Real Fashion-MNIST, as Debian's ``dataset-fashion-mnist`` package installs it, read through
lcdense's own loader and trained for one short cell. Skipped where the package is not installed
(CI does not depend on apt)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lcdense_tasks.classification.data import load_tensor_dataset

from lcdense.cli import main

ROOT = Path("/usr/share/datasets/fashion-mnist")
FILES = [f"{split}-{kind}-ubyte.gz" for split in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")]

pytestmark = pytest.mark.skipif(
    not all((ROOT / f).is_file() for f in FILES),
    reason=f"real Fashion-MNIST not installed: {ROOT} needs {', '.join(FILES)} "
           "(Debian package dataset-fashion-mnist: apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def fashion():
    return load_tensor_dataset("fashion-mnist", ROOT)


def test_loader_reads_the_official_files(fashion):
    assert fashion.train_x.shape == (60000, 1, 32, 32) and fashion.val_x.shape == (10000, 1, 32, 32)  # 28 px -> 32
    assert fashion.train_x.dtype == torch.uint8 and fashion.val_x.dtype == torch.uint8
    assert fashion.train_y.shape == (60000,) and fashion.val_y.shape == (10000,)
    assert fashion.train_y.dtype == torch.int64
    assert torch.bincount(fashion.train_y).tolist() == [6000] * 10  # the official, balanced splits
    assert torch.bincount(fashion.val_y).tolist() == [1000] * 10
    assert int(fashion.train_x.min()) == 0 and int(fashion.train_x.max()) == 255
    assert 0.27 < fashion.mean[0] < 0.30 and 0.33 < fashion.std[0] < 0.37  # Fashion-MNIST: about 0.286 / 0.353
    assert fashion.classes[0] == "T-shirt" and fashion.classes[9] == "Boot" and fashion.channels == 1


def test_one_short_cell_trains_on_it(tmp_path):
    argv = ["run", "--task", "classification", "--dataset", "fashion-mnist", "--data", str(ROOT),
            "--variants", "lc-frozen", "--E", "8", "--epochs", "1", "--batch-size", "64", "--device", "cpu",
            "--set", "data.train_limit=2048", "--set", "data.val_limit=500", "--set", "train.amp=false",
            "--out", str(tmp_path), "--name", "real", "--quiet", "--no-analysis"]
    assert main(argv) == 0
    record = json.loads((tmp_path / "classification" / "real" / "cells" / "lc-frozen@8__seed0" / "cell.json").read_text())
    assert record["status"] == "done" and record["frozen_digest_before"] == record["frozen_digest_after"]
    assert record["conversion"]["input_size"][0] == 1  # one grey channel, as the real files have
    assert record["metrics"]["top1"] > 0.3  # 32 steps on real images: well above chance (0.1)
    assert len(record["extra_metrics"]["data_fingerprint"]) == 16
