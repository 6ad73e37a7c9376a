"""Run-level filter analysis (lcdense.reporting.analysis.analyze_run) and ``lcdense analyze``."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from lcdense import LcdenseError, cli, convert
from lcdense.engine.records import CellRecord, write_cell
from lcdense.reporting.analysis import (
    analyze_run,
    filter_variance_entropy,
    save_filters,
    variance_entropy,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _small_cnn(stem_kernel: int = 3, kernel: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, stem_kernel, padding=stem_kernel // 2), nn.ReLU(),
        nn.Conv2d(8, 8, kernel, padding=kernel // 2), nn.ReLU(),
        nn.Conv2d(8, 8, 1),
        nn.Conv2d(8, 16, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def _make_cell(run: Path, variant: str, seed: int, stem_kernel: int = 3, kernel: int | None = None,
               status: str = "done") -> nn.Module:
    """Build, convert and save one cell as the runner does (no training: weights are the seeded init)."""
    kind, _, e_text = variant.partition("@")
    E = int(e_text) if e_text else None
    mode, spatial = ("lc", kind[3:]) if E else (kind, None)
    torch.manual_seed(seed)
    model = _small_cnn(stem_kernel, kernel or 3)
    convert(model, mode, seed=seed, **({"E": E, "spatial": spatial} if mode == "lc" else {}))
    axes = {"kernel": kernel} if kernel else {}
    cell_dir = run / "cells" / f"{variant}{''.join(f'__{k}={v}' for k, v in axes.items())}__seed{seed}"
    cell_dir.mkdir(parents=True)
    save_filters(model, cell_dir / "filters.pt")
    write_cell(cell_dir, CellRecord(id=cell_dir.name, variant=variant, mode=mode, spatial=spatial, axes=axes, seed=seed,
                                    status=status, primary_metric="top1",
                                    metrics={"top1": 0.5 + (E or 0) / 100 + seed / 1000 + (kernel or 3) / 10000}))
    return model


def _analyze(run: Path) -> tuple[str, dict]:
    section = analyze_run(run)
    return section, json.loads((run / "analysis.json").read_text())


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory) -> tuple[Path, dict, dict]:
    run = tmp_path_factory.mktemp("sweep")
    variants = ["learnable", "frozen", "lc-frozen@1", "lc-frozen@4", "lc-learnable@4"]
    models = {(v, s): _make_cell(run, v, s) for v in variants for s in (0, 1)}
    return run, _analyze(run), models


def test_sweep_writes_json_csv_markdown_and_figures(sweep_run):
    run, (section, on_disk), _ = sweep_run
    assert on_disk["format"] == "lcdense-analysis/1" and on_disk["primary_metric"] == "top1"
    # the one variant order of every report (the summary's): learnable, frozen, then by E, lc-learnable first
    assert list(on_disk["variants"]) == ["learnable", "frozen", "lc-frozen@1", "lc-learnable@4", "lc-frozen@4"]
    assert len(on_disk["cells"]) == 10
    rows = list(csv.DictReader((run / "analysis.csv").open()))
    assert len(rows) == 10 * 3  # three spatial convs per cell (the 1×1 is not spatial)
    assert {r["layer"] for r in rows} == {"0", "2", "5"}
    assert (run / "analysis.md").read_text().strip() == section.strip()
    for name in ("fve_layers", "fve_vs_E", "basis_spectrum", "basis_vs_E"):
        assert f"figures/{name}.png" in on_disk["figures"]
    drawn = on_disk["variant_figures"]
    assert drawn["lc-frozen@4"]["spatial_variance"] == "figures/spatial_variance_lc-frozen_E4.png"
    assert drawn["lc-learnable@4"]["filters"] == ["figures/filters_lc-learnable_E4.png"]
    per_variant = [p for d in drawn.values() for p in [d["spatial_variance"], *d["filters"]]]
    for relative in on_disk["figures"] + per_variant:
        assert (run / relative).read_bytes()[:8] == PNG_SIGNATURE
        assert f"]({relative})" in section
    assert not list(run.rglob(".*tmp*"))


def test_numbers_match_the_models_and_sit_next_to_the_accuracy_gap(sweep_run):
    _, (section, result), models = sweep_run
    frozen = result["variants"]["frozen"]
    direct = [filter_variance_entropy(models[("frozen", s)][0].weight) for s in (0, 1)]
    assert frozen["first_mean"] == pytest.approx(sum(direct) / 2)
    assert frozen["first_normalized"] and frozen["lc_layers"] == 0 and frozen["bank_span_ratio"] is None
    lc = result["variants"]["lc-frozen@4"]
    assert lc["E"] == 4 and lc["family"] == "lc-frozen" and lc["lc_layers"] == 3 and lc["seeds"] == [0, 1]
    assert lc["metric_mean"] == pytest.approx(0.5403 + 0.0005) and lc["metric_std"] == pytest.approx(0.000707, abs=1e-6)
    assert lc["gap_vs_learnable"] == pytest.approx(0.04)
    # E=1 banks (8×27 … 16×72) are wide: span grows with E
    assert result["variants"]["lc-frozen@1"]["bank_span_ratio"] < lc["bank_span_ratio"]
    assert section.startswith("## Filter analysis")
    row = next(line for line in section.splitlines() if line.startswith("| lc-frozen@4 |"))
    assert "0.5408 ± 0.0007" in row and "+0.0400" in row and f"{lc['first_mean']:.3f}" in row


def test_spatial_variance_is_per_kernel_size_and_seed_averaged(sweep_run):
    _, (_, result), _ = sweep_run
    maps = result["variants"]["learnable"]["spatial_variance"]
    assert list(maps) == ["3"]
    assert torch.tensor(maps["3"]).shape == (3, 3)
    cells = [c for c in result["cells"] if c["variant"] == "learnable"]
    expected = torch.stack([torch.tensor(c["spatial_variance"]["3"]) for c in cells]).mean(0)
    assert torch.allclose(torch.tensor(maps["3"], dtype=torch.float64), expected.double())


def test_single_setting_run_with_a_6x6_stem(tmp_path):
    """A detection-like model: the 6×6 stem gets the raw entropy; no E sweep."""
    models = [_make_cell(tmp_path, "lc-frozen@2", 0, stem_kernel=6), _make_cell(tmp_path, "learnable", 0, stem_kernel=6)]
    _make_cell(tmp_path, "frozen", 0, status="failed")
    section, result = _analyze(tmp_path)
    assert list(result["variants"]) == ["learnable", "lc-frozen@2"]
    lc = result["variants"]["lc-frozen@2"]
    assert not lc["first_normalized"] and lc["last_normalized"]
    assert lc["first_mean"] == pytest.approx(variance_entropy(models[0][0].weight))
    assert set(lc["spatial_variance"]) == {"3", "6"}
    assert "fve_vs_E" not in " ".join(result["figures"]) and "basis_vs_E" not in " ".join(result["figures"])
    assert any("status 'failed', skipped" in note for note in result["notes"])
    assert any("un-normalised entropy" in note for note in result["notes"])
    assert "*H*" in section and "| top1 (mean ± std) | Δ mean vs learnable |" in section


def test_kernel_size_sweep_gives_one_heatmap_per_variant_with_a_panel_per_size(tmp_path):
    """Fig. 7b: a sweep axis (here the kernel size) splits the table rows and the gaps, not the heatmaps."""
    for kernel in (3, 5):
        for variant in ("learnable", "lc-frozen@2"):
            _make_cell(tmp_path, variant, 0, kernel=kernel)
    section, result = _analyze(tmp_path)
    assert list(result["variants"]) == ["learnable [kernel=3]", "lc-frozen@2 [kernel=3]",
                                        "learnable [kernel=5]", "lc-frozen@2 [kernel=5]"]
    assert result["variants"]["lc-frozen@2 [kernel=5]"]["gap_vs_learnable"] == pytest.approx(0.02)
    assert set(result["variants"]["lc-frozen@2 [kernel=5]"]["spatial_variance"]) == {"3", "5"}
    drawn = result["variant_figures"]
    assert set(drawn) == {"learnable", "lc-frozen@2"} and len(drawn["lc-frozen@2"]["filters"]) == 2
    assert (tmp_path / drawn["lc-frozen@2"]["spatial_variance"]).read_bytes()[:8] == PNG_SIGNATURE
    assert "| lc-frozen@2 [kernel=5] |" in section


def test_missing_or_invalid_run_directories_raise_one_clear_error(tmp_path):
    with pytest.raises(LcdenseError, match="does not exist"):
        analyze_run(tmp_path / "nope")
    with pytest.raises(LcdenseError, match="no cells/ directory"):
        analyze_run(tmp_path)
    (tmp_path / "cells" / "x__seed0").mkdir(parents=True)
    (tmp_path / "cells" / "x__seed0" / "cell.json").write_text("{not json")
    with pytest.raises(LcdenseError, match="cannot read cell file"):
        analyze_run(tmp_path)
    (tmp_path / "cells" / "x__seed0" / "cell.json").write_text(json.dumps({"variant": "x", "seed": 0}))
    with pytest.raises(LcdenseError, match="cell record . lacks id; it was not written by lcdense"):
        analyze_run(tmp_path)
    (tmp_path / "cells" / "x__seed0" / "cell.json").write_text(json.dumps({"format": "lcdense-cell/9", "id": "x"}))
    with pytest.raises(LcdenseError, match="cell record x is format lcdense-cell/9; this lcdense reads lcdense-cell/1"):
        analyze_run(tmp_path)
    (tmp_path / "cells" / "x__seed0" / "cell.json").write_text(json.dumps({"id": "x", "variant": "x", "seed": 0,
                                                                            "status": "done"}))
    with pytest.raises(LcdenseError, match="no finished cell with a filters.pt"):
        analyze_run(tmp_path)


def test_cli_subcommand(tmp_path, monkeypatch, capsys):
    assert cli.main(["analyze", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lcdense: error: run directory") and "\n" not in err
    _make_cell(tmp_path, "lc-learnable@2", 0)
    assert cli.main(["analyze", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## Filter analysis") and "analysis.json, analysis.csv, analysis.md" in out
    assert (tmp_path / "analysis.json").is_file()
