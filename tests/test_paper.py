"""`lcdense paper`: the experiment list and its published numbers, the statistics of the comparison
(checked against scipy and by simulation), every experiment's recipe resolving at both scales, and one
experiment end to end at smoke scale."""
from __future__ import annotations

import argparse
import csv
import json

import math

import numpy as np
import pytest
import yaml

from lcdense.api.paper import experiment_settings, run_experiment, sweep_arguments
from lcdense.cli import main
from lcdense.engine.records import SummaryRecord
from lcdense.engine.variants import parse_variants
from lcdense.paper import compare, equivalence, experiments, get_experiment, tost, verdict, welch


def _section(text: str, name: str) -> str:
    """The lines ``lcdense paper list`` prints for experiment ``name``."""
    blocks = {b.split(" — ")[0]: b for b in text.split("\n\n")}
    return blocks[name]


def test_list_prints_sources_grids_recipes_and_the_published_numbers(capsys):
    assert main(["paper", "list"]) == 0
    out = capsys.readouterr().out
    c10 = _section(out, "table1-cifar10")
    assert "Table 1" in c10 and "CIFAR-10" in c10 and "configs/classification/cifar10_resnet_lc_20_16.yaml" in c10
    assert "ICLR 2024 submission, Table 1 [iclr2024, 4 run(s)], top1 (%): learnable 92.34±0.24; " \
           "lc-learnable@128 91.86±0.34; lc-frozen@128 92.55±0.28" in c10
    assert "arXiv v2 (June 2023), Table 1 [arxiv-v2, 4 run(s)], top1 (%): learnable 91.60; lc-learnable@128 91.39; " \
           "lc-frozen@128 91.89" in c10
    assert "recipe     configs/classification/cifar10_resnet_lc_20_16.yaml (arXiv 2301.11360 v2 (June 2023))" in c10
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
    assert "metric     top1 (best epoch; last epoch: top1_last, top5_last)" in imagenet
    assert "lc-frozen@64 72.46" in imagenet and "frozen 37.85" in imagenet
    for name, task in (("a1-yolov5-voc", "detection"), ("a1-unet-carvana", "segmentation"), ("a1-unet-lgg", "segmentation")):
        section = _section(out, name)
        assert f"task       {task}" in section and "published  none (lcdense's numbers will be the first)" in section


def test_figures_carry_grids_but_no_numbers():
    figures = [e for e in experiments().values() if e.source.startswith("Figure")]
    assert {e.name for e in figures} == {"fig1a-off-the-shelf-cifar10", "fig1b-off-the-shelf-imagenet",
                                         "fig4a-expansion", "fig4b-fgsm", "fig4c-inits", "fig6a-width", "fig6b-depth",
                                         "fig7a-kernel-size"}
    assert all(not e.published for e in figures)
    assert get_experiment("fig7a-kernel-size").axes == {"kernel_size": [3, 5, 7, 9]}


def test_fig4b_is_an_experiment_of_the_fgsm_accuracy():
    fig4b = get_experiment("fig4b-fgsm")
    assert (fig4b.source, fig4b.metric, fig4b.unit) == ("Figure 4b", "fgsm_top1", "percent")
    assert fig4b.grid["E"] == [1, 2, 4, 8, 16, 32, 64, 128] and fig4b.recipe_version == "arxiv-v2"
    assert get_experiment("fig4a-expansion").metric == "top1"


def test_fig1_off_the_shelf_models_with_the_gaps_the_text_states(capsys):
    c10, inet = get_experiment("fig1a-off-the-shelf-cifar10"), get_experiment("fig1b-off-the-shelf-imagenet")
    assert c10.grid["variants"] == inet.grid["variants"] == ["learnable", "frozen"]
    assert c10.grid["seeds"] == [0, 1, 2, 3] and inet.grid["seeds"] == [0]  # the caption: 4 and 1 run(s)
    assert {"timm:resnet50", "timm:resnet101", "timm:wide_resnet50_2", "timm:mobilenetv2_100"} <= set(c10.axes["model"])
    assert {"timm:resnet18", "timm:resnet34", "timm:resnet50", "timm:resnet50d", "timm:resnext50_32x4d",
            "timm:wide_resnet50_2"} <= set(inet.axes["model"])
    assert c10.recipe_version == inet.recipe_version == "lcdense" and "no recipe" in c10.recipe_note
    r18 = next(g for g in inet.published_gaps if g.axes == {"model": "timm:resnet18"})
    assert (r18.gap, r18.mean, r18.runs) == ("frozen - learnable", -35.34, 1)
    assert all((g.low, g.high) == (-8.19, -3.21) for g in inet.published_gaps if g is not r18)
    r50 = next(g for g in c10.published_gaps if g.axes == {"model": "timm:resnet50"})
    assert (r50.low, r50.high) == (-1.9, -1.6)
    assert main(["paper", "list"]) == 0
    section = _section(capsys.readouterr().out, "fig1b-off-the-shelf-imagenet")
    assert "(lcdense's choice (the paper states none))" in section
    assert "gap        Section 4 text (Figure 1b) [iclr2024]: frozen - learnable at model=timm:resnet18: -35.34 (%)" \
        in section


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


def test_welch_interval_and_tost_match_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    for n1, n2, shift in ((4, 4, 0.0), (3, 5, 0.3), (6, 2, -0.5)):
        a, b = rng.normal(92.3 + shift, 0.25, n1), rng.normal(92.3, 0.4, n2)
        ours = welch(a.mean(), a.std(ddof=1), n1, b.mean(), b.std(ddof=1), n2)
        ref = stats.ttest_ind(a, b, equal_var=False)
        ci = ref.confidence_interval(0.95)
        assert ours["df"] == pytest.approx(ref.df, rel=1e-10)
        assert ours["ci95"] == pytest.approx([ci.low, ci.high], rel=1e-10)
        assert ours["difference"] / ours["se"] == pytest.approx(ref.statistic, rel=1e-10)
        for delta in (0.2, 0.6):  # TOST: the larger of the two one-sided Welch tests against ±δ
            upper = stats.ttest_ind(a - delta, b, equal_var=False, alternative="less").pvalue
            lower = stats.ttest_ind(a + delta, b, equal_var=False, alternative="greater").pvalue
            assert tost(ours, delta)["p"] == pytest.approx(max(upper, lower), rel=1e-9)


def test_verdicts_by_simulation_hold_their_levels():
    """A perfect reproduction (4 runs each side) is 'consistent' about 95% of the time (the old
    '|Δ| ≤ published std' rule: 75%), and a bias of 3 single-run stds is caught at least 75% of the
    time. (With 4 runs a 1-std bias mostly stays 'consistent': that is why equivalence needs TOST.)"""
    rng = np.random.default_rng(1)
    def rate(bias: float) -> float:
        hits = 0
        for _ in range(1500):
            a, b = rng.normal(bias, 1.0, 4), rng.normal(0.0, 1.0, 4)
            hits += verdict(welch(a.mean(), a.std(ddof=1), 4, b.mean(), b.std(ddof=1), 4), scale="full") == "consistent"
        return hits / 1500
    assert 0.935 <= rate(0.0) <= 0.975
    assert rate(3.0) < 0.25


def test_words_of_a_row():
    test = welch(92.50, 0.20, 4, 92.34, 0.24, 4)
    assert verdict(test, scale="full") == "consistent"
    assert verdict(welch(91.90, 0.20, 4, 92.34, 0.24, 4), scale="full") == "not consistent"
    assert verdict(None, scale="full") == "descriptive only"
    assert verdict(test, scale="smoke") == "smoke: not comparable"
    assert equivalence(test, None, scale="full") is None  # no margin declared: no equivalence claim
    assert equivalence(test, 0.5, scale="full")["word"] == "equivalent within δ"
    assert equivalence(test, 0.3, scale="full")["word"] == "not shown equivalent within δ"
    assert equivalence(test, 0.5, scale="smoke") is None and equivalence(None, 0.5, scale="full") is None


def _summary(groups: dict, primary: str = "top1") -> SummaryRecord:
    return SummaryRecord(primary, True, groups)


def _stats(mean: float, std: float, n: int = 4) -> dict:
    return {"top1": {"mean": mean, "std": std, "n": n}}


def test_compare_rows_carry_the_welch_interval_the_version_and_the_verdict():
    summary = _summary({"": {"variants": {"learnable": {"metrics": _stats(0.9250, 0.0020)},
                                          "lc-frozen@128": {"metrics": _stats(0.9100, 0.0030)}}, "gaps": []}})
    block = compare(summary, get_experiment("table1-cifar10"), "full", [], delta=0.5)
    assert [r["version"] for r in block["rows"]] == ["arxiv-v2"] * 3 + ["iclr2024"] * 3  # the recipe's version first
    assert block["compared_with"] == "arXiv 2301.11360 v2 (June 2023)" and block["delta"] == 0.5
    rows = {(r["version"], r["variant"]): r for r in block["rows"]}
    iclr = rows[("iclr2024", "learnable")]
    assert not iclr["recipe_run"] and rows[("arxiv-v2", "learnable")]["recipe_run"]
    assert iclr["measured"] == {"mean": pytest.approx(92.50), "std": pytest.approx(0.20), "n": 4}
    assert iclr["difference"] == pytest.approx(0.16)
    assert iclr["ci95"] == pytest.approx(welch(92.50, 0.20, 4, 92.34, 0.24, 4)["ci95"])
    assert iclr["df"] == pytest.approx(5.811, abs=1e-3)
    assert iclr["verdict"] == "consistent" and iclr["equivalence"]["word"] == "equivalent within δ"
    frozen = rows[("iclr2024", "lc-frozen@128")]
    assert frozen["difference"] == pytest.approx(-1.55) and frozen["verdict"] == "not consistent"
    v2 = rows[("arxiv-v2", "learnable")]  # v2 gives no std: descriptive only, no test, no equivalence
    assert (v2["verdict"], v2["ci95"], v2["equivalence"]) == ("descriptive only", None, None)
    assert rows[("iclr2024", "lc-learnable@128")]["verdict"] == "not measured"
    assert {"consistent", "not consistent", "descriptive only", "equivalent within δ"} <= set(block["definitions"])
    one_seed = _summary({"": {"variants": {"learnable": {"metrics": _stats(0.9250, 0.0, n=1)}}, "gaps": []}})
    row = compare(one_seed, get_experiment("table1-svhn"), "full", [], delta=0.5)["rows"][0]
    assert (row["verdict"], row["ci95"], row["equivalence"]) == ("descriptive only", None, None)
    assert row["difference"] == pytest.approx(92.50 - 96.38)
    # appendix C: published numbers are matched to their sweep point
    appc = _summary({"mid=relu": {"variants": {"lc-frozen@64": {"metrics": _stats(0.9270, 0.003)}}, "gaps": []}})
    row = next(r for r in compare(appc, get_experiment("appendix-c-block-ops"), "full", [])["rows"] if r["measured"])
    assert (row["group"], row["published_mean"], row["verdict"]) == ("mid=relu", 92.78, "consistent")
    assert row["published_runs_note"].startswith("assumed")
    assert compare(summary, get_experiment("fig4a-expansion"), "full", [])["note"].endswith(
        "as a figure only: no published numbers to compare")


def test_compare_gaps_with_the_published_gap_its_standard_error_and_sign():
    gap = {"gap": "lc-frozen@128 - learnable", "E": 128, "metric": "top1", "mean": 0.0040, "std": 0.0020, "n": 4,
           "seeds": [0, 1, 2, 3], "ci95": [0.0008, 0.0072]}
    summary = _summary({"": {"variants": {}, "gaps": [gap]}})
    rows = compare(summary, get_experiment("table1-cifar10"), "full", [])["gaps"]
    assert [r["version"] for r in rows] == ["arxiv-v2", "iclr2024"]
    v2, iclr = rows
    assert v2["published_gap"] == {"mean": pytest.approx(91.89 - 91.60), "se": None, "df": None}
    assert (v2["verdict"], v2["sign_agrees"]) == ("descriptive only", True)
    published_se = math.sqrt((0.28**2 + 0.24**2) / 4)
    assert iclr["published_gap"]["mean"] == pytest.approx(0.21) and iclr["published_gap"]["se"] == pytest.approx(published_se)
    assert iclr["measured_gap"]["mean"] == pytest.approx(0.40) and iclr["measured_gap"]["ci95"] == pytest.approx([0.08, 0.72])
    se = math.sqrt(0.20**2 / 4 + published_se**2)
    assert iclr["se"] == pytest.approx(se) and iclr["difference"] == pytest.approx(0.19)
    assert iclr["verdict"] == "consistent" and iclr["sign_agrees"] and iclr["sign_clear"]
    gap["mean"], gap["ci95"] = -0.0010, [-0.0042, 0.0022]
    iclr = compare(summary, get_experiment("table1-cifar10"), "full", [])["gaps"][1]
    assert not iclr["sign_agrees"] and not iclr["sign_clear"]


def test_a_best_epoch_recipe_gets_its_gaps_on_the_last_epoch_too():
    def gap(metric, mean):
        return {"gap": "lc-frozen@64 - learnable", "E": 64, "metric": metric, "mean": mean, "std": 0.0, "n": 1,
                "seeds": [0]}
    summary = _summary({"": {"variants": {}, "gaps": [gap("top1", -0.0010), gap("top1_last", -0.0050)]}})
    rows = compare(summary, get_experiment("table2-imagenet"), "full", [])["gaps"]
    assert [(r["epoch"], r["metric"]) for r in rows] == [("best", "top1"), ("last", "top1_last")]
    assert all(r["published_gap"]["mean"] == pytest.approx(72.46 - 72.60) for r in rows)
    assert [r["verdict"] for r in rows] == ["descriptive only"] * 2  # one run on each side
    assert [r["difference"] for r in rows] == pytest.approx([-0.10 + 0.14, -0.50 + 0.14])


def test_gaps_stated_in_the_text_are_checked_against_their_range():
    def group(model, mean):
        return {"variants": {}, "gaps": [{"gap": "frozen - learnable", "E": None, "metric": "top1", "mean": mean,
                                           "std": 0.002, "n": 4, "seeds": [0, 1, 2, 3]}]}
    summary = _summary({"model=timm:resnet50": group("timm:resnet50", -0.017),
                        "model=timm:resnet18": group("timm:resnet18", -0.05)})
    rows = {r["group"]: r for r in compare(summary, get_experiment("fig1a-off-the-shelf-cifar10"), "full", [])["stated_gaps"]}
    assert rows["model=timm:resnet50"]["stated"] == "-1.90 to -1.60"
    assert rows["model=timm:resnet50"]["verdict"] == "in the published range"
    assert rows["model=timm:resnet18"]["stated"] == "≤ -16.00"
    assert rows["model=timm:resnet18"]["verdict"] == "outside the published range"
    assert rows["model=timm:resnet18"]["sign_agrees"]


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
                                   "overrides": [], "delta": None}
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
                            quiet=True, analysis=False, delta=0.5)
    run_dir = result.run_dir
    assert run_dir == tmp_path / "classification" / "smoke" and result.complete
    assert result.summary.paper["scale"] == "smoke"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["paper"] == {"experiment": "table1-svhn", "scale": "smoke", "delta": 0.5,
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
    assert paper["scale"] == "smoke" and len(paper["rows"]) == 3 and paper["delta"] == 0.5
    assert {r["verdict"] for r in paper["rows"] + paper["gaps"]} == {"smoke: not comparable"}
    assert all(r["equivalence"] is None for r in paper["rows"] + paper["gaps"])  # never at smoke scale
    learnable = next(r for r in paper["rows"] if r["variant"] == "learnable")
    assert (learnable["published_mean"], learnable["published_std"], learnable["version"]) == (96.38, 0.12, "iclr2024")
    assert learnable["measured"]["n"] == 1 and 0 <= learnable["measured"]["mean"] <= 100
    assert learnable["difference"] == pytest.approx(learnable["measured"]["mean"] - 96.38)
    gap = next(g for g in paper["gaps"] if g["gap"] == "lc-frozen@128 - learnable")
    assert gap["published_gap"]["mean"] == pytest.approx(96.27 - 96.38)
    assert gap["measured_gap"]["mean"] == pytest.approx(result.summary.gap("lc-frozen@128 - learnable")["mean"] * 100)

    md = (run_dir / "summary.md").read_text()
    assert "paper experiment table1-svhn, smoke scale" in md.splitlines()[0]
    assert "**SMOKE run**: a shortened recipe, not comparable to the paper; no agreement is claimed" in md
    assert "Equivalence margin: δ = 0.50 points, declared before the run (`paper.delta`)." in md
    assert "| variant | measured (%): mean ± std (runs) | paper (%): mean ± std (runs) | source [version] | " \
           "Δ measured − paper | Welch 95% CI of Δ | verdict |" in md
    line = next(l for l in md.splitlines() if l.startswith("| lc-frozen@128 |") and "ICLR" in l)
    assert " | 96.27 ± 0.14 (4) | ICLR 2024 submission, Table 1 [iclr2024, other recipe] | " in line
    assert line.endswith("| n/a | smoke: not comparable |")  # one seed: no interval
    assert "| gap | epoch | measured | paper | source [version] |" in md
    assert "**smoke: not comparable**: a shortened recipe" in md and "consistent" not in md

    (run_dir / "summary.md").unlink()  # `lcdense report` re-renders the paper section from the files alone
    capsys.readouterr()
    assert main(["report", str(run_dir), "--no-analysis"]) == 0
    assert "smoke: not comparable" in capsys.readouterr().out
    assert (run_dir / "summary.md").read_text() == md


def _write_run(run_dir, experiment: str, metrics: dict) -> None:
    """A finished run of ``experiment`` from cell records alone: (variant, seed) → metrics."""
    from lcdense.engine.records import CellRecord, write_cell
    from lcdense.engine.rundir import RunDir

    run = RunDir(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"task": "classification", "paper": {
        "experiment": experiment, "scale": "full", "recipe": "r.yaml", "overrides": [], "delta": 0.5}}))
    for (variant, seed), values in metrics.items():
        kind, _, e = variant.partition("@")
        cell_id = f"{variant}__seed{seed}"
        (run_dir / "cells" / cell_id).mkdir(parents=True)
        write_cell(run.cell(cell_id).path, CellRecord(
            id=cell_id, task="classification", variant=variant, kind=kind, E=int(e) if e else None, seed=seed,
            primary_metric="top1", metrics=values,
            costs={"trainable_params": 10, "frozen_params": 0, "wall_time_s": 1.0}))


def test_fig4b_run_is_summarised_in_fgsm_accuracy_and_table2_gets_last_epoch_gaps(tmp_path):
    from lcdense.reporting.summary import write_report

    run_dir = tmp_path / "fig4b"
    _write_run(run_dir, "fig4b-fgsm", {(v, s): {"top1": 0.9, "fgsm_top1": fgsm + 0.01 * s}
                                       for v, fgsm in (("learnable", 0.40), ("lc-frozen@8", 0.50)) for s in (0, 1)})
    summary, table = write_report(run_dir, "top1", True)
    assert summary.primary_metric == "fgsm_top1" and summary.paper["metric"] == "fgsm_top1"
    gap = summary.gap("lc-frozen@8 - learnable")
    assert (gap["metric"], gap["mean"], gap["n"]) == ("fgsm_top1", pytest.approx(0.10), 2)
    assert "| gap in fgsm_top1 (paired by seed) |" in table

    run_dir = tmp_path / "table2"
    _write_run(run_dir, "table2-imagenet", {("learnable", 0): {"top1": 0.7260, "top1_last": 0.7250},
                                            ("lc-frozen@64", 0): {"top1": 0.7246, "top1_last": 0.7200}})
    summary, table = write_report(run_dir, "top1", True)
    assert summary.gap("lc-frozen@64 - learnable", metric="top1_last")["mean"] == pytest.approx(-0.0050)
    rows = summary.paper["gaps"]
    assert [(r["epoch"], round(r["measured_gap"]["mean"], 2)) for r in rows] == [("best", -0.14), ("last", -0.50)]
    md = (run_dir / "summary.md").read_text()
    assert "| gap in top1_last (paired by seed) |" in md and "the **last** epoch's gaps are given beside them" in md
    assert "| lc-frozen@64 - learnable | last |" in md
