"""Segmentation data: layout readers, splits, error messages, embedded data, reproducible augmentation."""
from __future__ import annotations

import shutil
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch

if any(find_spec(m) is None for m in ("segmentation_models_pytorch", "albumentations", "timm")):
    pytest.skip('needs the segmentation extra: pip install "lcdense[segmentation]"', allow_module_level=True)

from lcdense_tasks.segmentation.data import (  # noqa: E402
    MEAN,
    STD,
    PairDataset,
    read_pair,
    train_batches,
)
from lcdense_tasks.segmentation.embedded import (  # noqa: E402
    embedded_root,
    ensure_embedded,
    generate_carvana,
    generate_lgg,
    rle_encode,
)
from lcdense_tasks.segmentation.layouts import (  # noqa: E402
    carvana_samples,
    check_sizes,
    lgg_samples,
    rle_decode,
    split_by_group,
)
from PIL import Image  # noqa: E402

from lcdense import LcdenseError  # noqa: E402
from lcdense.engine.training import epoch_generator  # noqa: E402


@pytest.fixture(scope="module")
def carvana_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("carvana")
    generate_carvana(root, cars=5, size=(48, 32))
    return root


@pytest.fixture(scope="module")
def lgg_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lgg")
    generate_lgg(root, patients=4, size=32)
    return root


def _copy(root: Path, tmp_path: Path) -> Path:
    shutil.copytree(root, tmp_path / "data")
    return tmp_path / "data"


def test_carvana_reader_and_split_by_car(carvana_root):
    samples = carvana_samples(carvana_root)
    assert len(samples) == 5 * 16
    assert [s.index for s in samples[:16]] == list(range(1, 17))
    assert all(s.mask.name == f"{s.image.stem}_mask.gif" for s in samples)
    train, val = split_by_group(samples, val_fraction=0.2, seed=0)
    train_cars, val_cars = {s.group for s in train}, {s.group for s in val}
    assert not train_cars & val_cars
    assert (len(train_cars), len(val_cars)) == (4, 1)
    assert len(val) == 16  # all 16 views of the held-out car
    other_val = {s.group for s in split_by_group(samples, val_fraction=0.2, seed=1)[1]}
    assert split_by_group(samples, val_fraction=0.2, seed=0)[1] == val  # fixed by the seed
    assert len(other_val) == 1


def test_carvana_rle_masks_equal_gif_masks(carvana_root):
    gif, csv = carvana_samples(carvana_root, "gif"), carvana_samples(carvana_root, "csv")
    for a, b in zip(gif[::7], csv[::7]):
        mask_gif, mask_csv = read_pair(a)[1], read_pair(b)[1]
        assert mask_gif.shape == (32, 48) and mask_gif.sum() > 50
        np.testing.assert_array_equal(mask_gif, mask_csv)


def test_rle_round_trip_and_bad_rle():
    mask = np.zeros((3, 5), np.uint8)
    mask[0, 4], mask[1, 0:2], mask[2, 3:] = 1, 1, 1
    assert rle_encode(mask) == "5 3 14 2"
    np.testing.assert_array_equal(rle_decode("5 3 14 2", 3, 5), mask)
    with pytest.raises(LcdenseError, match="runs past the 5x3 image"):
        rle_decode("14 3", 3, 5, source="x.jpg")
    with pytest.raises(LcdenseError, match="malformed RLE for x.jpg"):
        rle_decode("1 2 3", 3, 5, source="x.jpg")


def test_lgg_reader_ignores_nested_duplicate_orders_slices_numerically(lgg_root, tmp_path):
    root = _copy(lgg_root, tmp_path)
    shutil.copytree(root / "kaggle_3m", root / "lgg-mri-segmentation" / "kaggle_3m")  # the archive's duplicate
    samples = lgg_samples(root)

    def keys(found, base):
        return [(s.group, s.index, s.image.relative_to(base), s.mask.relative_to(base)) for s in found]

    assert keys(samples, root) == keys(lgg_samples(lgg_root), lgg_root)  # the duplicate adds nothing
    assert all("lgg-mri-segmentation" not in str(s.image.relative_to(root)) for s in samples)
    outer = root / "lgg-mri-segmentation"  # pointing at the archive's outer folder reads the nested copy
    assert keys(lgg_samples(outer), outer) == keys(samples, root)
    patients = sorted({s.group for s in samples})
    assert len(patients) == 4
    for patient in patients:
        indices = [s.index for s in samples if s.group == patient]
        assert indices == list(range(1, len(indices) + 1)) and len(indices) >= 12  # 1, 2, ..., 10, 11: not 1, 10, 11, 2
    train, val = split_by_group(samples, val_fraction=0.25, seed=0)
    assert not {s.group for s in train} & {s.group for s in val}
    assert len({s.group for s in val}) == 1
    image, mask = read_pair(samples[0])
    assert image.shape == (32, 32, 3) and set(np.unique(mask)) <= {0, 1}


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(LcdenseError, match=r"folder not found: .*nowhere.*train/<id>_<NN>\.jpg"):
        carvana_samples(tmp_path / "nowhere")
    with pytest.raises(LcdenseError, match="folder not found: .*nowhere"):
        lgg_samples(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LcdenseError, match="no kaggle_3m folder in"):
        lgg_samples(tmp_path / "empty")


def test_image_without_mask_names_the_image(carvana_root, lgg_root, tmp_path):
    root = _copy(carvana_root, tmp_path / "c")
    victim = sorted((root / "train_masks").glob("*.gif"))[3]
    victim.unlink()
    image_name = victim.name.replace("_mask.gif", ".jpg")
    with pytest.raises(LcdenseError, match=f"image without mask: .*{image_name}"):
        carvana_samples(root)
    lgg = _copy(lgg_root, tmp_path / "l")
    mask = min((lgg / "kaggle_3m").rglob("*_5_mask.tif"))
    mask.unlink()
    with pytest.raises(LcdenseError, match=f"image without mask: .*{mask.name.replace('_mask', '')}"):
        lgg_samples(lgg)


def test_wrong_mask_size_names_the_mask(carvana_root, tmp_path):
    root = _copy(carvana_root, tmp_path)
    samples = carvana_samples(root)
    Image.new("P", (40, 32)).save(samples[2].mask)
    with pytest.raises(LcdenseError, match=f"mask .*{samples[2].mask.name} is 40x32 but its image .* is 48x32"):
        check_sizes(samples)
    with pytest.raises(LcdenseError, match=f"mask .*{samples[2].mask.name} is 40x32"):
        read_pair(samples[2])


def test_unreadable_file_names_the_file(carvana_root, tmp_path):
    root = _copy(carvana_root, tmp_path)
    samples = carvana_samples(root)
    samples[5].image.write_bytes(b"not a jpeg at all")
    with pytest.raises(LcdenseError, match=f"cannot read image .*{samples[5].image.name}.*corrupt"):
        check_sizes(samples)
    with pytest.raises(LcdenseError, match=f"cannot read image .*{samples[5].image.name}"):
        read_pair(samples[5])


def test_embedded_datasets_are_deterministic(tmp_path):
    for generate, kwargs in ((generate_carvana, {"cars": 2, "size": (48, 32)}), (generate_lgg, {"patients": 2, "size": 32})):
        generate(tmp_path / f"a-{generate.__name__}", **kwargs)
        generate(tmp_path / f"b-{generate.__name__}", **kwargs)
        files_a = sorted(p.relative_to(tmp_path / f"a-{generate.__name__}") for p in (tmp_path / f"a-{generate.__name__}").rglob("*") if p.is_file())
        files_b = sorted(p.relative_to(tmp_path / f"b-{generate.__name__}") for p in (tmp_path / f"b-{generate.__name__}").rglob("*") if p.is_file())
        assert files_a == files_b and len(files_a) > 10
        for rel in files_a:
            assert (tmp_path / f"a-{generate.__name__}" / rel).read_bytes() == (tmp_path / f"b-{generate.__name__}" / rel).read_bytes()


def test_embedded_lgg_has_tumour_and_empty_slices_and_is_generated_once(tmp_path):
    root = ensure_embedded("brain-mri", tmp_path)
    assert root == embedded_root("brain-mri", tmp_path)
    samples = lgg_samples(root)
    masked = [read_pair(s)[1].any() for s in samples]
    assert 0.2 < np.mean(masked) < 0.8  # tumour slices and empty-mask slices
    stamp = samples[0].image.stat().st_mtime_ns
    assert ensure_embedded("brain-mri", tmp_path) == root
    assert samples[0].image.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary folder left behind
    with pytest.raises(LcdenseError, match="no embedded dataset 'voc'"):
        ensure_embedded("voc", tmp_path)


def test_augmentation_reproducible_per_epoch_with_workers(carvana_root):
    dataset = PairDataset(carvana_samples(carvana_root)[:12], (32, 64), augment=True)

    def epoch(epoch: int, workers: int) -> list[torch.Tensor]:
        return [torch.cat([x.flatten(), y.flatten()])
                for x, y in train_batches(dataset, epoch_generator(7, epoch), batch_size=4, workers=workers)]

    first = epoch(0, workers=0)
    assert len(first) == 3 and first[0].shape[0] == 4 * 4 * 32 * 64
    for a, b in zip(first, epoch(0, workers=2)):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(first, epoch(1, workers=0)))
    plain_x, plain_y = dataset[(0, None)]
    assert plain_x.shape == (3, 32, 64) and torch.equal(plain_x, dataset[(0, None)][0])
    # 48x32 is scaled to 48 wide (32 high), then zero-padded by 8 columns on each side to 64
    padding = torch.tensor([-m / s for m, s in zip(MEAN, STD)])[:, None, None]
    assert torch.allclose(plain_x[:, :, :8], padding.expand(3, 32, 8), atol=1e-5)
    assert torch.allclose(plain_x[:, :, 56:], padding.expand(3, 32, 8), atol=1e-5)
    assert plain_y[:, :, :8].sum() == 0 and plain_y.sum() > 50
