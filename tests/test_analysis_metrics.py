"""Filter metrics (lcdense.reporting.analysis.metrics) and filters.pt (lcdense.reporting.analysis.filters)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lcdense import LCConv, LcdenseError, convert
from lcdense.core.precondition import PreconditionedConv
from lcdense.reporting.analysis import (
    basis_diagnostics,
    filter_variance_entropy,
    gram_basis_diagnostics,
    load_filters,
    randomness_threshold,
    save_filters,
    spatial_variance_map,
    variance_entropy,
    welch_bound,
)


def test_randomness_threshold_matches_the_published_fit():
    assert randomness_threshold(48) == pytest.approx(0.886, abs=5e-4)
    assert randomness_threshold(512) == pytest.approx(0.948, abs=5e-4)
    assert randomness_threshold(2**40) == pytest.approx(1.2618047 - 0.31050834, abs=1e-6)
    with pytest.raises(ValueError):
        randomness_threshold(0)


@pytest.mark.parametrize("shape", [(16, 3), (16, 16), (64, 32)])
def test_iid_random_3x3_banks_read_as_random(shape):
    g = torch.Generator().manual_seed(1)
    scores = torch.tensor([filter_variance_entropy(torch.rand(*shape, 3, 3, generator=g) * 2 - 1)
                           for _ in range(30)])
    assert 0.98 < scores.mean() < 1.1
    assert (scores >= 1).float().mean() >= 0.7


def test_a_bank_of_one_repeated_filter_scores_zero():
    pattern = torch.randn(3, 3)
    assert filter_variance_entropy(pattern.expand(32, 8, 3, 3).clone()) == 0.0
    scaled = pattern * torch.linspace(-2, 3, 32 * 8).reshape(32, 8, 1, 1)  # one pattern, many amplitudes
    assert filter_variance_entropy(scaled) == pytest.approx(0.0, abs=1e-12)


def test_variance_entropy_of_a_hand_computed_bank():
    # rows e1, -e1, 2·e2, -2·e2 (already centred): s² = (8, 2) -> p = (0.8, 0.2)
    rows = torch.zeros(4, 9)
    rows[0, 0], rows[1, 0], rows[2, 1], rows[3, 1] = 1, -1, 2, -2
    weight = rows.reshape(2, 2, 3, 3)
    # H = -(0.8·log10 0.8 + 0.2·log10 0.2) = 0.0775279 + 0.1397940
    assert variance_entropy(weight) == pytest.approx(0.2173220, abs=1e-7)
    # H_T(4) = 1.2618047 / (1 + exp(0.88767525·0.30436435)) - 0.31050834 = 0.2356811
    assert filter_variance_entropy(weight) == pytest.approx(0.2173220 / 0.2356811, abs=1e-6)
    # an offset shared by all kernels is removed by the centring
    assert variance_entropy(weight + 5.0) == pytest.approx(0.2173220, abs=1e-7)


def test_normalisation_is_refused_for_other_kernel_sizes():
    weight = torch.randn(8, 4, 5, 5)
    assert 0 < variance_entropy(weight) <= math.log10(25)
    with pytest.raises(ValueError, match="3x3"):
        filter_variance_entropy(weight)


def test_spatial_variance_map_normalises_each_layer_by_its_std():
    a = torch.zeros(2, 1, 3, 3)
    a[0, 0, 1, 1], a[1, 0, 1, 1] = 1.0, -1.0  # only the centre varies; layer std = sqrt(2/17)
    expected = torch.zeros(3, 3, dtype=torch.float64)
    expected[1, 1] = 17 / 2
    assert torch.allclose(spatial_variance_map([a]), expected)
    assert torch.allclose(spatial_variance_map([a, 10 * a]), expected)  # scale-free per layer
    with pytest.raises(ValueError, match="one kernel size"):
        spatial_variance_map([a, torch.zeros(2, 1, 5, 5)])


def test_basis_diagnostics_of_known_banks():
    orthonormal = basis_diagnostics(torch.eye(18).reshape(18, 2, 3, 3))
    assert orthonormal["condition_number"] == pytest.approx(1.0)
    assert orthonormal["coherence"] == pytest.approx(0.0)
    assert orthonormal["span_ratio"] == 1.0 and orthonormal["effective_rank"] == pytest.approx(18)

    duplicated = torch.cat([torch.eye(9)[:4], torch.eye(9)[:4]]).reshape(8, 1, 3, 3)
    d = basis_diagnostics(duplicated)
    assert d["coherence"] == pytest.approx(1.0)
    assert d["numerical_rank"] == 4 and d["span_ratio"] == pytest.approx(4 / 9)
    assert d["condition_number"] == math.inf  # 8 atoms, only 4 independent

    bank = torch.randn(40, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    d = basis_diagnostics(bank)
    svd = torch.linalg.svdvals(bank.reshape(40, -1).double()).float()
    assert torch.allclose(d["singular_values"], svd, rtol=1e-5)
    assert d["condition_number"] == pytest.approx(float(svd[0] / svd[-1]), rel=1e-5)
    assert welch_bound(40, 27) <= d["coherence"] < 1


def test_coherence_of_large_banks_uses_deterministic_evenly_spaced_rows():
    bank = torch.randn(300, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    first, second = basis_diagnostics(bank, max_rows=64), basis_diagnostics(bank, max_rows=64)
    assert first["coherence_rows"] == 64 and first["coherence"] == second["coherence"]
    assert first["coherence"] <= basis_diagnostics(bank)["coherence"]  # a subset: a lower bound
    assert first["rows"] == 300 and len(first["singular_values"]) == 18  # spectrum is still exact


def test_gram_form_gives_the_same_spectrum_as_the_bank():
    block = LCConv(8, 4, 3, expansion=3, groups=2)
    torch.nn.init.normal_(block.spatial_weight)
    torch.nn.init.normal_(block.combine_weight)
    direct = basis_diagnostics(block.spatial_weight)
    from_gram = gram_basis_diagnostics(PreconditionedConv.from_lc(block).preconditioner, rows=12)
    assert torch.allclose(direct["singular_values"], from_gram["singular_values"], rtol=1e-4)
    assert from_gram["condition_number"] == pytest.approx(direct["condition_number"], rel=1e-4)
    assert from_gram["coherence"] is None


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1),
                         nn.Conv2d(8, 16, 5, padding=2, groups=2), nn.ConvTranspose2d(16, 4, 2, stride=2))


def test_save_filters_stores_combined_filters_in_module_order(tmp_path):
    model = _tiny_model()
    convert(model, "lc", E=64, spatial="frozen")  # the transposed conv has no LC form: stays a conv
    path = tmp_path / "filters.pt"
    save_filters(model, path)
    assert [p.name for p in tmp_path.iterdir()] == ["filters.pt"]  # no temporary file left behind
    layers = torch.load(path, weights_only=True)["layers"]
    assert [(r["name"], r["kind"], r["kernel"]) for r in layers] == [
        ("0", "lc", [3, 3]), ("3", "lc", [5, 5]), ("4", "conv", [2, 2])]
    assert torch.equal(layers[0]["weight"], model[0].weight.detach())
    assert layers[0]["weight"].dtype == torch.float32 and layers[0]["frozen"] and layers[0]["E"] == 64
    assert layers[1]["bank"]["rows"] == 16 * 64 and layers[1]["bank"]["cols"] == 4 * 25
    assert layers[2]["bank"] is None and not layers[2]["frozen"]
    bank_bytes = sum(m.spatial_weight.numel() * 4 for m in model.modules() if isinstance(m, LCConv))
    assert path.stat().st_size < bank_bytes / 10  # the banks themselves are not stored


def test_save_filters_records_frozen_plain_convs_and_lc_blocks_without_a_single_weight(tmp_path):
    frozen = nn.Sequential(nn.Conv2d(3, 4, 3))
    convert(frozen, "frozen")
    save_filters(frozen, tmp_path / "frozen.pt")
    (record,) = load_filters(tmp_path / "frozen.pt")["layers"]
    assert record["frozen"] and record["kind"] == "conv"

    with_mid = nn.Sequential(nn.Conv2d(3, 4, 3))
    convert(with_mid, "lc", E=2, mid="relu")
    save_filters(with_mid, tmp_path / "mid.pt")
    (record,) = load_filters(tmp_path / "mid.pt")["layers"]
    assert record["weight"] is None and record["bank"]["rows"] == 8


def test_load_filters_rejects_corrupt_and_foreign_files(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(LcdenseError, match="corrupt"):
        load_filters(tmp_path / "bad.pt")
    torch.save({"layers": []}, tmp_path / "foreign.pt")
    with pytest.raises(LcdenseError, match="not an lcdense filters file"):
        load_filters(tmp_path / "foreign.pt")
    with pytest.raises(LcdenseError, match="not found"):
        load_filters(tmp_path / "missing.pt")
