"""`lcdense paper`: the experiment list and its published numbers, the agreement definition, every
experiment's recipe resolving at both scales, and one experiment end to end at smoke scale."""
from __future__ import annotations

import argparse
import csv
import json

import pytest
import yaml

from lcdense.api.paper import experiment_settings, run_experiment, sweep_arguments
from lcdense.cli import main
from lcdense.engine.records import SummaryRecord
from lcdense.engine.variants import parse_variants
from lcdense.paper import agreement, compare, experiments, get_experiment


def _section(text: str, name: str) -> str:
    """The lines ``lcdense paper list`` prints for experiment ``name``."""
    blocks = {b.split(" — ")[0]: b for b in text.split("\n\n")}
    return blocks[name]


def test_list_prints_sources_grids_recipes_and_the_published_numbers(capsys):
    assert main(["paper", "list"]) == 0
    out = capsys.readouterr().out
    c10 = _section(out, "table1-cifar10")
    assert "Table 1" in c10 and "CIFAR-10" in c10 and "configs/classification/cifar10_resnet_lc_20_16.yaml" in c10
    assert "ICLR 2024 submission, Table 1, top1 (%): learnable 92.34±0.24; lc-learnable@128 91.86±0.34; " \
           "lc-frozen@128 92.55±0.28" in c10
    assert "arXiv v2 (June 2023), Table 1, top1 (%): learnable 91.60; lc-learnable@128 91.39; lc-frozen@128 91.89" in c10
    assert "variants learnable, lc-learnable, lc-frozen × E 128 × seeds 0, 1, 2, 3" in c10
    assert "lc-frozen@128 64.72±0.47" in _section(out, "table1-cifar100")
    assert "learnable 93.50±0.15" in _section(out, "table1-fashion-mnist")
    assert "lc-learnable@128 96.16±0.04" in _section(out, "table1-svhn")
    appc = _section(out, "appendix-c-block-ops")
    assert "mid none, relu, bn, bn_relu" in appc and "E 64" in appc
    assert "lc-frozen@64 mid=none 91.71±0.08" in appc and "lc-learnable@64 mid=bn_relu 94.72±0.16" in appc
    fig7 = _section(out, "fig7a-kernel-size")
    assert "kernel_size 3, 5, 7, 9" in fig7 and "E 1, 2, 4, 8, 16, 32, 64, 128" in fig7
    assert "published  none (figure only)" in fig7
    assert "init kaiming_uniform, kaiming_normal, glorot_uniform, glorot_normal, binary, ternary, orthogonal" \
        in _section(out, "fig4c-inits")
    assert "width 8, 16, 32, 64, 128" in _section(out, "fig6a-width")
    assert "depth 20, 32, 44, 56, 110, 218, 272" in _section(out, "fig6b-depth")
    imagenet = _section(out, "table2-imagenet")
    assert "recipe     configs/classification/imagenet_resnet18d_rsb_a2.yaml" in imagenet
    assert "lc-frozen@64 72.46" in imagenet and "frozen 37.85" in imagenet
    for name, task in (("a1-yolov5-voc", "detection"), ("a1-unet-carvana", "segmentation"), ("a1-unet-lgg", "segmentation")):
        section = _section(out, name)
        assert f"task       {task}" in section and "published  none (lcdense's numbers will be the first)" in section


def test_figures_carry_grids_but_no_numbers():
    figures = [e for e in experiments().values() if e.source.startswith("Figure")]
    assert {e.name for e in figures} == {"fig4-expansion", "fig4c-inits", "fig6a-width", "fig6b-depth", "fig7a-kernel-size"}
    assert all(not e.published for e in figures)
    assert get_experiment("fig7a-kernel-size").axes == {"kernel_size": [3, 5, 7, 9]}


def test_list_json_is_the_registry(capsys):
    assert main(["paper", "list", "--json"]) == 0
    data = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert data.keys() == experiments().keys()
    assert data["table1-cifar10"]["published"][1]["values"][2] == {"variant": "lc-frozen@128", "mean": 91.89,
                                                                   "std": None, "axes": {}}


def test_unknown_experiment_is_one_line_naming_the_known_ones(capsys):
    assert main(["paper", "run", "table1-cifar"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("lcdense: error: unknown paper experiment 'table1-cifar'; did you mean 'table1-cifar10'?")
    assert "fig7a-kernel-size" in err and "a1-yolov5-voc" in err


def test_experiment_without_a_smoke_scale_refuses_it(capsys):
    assert main(["paper", "run", "table2-imagenet", "--scale", "smoke"]) == 2
    assert capsys.readouterr().err.strip() == "lcdense: error: paper experiment 'table2-imagenet' has no smoke scale"


def test_agreement_is_within_one_published_std():
    assert agreement(92.10, 92.34, 0.24, scale="full") == "yes"   # |Δ| = 0.24 = std: on the boundary
    assert agreement(92.58, 92.34, 0.24, scale="full") == "yes"
    assert agreement(92.09, 92.34, 0.24, scale="full") == "no"
    assert agreement(92.60, 92.34, 0.24, scale="full") == "no"
    assert agreement(91.60, 91.60, None, scale="full") == "n/a: no published spread"
    assert agreement(None, 91.60, 0.2, scale="full") == "not measured"
    assert agreement(92.34, 92.34, 0.24, scale="smoke") == "smoke: not comparable"


def test_compare_puts_each_published_number_next_to_the_measured_one():
    stats = lambda mean, std: {"top1": {"mean": mean, "std": std, "n": 4}}  # noqa: E731
    summary = SummaryRecord("top1", True, {"": {"variants": {"learnable": {"metrics": stats(0.9250, 0.0020)},
                                                            "lc-frozen@128": {"metrics": stats(0.9100, 0.0030)}}}})
    block = compare(summary, get_experiment("table1-cifar10"), "full", [])
    rows = {(r["source"].split(",")[0], r["variant"]): r for r in block["rows"]}
    assert len(rows) == 6
    iclr = rows[("ICLR 2024 submission", "learnable")]
    assert iclr["measured"] == {"mean": pytest.approx(92.50), "std": pytest.approx(0.20), "n": 4}
    assert iclr["difference"] == pytest.approx(0.16) and iclr["within_published_spread"] == "yes"
    frozen = rows[("ICLR 2024 submission", "lc-frozen@128")]
    assert frozen["difference"] == pytest.approx(-1.55) and frozen["within_published_spread"] == "no"
    assert rows[("arXiv v2 (June 2023)", "learnable")]["within_published_spread"] == "n/a: no published spread"
    assert rows[("ICLR 2024 submission", "lc-learnable@128")]["within_published_spread"] == "not measured"
    assert "published std" in block["definition"]
    # appendix C: published numbers are matched to their sweep point
    appc = SummaryRecord("top1", True, {"mid=relu": {"variants": {"lc-frozen@64": {"metrics": stats(0.9270, 0.003)}}}})
    row = next(r for r in compare(appc, get_experiment("appendix-c-block-ops"), "full", [])["rows"]
               if r["measured"])
    assert (row["group"], row["published_mean"], row["within_published_spread"]) == ("mid=relu", 92.78, "yes")
    assert compare(summary, get_experiment("fig4-expansion"), "full", [])["note"].endswith("as a figure only: "
                                                                                         "no published numbers to compare")


def _planned(experiment, scale, **kwargs):
    """The run the printed ``lcdense sweep`` command plans; it must be the run that run_experiment plans."""
    from lcdense.api.benchmark import _new_run
    from lcdense.commands import run as run_command
    from lcdense.commands import sweep as sweep_command

    parser = argparse.ArgumentParser()
    sweep_command.add_arguments(parser)
    args = parser.parse_args(sweep_arguments(experiment, scale, **kwargs))
    planned = _new_run(args.task, args.config, sweep_command.axes(args), run_command.settings(args))
    recipe, direct_axes, settings = experiment_settings(experiment, scale, seeds=kwargs.get("seeds"))
    direct = _new_run(None, recipe, direct_axes, settings)
    assert planned[0] == direct[0] and [c.id for c in planned[2]] == [c.id for c in direct[2]]
    return planned


@pytest.mark.parametrize("name", [n for n, e in experiments().items() if e.recipe])
def test_every_experiment_resolves_at_both_scales(name):
    experiment = get_experiment(name)
    size = len(parse_variants(experiment.grid["variants"], experiment.grid["E"]))  # learnable has no E
    for values in experiment.axes.values():
        size *= len(values)
    scales = (("full", len(experiment.grid["seeds"])), ("smoke", 1)) if experiment.smoke else (("full", 1),)
    for scale, seeds in scales:
        config, task, cells, axis_keys = _planned(experiment, scale)
        assert task.name == experiment.task
        assert config["paper"] == {"experiment": name, "scale": scale, "recipe": config["paper"]["recipe"],
                                   "overrides": []}
        assert len(cells) == size * seeds, (scale, len(cells))
        assert set(axis_keys) == set(experiment.axes)
    full, _, _, _ = _planned(experiment, "full")
    recipe = yaml.safe_load(experiment.recipe_path().read_text())
    def shipped(resolved: dict, written: dict, where: str) -> None:  # every value the recipe writes is kept
        for key, value in written.items():
            if isinstance(value, dict):
                shipped(resolved[key], value, f"{where}.{key}")
            else:
                assert resolved[key] == value, (where, key)

    for section in ("train", "model"):  # full scale is the recipe as shipped
        shipped(full[section], recipe.get(section, {}), section)
    assert full["paper"]["recipe"] == experiment.recipe


@pytest.mark.parametrize("name", ["a1-yolov5-voc", "a1-unet-carvana", "a1-unet-lgg"])
def test_downstream_experiments_name_architecture_and_scope_as_lcdense_choice(name, capsys):
    """The downstream experiments say which network and which conversion scope they run, both as lcdense's
    choice (the prediction head learnable, as the paper's classifier), and their runs convert that scope."""
    experiment = get_experiment(name)
    assert experiment.architecture.startswith("lcdense's choice: ") and experiment.scope_note.startswith("lcdense's choice")
    for scale in ("full", "smoke"):
        config, task, _, _ = _planned(experiment, scale)
        assert config["conversion"]["scope"] == experiment.scope == task.default_scope
        assert "stays learnable" in task.scopes[experiment.scope] and config["paper"]["overrides"] == []
    assert main(["paper", "list"]) == 0
    section = _section(capsys.readouterr().out, name)
    assert f"  scope      {experiment.scope} — lcdense's choice: " in section
    assert "  network    lcdense's choice: " in section and section.index("recipe") < section.index("network")


def test_seed_override_is_recorded_as_a_change():
    config, _, cells, _ = _planned(get_experiment("table1-svhn"), "full", seeds="0,1")
    assert config["run"]["seeds"] == [0, 1] and len(cells) == 6
    assert config["paper"]["overrides"] == ["run.seeds=[0, 1]"]



def test_smoke_run_end_to_end_is_labelled_and_claims_no_agreement(tmp_path, capsys):
    result = run_experiment("table1-svhn", scale="smoke", out=tmp_path, run_name="smoke", device="cpu",
                            quiet=True, analysis=False)
    run_dir = result.run_dir
    assert run_dir == tmp_path / "classification" / "smoke" and result.complete
    assert result.summary.paper["scale"] == "smoke"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["paper"] == {"experiment": "table1-svhn", "scale": "smoke",
                               "recipe": "configs/classification/svhn_resnet_lc_20_16.yaml", "overrides": []}
    assert config["data"]["dataset"] == "embedded" and config["train"]["epochs"] == 1
    assert (config["model"]["depth"], config["model"]["width"], config["run"]["E"]) == (20, 16, [128])
    assert json.loads((run_dir / "plan.json").read_text())["paper"]["scale"] == "smoke"
    cells = sorted((run_dir / "cells").glob("*/cell.json"))
    assert {p.parent.name for p in cells} == {"learnable__seed0", "lc-frozen@128__seed0", "lc-learnable@128__seed0"}
    for path in cells:
        record = json.loads(path.read_text())
        assert record["paper"]["scale"] == "smoke"
        assert record["frozen_digest_before"] == record["frozen_digest_after"]
    rows = list(csv.DictReader((run_dir / "results.csv").open()))
    assert {r["paper_scale"] for r in rows} == {"smoke"} and {r["paper_experiment"] for r in rows} == {"table1-svhn"}

    paper = json.loads((run_dir / "summary.json").read_text())["paper"]
    assert paper["scale"] == "smoke" and len(paper["rows"]) == 3
    assert {r["within_published_spread"] for r in paper["rows"]} == {"smoke: not comparable"}
    learnable = next(r for r in paper["rows"] if r["variant"] == "learnable")
    assert (learnable["published_mean"], learnable["published_std"]) == (96.38, 0.12)
    assert learnable["measured"]["n"] == 1 and 0 <= learnable["measured"]["mean"] <= 100
    assert learnable["difference"] == pytest.approx(learnable["measured"]["mean"] - 96.38)

    md = (run_dir / "summary.md").read_text()
    assert "paper experiment table1-svhn, smoke scale" in md.splitlines()[0]
    assert "**SMOKE run**: a shortened recipe, not comparable to the paper; no agreement is claimed." in md
    line = next(l for l in md.splitlines() if l.startswith("| lc-frozen@128 |") and "ICLR" in l)
    assert line.endswith("| 96.27 ± 0.14 | ICLR 2024 submission, Table 1 | " + line.split(" | ")[4] +
                         " | smoke: not comparable |")
    assert "| yes |" not in md and "| no |" not in md

    (run_dir / "summary.md").unlink()  # `lcdense report` re-renders the paper column from the files alone
    capsys.readouterr()
    assert main(["report", str(run_dir), "--no-analysis"]) == 0
    assert "smoke: not comparable" in capsys.readouterr().out
    assert (run_dir / "summary.md").read_text() == md
