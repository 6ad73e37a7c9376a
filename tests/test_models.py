"""Models that outlive the run: every cell keeps its learned tensors (safetensors), and
``lcdense.load(run).model(cell)`` rebuilds the trained model with its frozen filters regenerated
bit for bit; a tampered, corrupt or foreign weights file is refused in one line; ``export`` writes
the folded model in its own library's format (timm, smp, ultralytics), which that library loads
without lcdense and which computes what the LC model computes; a trained timm classifier becomes
a U-Net's encoder (``model.encoder_from``)."""
from __future__ import annotations

import copy
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lcdense
from lcdense import Callback, LcdenseError, frozen_tensors
from lcdense.cli import main
from lcdense.engine.records import read_cell, write_cell

TINY = {"epochs": 1, "quiet": True, "analysis": False, "data.train_limit": 128, "data.val_limit": 64,
        "train.batch_size": 64, "eval.batch_size": 64}


class Trained(Callback):
    """Keeps a CPU copy of every trained model, as the run ends its cell."""

    def __init__(self) -> None:
        self.models: dict[str, torch.nn.Module] = {}

    def on_cell_end(self, event) -> None:
        self.models[event.record.id] = copy.deepcopy(event.model).cpu().eval()


def _same_model(trained: torch.nn.Module, loaded: torch.nn.Module, x: torch.Tensor) -> None:
    """Bitwise: every tensor of the state (the regenerated frozen banks too) and the outputs."""
    assert frozen_tensors(loaded).keys() == frozen_tensors(trained).keys()
    for name, tensor in frozen_tensors(trained).items():
        assert torch.equal(frozen_tensors(loaded)[name], tensor), name
    state = loaded.state_dict()
    for name, tensor in trained.state_dict().items():
        assert torch.equal(state[name], tensor), name
    with torch.no_grad():
        expected, found = trained(x), loaded(x)
    expected, found = (expected[0], found[0]) if isinstance(expected, tuple) else (expected, found)
    assert torch.equal(found, expected)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    """One cache of generated datasets for the module's runs."""
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def classification(tmp_path_factory, cache):
    """The embedded classification config (ResNet-8-16), one epoch on a slice: E = 1 and 64."""
    spy = Trained()
    result = lcdense.run("classification", variants="learnable,frozen,lc-frozen", E="1,64", callbacks=[spy],
                         out=str(tmp_path_factory.mktemp("runs")), **TINY, **{"run.cache_dir": cache})
    return result, spy.models


def test_classification_round_trip_is_bitwise(classification):
    result, trained = classification
    loaded_run = lcdense.load(result.run_dir)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert sorted(trained) == sorted(c.id for c in loaded_run.cells) and len(trained) == 4
    for record in loaded_run.cells:
        assert list(record.models) == ["model"] and record.models["model"]["frozen_digest"] == record.frozen_digest_after
        model = loaded_run.model(record.id)
        assert not model.training and lcdense.frozen_digest(model) == record.frozen_digest_after
        _same_model(trained[record.id], model, x)
        folded = loaded_run.model(record.id, folded=True)
        assert not any(isinstance(m, lcdense.LCConv) for m in folded.modules())
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    assert any(isinstance(m, lcdense.LCConv) for m in loaded_run.model("lc-frozen@64__seed0").modules())


def test_an_lc_frozen_file_holds_its_trainable_parameters_whatever_E(classification):
    result, _ = classification
    sizes = {}
    for e in (1, 64):
        record = result.cell(f"lc-frozen@{e}__seed0")
        size = record.models["model"]["bytes"]
        assert size == (Path(result.run_dir) / "cells" / record.id / "model.safetensors").stat().st_size
        learned = 4 * record.costs["trainable_params"]  # fp32, plus BN statistics and the header
        assert learned < size < learned * 1.1 + 64 * 1024
        assert size < 4 * record.costs["frozen_params"] / (4 if e == 64 else 1)
        sizes[e] = (size, record.costs["trainable_params"], record.costs["frozen_params"])
    print(f"\nbytes on disk: lc-frozen@64 {sizes[64][0]:,} vs lc-frozen@1 {sizes[1][0]:,} "
          f"(trainable {sizes[64][1]:,} vs {sizes[1][1]:,}; frozen, not stored: {sizes[64][2]:,} vs {sizes[1][2]:,})")


@pytest.fixture
def copied(classification, tmp_path):
    result, _ = classification
    run_dir = tmp_path / "run"
    shutil.copytree(result.run_dir, run_dir)
    return run_dir


def _set_record(run_dir: Path, cell_id: str, **changes) -> None:
    record = read_cell(run_dir / "cells" / cell_id)
    for key, value in changes.items():
        setattr(record, key, value)
    write_cell(run_dir / "cells" / cell_id, record)


def test_a_tampered_weights_file_is_caught_by_its_digest(copied, capsys):
    path = copied / "cells" / "lc-frozen@1__seed0" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit of one learned weight
    path.write_bytes(bytes(data))
    with pytest.raises(LcdenseError, match="does not match the digest in its cell record"):
        lcdense.load(copied).model("lc-frozen@1__seed0")
    assert main(["export", str(copied), "--cell", "lc-frozen@1__seed0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "file was changed after the run" in err and "Traceback" not in err
    assert not (copied / "cells" / "lc-frozen@1__seed0" / "export").exists()


def test_corrupt_foreign_and_unreproducible_files_get_one_line(copied):
    cell = copied / "cells" / "lc-frozen@64__seed0"
    (cell / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    record = read_cell(cell)
    record.models["model"] = {**record.models["model"], "sha256": lcdense.engine.trained._sha256(
        (cell / "model.safetensors").read_bytes())}
    write_cell(cell, record)
    with pytest.raises(LcdenseError, match="is not an lcdense weights file"):
        lcdense.load(copied).model("lc-frozen@64__seed0")
    shutil.copyfile(copied / "cells" / "lc-frozen@1__seed0" / "model.safetensors", cell / "model.safetensors")
    record.models["model"] = lcdense.engine.trained.describe(cell / "model.safetensors")
    write_cell(cell, record)
    with pytest.raises(LcdenseError, match="written for cell lc-frozen@1__seed0"):
        lcdense.load(copied).model("lc-frozen@64__seed0")
    _set_record(copied, "frozen__seed0", frozen_digest_after="0" * 64)
    with pytest.raises(LcdenseError, match="regenerated frozen filters differ from the trained ones"):
        lcdense.load(copied).model("frozen__seed0")
    (copied / "cells" / "learnable__seed0" / "model.safetensors").unlink()
    with pytest.raises(LcdenseError, match="cannot read the weights file"):
        lcdense.load(copied).model("learnable__seed0")
    with pytest.raises(LcdenseError, match="keeps no 'best' weights; it keeps: model"):
        lcdense.load(copied).model("lc-frozen@1__seed0", weights="best")
    with pytest.raises(LcdenseError, match="no finished cell 'nope'"):
        lcdense.load(copied).model("nope")
    _set_record(copied, "lc-frozen@1__seed0", models={})
    with pytest.raises(LcdenseError, match="keeps no trained model"):
        lcdense.load(copied).model("lc-frozen@1__seed0")


def test_resnet_lc_export_is_a_plain_state_dict(classification, tmp_path, capsys):
    result, trained = classification
    out = tmp_path / "export"
    assert main(["export", str(result.run_dir), "--cell", "lc-frozen@64__seed0", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"lcdense: {out / 'model.safetensors'}\n"
    config = json.loads((out / "config.json").read_text())
    from safetensors.torch import load_file

    net = lcdense.cifar_resnet(**config["args"]).eval()  # plain convs, no conversion
    net.load_state_dict(load_file(out / "model.safetensors"))
    x = torch.rand(4, 3, 32, 32)
    mean, std = (torch.tensor(config[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        torch.testing.assert_close(net((x - mean) / std), trained["lc-frozen@64__seed0"](x), rtol=1e-4, atol=1e-5)
    assert json.loads((out / "export.json").read_text())["weights"] == "model"
    with pytest.raises(LcdenseError, match="exists already; exports are never overwritten"):
        result.export("lc-frozen@64__seed0", out=out)


@pytest.fixture(scope="module")
def timm_classifier(tmp_path_factory, cache):
    """A timm classifier (timm's small test ResNet) trained lc-frozen at E = 2 on the embedded data."""
    pytest.importorskip("timm")
    spy = Trained()
    result = lcdense.run("classification", variants="lc-frozen", E="2", model="timm:test_resnet", callbacks=[spy],
                         out=str(tmp_path_factory.mktemp("runs")), **TINY, **{"run.cache_dir": cache})
    return result, spy.models


@pytest.mark.extra("timm")
def test_timm_export_loads_in_timm_and_matches(timm_classifier):
    import timm

    result, trained = timm_classifier
    files = result.export("lc-frozen@2__seed0")
    weights = files["timm"]
    assert weights == Path(result.run_dir) / "cells" / "lc-frozen@2__seed0" / "export" / "model" / "model.safetensors"
    config = json.loads((weights.parent / "config.json").read_text())
    n = config["num_classes"]
    model = timm.create_model(config["architecture"], num_classes=n)  # as the export's docstring says
    model.load_state_dict(load_file(weights))
    model.eval()
    x = torch.rand(4, 3, 32, 32)
    mean, std = (torch.tensor(config["pretrained_cfg"][k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        torch.testing.assert_close(model((x - mean) / std), trained["lc-frozen@2__seed0"](x), rtol=1e-4, atol=1e-5)
    _same_model(trained["lc-frozen@2__seed0"], result.model("lc-frozen@2__seed0"), x)


@pytest.fixture(scope="module")
def transfer(timm_classifier, tmp_path_factory):
    """Segmentation on the embedded Carvana set whose U-Net encoder is the trained timm classifier."""
    pytest.importorskip("segmentation_models_pytorch")
    from lcdense_tasks.segmentation.embedded import generate_carvana

    classifier, _ = timm_classifier
    root = tmp_path_factory.mktemp("data") / "carvana"
    generate_carvana(root, cars=4, size=(48, 32))  # 4 cars x 16 views, in the official layout
    spy = Trained()
    source = Path(classifier.run_dir) / "cells" / "lc-frozen@2__seed0"
    result = lcdense.run("segmentation", variants="frozen,lc-frozen", E="2", epochs=1, quiet=True, analysis=False,
                         callbacks=[spy], out=str(tmp_path_factory.mktemp("runs")), data=str(root),
                         **{"model.encoder_from": str(source), "data.image_size": [32, 48], "train.batch_size": 8,
                            "model.encoder_depth": 3, "model.decoder_channels": [16, 8, 4], "train.lr": 3e-3,
                            "data.val_fraction": 0.25})
    return classifier, result, spy.models


@pytest.mark.extra("segmentation")
def test_transfer_starts_from_the_trained_folded_encoder(transfer):
    classifier, result, trained = transfer
    encoder = classifier.model("lc-frozen@2__seed0", folded=True).net
    frozen = result.model("frozen__seed0")
    convs = [(name, m) for name, m in frozen.encoder.model.named_modules() if lcdense.is_spatial_conv(m)]
    assert convs and all(m.lcdense_trained for _, m in convs)
    source = encoder.state_dict()
    for name, conv in convs:  # frozen as trained: the classifier's folded filters, bit for bit
        assert torch.equal(conv.weight, source[f"{name}.weight"]), name
    lc = result.model("lc-frozen@2__seed0")
    conversion = result.cell("lc-frozen@2__seed0").conversion["layers"]
    assert all(row["reason"] == "trained filters kept" for row in conversion if row["name"].startswith("encoder."))
    x = torch.rand(2, 3, 32, 48)
    for cell_id, model in (("frozen__seed0", frozen), ("lc-frozen@2__seed0", lc)):
        _same_model(trained[cell_id], model, x)


@pytest.mark.extra("segmentation")
def test_the_transferred_encoder_is_loaded_from_the_local_export_without_network(transfer, monkeypatch):
    """smp's ``tu-`` encoder has timm load the cell's export with ``pretrained=True``: timm must take
    the local file (``pretrained_cfg_overlay``) and never the Hugging Face hub."""
    import socket

    from lcdense_tasks.segmentation.model import build_unet

    def refuse(*args, **kwargs):
        raise OSError("network disabled by test")

    for name in ("getaddrinfo", "create_connection"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    classifier, _, _ = transfer
    source = classifier.model("lc-frozen@2__seed0", folded=True).net.state_dict()
    unet = build_unet("ignored", depth=3, decoder_channels=[16, 8, 4],
                      encoder_from=str(Path(classifier.run_dir) / "cells" / "lc-frozen@2__seed0"))
    convs = [(name, m) for name, m in unet.encoder.model.named_modules() if lcdense.is_spatial_conv(m)]
    assert convs and all(torch.equal(m.weight, source[f"{name}.weight"]) for name, m in convs)


@pytest.mark.extra("segmentation")
def test_smp_export_loads_through_smp(transfer, tmp_path):
    import segmentation_models_pytorch as smp

    _, result, trained = transfer
    folder = result.export("lc-frozen@2__seed0", out=tmp_path / "unet")["smp"]
    unet = smp.from_pretrained(str(folder)).eval()
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(unet(x), trained["lc-frozen@2__seed0"](x), rtol=1e-4, atol=1e-5)


def test_lc_block_from_trained_filters_starts_as_that_conv():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, groups=2)
    conv.lcdense_trained = True
    block = lcdense.convert(torch.nn.Sequential(conv), "lc", E=3, spatial="frozen").model[0]
    assert isinstance(block, lcdense.LCConv) and torch.equal(block.weight, conv.weight)
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(block(x), conv(x))
    plain = torch.nn.Conv2d(4, 6, 3, groups=2)
    drawn = lcdense.convert(torch.nn.Sequential(plain), "frozen").model[0]
    assert not torch.equal(drawn.weight, conv.weight)  # an unmarked conv gets seeded filters


@pytest.fixture(scope="module")
def detection(tmp_path_factory):
    pytest.importorskip("ultralytics")
    spy = Trained()
    shapes = {"n_trainval": 8, "n_test": 4, "size": 64, "max_objects": 2, "seed": 0}
    result = lcdense.run("detection", variants="lc-frozen", E="2", epochs=1, batch_size=4, device="cpu", quiet=True,
                         analysis=False, callbacks=[spy], out=str(tmp_path_factory.mktemp("runs")),
                         **{"data.shapes": shapes, "train.warmup_epochs": 0})
    return result, spy.models


@pytest.mark.extra("detection")
def test_detection_round_trip_and_yolo_export(detection, tmp_path):
    result, trained = detection
    record = result.cell("lc-frozen@2__seed0")
    assert sorted(record.models) == ["ema", "model"] and record.provenance["primary_weights"] == "ema"
    weights = Path(result.run_dir) / "cells" / record.id / "train" / "weights"
    assert (weights / "last.pt").is_file()  # what ultralytics writes is kept too
    x = torch.rand(1, 3, 64, 64)
    _same_model(trained[record.id], result.model(record.id, weights="model"), x)
    ema = result.model(record.id)  # the primary weights
    assert lcdense.frozen_digest(ema) == record.frozen_digest_after
    path = result.export(record.id, out=tmp_path / "yolo")["ultralytics"]
    with zipfile.ZipFile(path) as archive:  # nothing of lcdense in the pickle: loadable without it
        pickled = b"".join(archive.read(n) for n in archive.namelist() if n.endswith(".pkl"))
    assert b"lcdense" not in pickled and b"DetectionModel" in pickled
    from ultralytics import YOLO

    yolo = YOLO(str(path))
    assert yolo.task == "detect" and yolo.names == {0: "circle", 1: "square", 2: "triangle"}
    with torch.no_grad():
        torch.testing.assert_close(yolo.model.eval()(x)[0], ema(x)[0], rtol=1e-4, atol=1e-4)


def test_torchvision_export_loads_with_load_state_dict(tmp_path):
    import torchvision
    from lcdense_tasks.classification import ClassificationTask
    from lcdense_tasks.classification.models import Normalized

    facts = {"classes": 10, "channels": 3, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    config = {"model": {"name": "resnet18"}, "data": {"dataset": "embedded"}, "train": {"recipe": "lcdense"}}
    model = ClassificationTask().model_from_facts(config, facts)
    assert isinstance(model, Normalized)
    lcdense.convert(model, "lc", E=2, spatial="frozen")
    folded = lcdense.fold(model).eval()
    files = ClassificationTask().export(folded, config, facts, tmp_path)
    assert files == {"torchvision": tmp_path / "model.pth"}
    config_json = json.loads((tmp_path / "config.json").read_text())
    net = torchvision.models.get_model(config_json["architecture"], num_classes=config_json["num_classes"]).eval()
    net.load_state_dict(torch.load(files["torchvision"], weights_only=True))
    x = torch.rand(2, 3, 32, 32)
    mean, std = (torch.tensor(config_json[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        torch.testing.assert_close(net((x - mean) / std), model.eval()(x), rtol=1e-4, atol=1e-4)
