"""Run provenance (issue 12, fidelity): the precision every cell trained and evaluated in, the
baseline's init in an init sweep, resume provenance, the refusal of an inexact preconditioned form
before any training, and the summary lines that show them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lcdense.cli import main
from lcdense.engine.provenance import autocast_precision
from lcdense.engine.records import CellRecord
from lcdense.reporting.analysis import load_filters
from lcdense.reporting.summary import markdown_table, results_csv, summarize

CONFIGS = Path(__file__).parents[1] / "configs" / "classification"
PAPER_CONFIGS = sorted(CONFIGS.glob("*_resnet_lc_20_16.yaml"))


def _run_dir(out: Path, task: str = "toy") -> Path:
    (run_dir,) = [p for p in (out / task).iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run_dir


def _cell(run_dir: Path, cell_id: str) -> dict:
    return json.loads((run_dir / "cells" / cell_id / "cell.json").read_text())


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.name)
def test_paper_recipe_configs_train_in_fp32(path):
    from lcdense.engine.config import load_yaml, resolve
    from lcdense.engine.task import get_task

    assert len(PAPER_CONFIGS) == 4
    config = resolve(get_task("classification").default_config(), load_yaml(path), {}, where=str(path))
    assert config["train"]["amp"] is False
    assert autocast_precision(config["train"]["amp"], torch.device("cuda")) == "fp32"
    assert autocast_precision(True, torch.device("cuda")) == "bf16"  # the default would autocast on a GPU


def test_cells_record_the_precision_actually_used_and_their_init(toy_installed, tmp_path):
    # train.amp is true by default, but on CPU the loop runs in fp32: the record says fp32
    assert main(["run", "--task", "toy", "--variants", "learnable,lc-frozen", "--E", "2", "--epochs", "1",
                 "--out", str(tmp_path), "--quiet", "--no-analysis"]) == 0
    run_dir = _run_dir(tmp_path)
    for cell_id in ("learnable__seed0", "lc-frozen@2__seed0"):
        record = _cell(run_dir, cell_id)
        provenance = record["provenance"]
        assert provenance["precision"] == {"train": "fp32", "eval": "fp32", "fp32_math": "ieee", "epoch_eval": None}
        assert provenance["init"] == "kaiming_uniform"
        assert provenance["resume"] == {"resumed": False, "exact": None, "resumes": []}
        assert provenance["primary_weights"] == "model"
        assert provenance["frozen_digests"] == {"model": record["frozen_digest_after"]}
    summary = (run_dir / "summary.md").read_text()
    assert "Spatial init: kaiming_uniform (every variant)" in summary
    assert "Precision not fp32" not in summary and "Approximate resumes" not in summary


def test_init_sweep_keeps_the_baseline_at_the_default_init(toy_installed, tmp_path):
    common = ["--task", "toy", "--variants", "learnable,frozen", "--epochs", "1", "--quiet", "--no-analysis"]
    assert main(["sweep", *common, "--init", "orthogonal", "--out", str(tmp_path / "sweep")]) == 0
    assert main(["run", *common, "--out", str(tmp_path / "default")]) == 0
    sweep, default = _run_dir(tmp_path / "sweep"), _run_dir(tmp_path / "default")
    swept = {k: _cell(sweep, f"{k}__init=orthogonal__seed0") for k in ("learnable", "frozen")}
    plain = {k: _cell(default, f"{k}__seed0") for k in ("learnable", "frozen")}
    assert swept["learnable"]["provenance"]["init"] == "kaiming_uniform"
    assert swept["learnable"]["conversion"]["settings"]["init"] == "kaiming_uniform"
    assert swept["frozen"]["provenance"]["init"] == "orthogonal"
    # the baseline trained from the default filters: the same trained filters as a default-init run
    learned = load_filters(sweep / "cells" / "learnable__init=orthogonal__seed0" / "filters.pt")["layers"]
    reference = load_filters(default / "cells" / "learnable__seed0" / "filters.pt")["layers"]
    assert [layer["name"] for layer in learned] == [layer["name"] for layer in reference] and learned
    assert all(torch.equal(a["weight"], b["weight"]) for a, b in zip(learned, reference))
    assert swept["learnable"]["metrics"] == plain["learnable"]["metrics"]
    # the frozen variant's random filters did move to the orthogonal init
    assert swept["frozen"]["frozen_digest_before"] != plain["frozen"]["frozen_digest_before"]
    summary = (sweep / "summary.md").read_text()
    assert "Spatial init: learnable kaiming_uniform; frozen orthogonal" in summary
    rows = results_csv([CellRecord.from_dict(swept["learnable"]), CellRecord.from_dict(swept["frozen"])]).splitlines()
    assert rows[0].split(",")[-6:] == ["init", "precision_train", "precision_eval", "primary_weights", "resumed",
                                       "resume_exact"]
    assert rows[1].split(",")[-6:] == ["kaiming_uniform", "fp32", "fp32", "model", "False", ""]


def test_baseline_init_asks_for_another_baseline_init(toy_installed, tmp_path, capsys):
    assert main(["run", "--task", "toy", "--variants", "learnable", "--epochs", "1", "--set", "run.baseline_init=orthogonal",
                 "--out", str(tmp_path), "--quiet", "--no-analysis"]) == 0
    assert _cell(_run_dir(tmp_path), "learnable__seed0")["provenance"]["init"] == "orthogonal"
    assert main(["run", "--task", "toy", "--set", "run.baseline_init=kaiming", "--out", str(tmp_path / "bad"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown init 'kaiming'" in err, err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("argv,reason", [
    (["--task", "classification", "--set", "train.optimizer=adamw"], "train.optimizer 'adamw'"),
    pytest.param(["--task", "segmentation"], "train.optimizer 'adamw'",  # segmentation trains with AdamW
                 marks=pytest.mark.extra("segmentation")),
    pytest.param(["--task", "segmentation", "--set", "train.optimizer=sgd", "--set", "train.grad_clip=5"],
                 "train.grad_clip 5", marks=pytest.mark.extra("segmentation")),
    pytest.param(["--task", "detection", "--set", "train.optimizer=SGD"], "ultralytics' trainer clips gradients (max norm 10)",
                 marks=pytest.mark.extra("detection")),
    pytest.param(["--task", "detection"], "clips gradients (max norm 10) and train.optimizer is AdamW",
                 marks=pytest.mark.extra("detection")),
    (["--task", "toy"], "task 'toy' does not verify"),
])
def test_inexact_preconditioned_form_is_refused_before_any_training(toy_installed, tmp_path, capsys, argv, reason):
    out = tmp_path / "runs"
    code = main(["run", *argv, "--variants", "learnable,lc-frozen", "--E", "2", "--set", "conversion.impl=preconditioned",
                 "--out", str(out), "--quiet", "--no-analysis"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("lcdense: error: conversion.impl 'preconditioned' is exact only under plain SGD") and reason in err
    assert not list(out.glob("*/*/cells/*"))  # not even the learnable baseline trained
    assert not list(out.glob("*/*"))


def test_preconditioned_with_a_learnable_bank_is_refused_before_any_training(tmp_path, capsys):
    code = main(["run", "--task", "classification", "--E", "2", "--set", "conversion.impl=preconditioned",
                 "--out", str(tmp_path), "--quiet"])  # default variants include lc-learnable
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "cannot train lc-learnable cells" in err, err
    assert not list(tmp_path.glob("*/*"))


def test_preconditioned_under_plain_sgd_passes_the_check():
    from lcdense.engine.config import resolve
    from lcdense.engine.runner import check_before_training, plan_cells
    from lcdense.engine.task import get_task
    from lcdense.engine.variants import parse_variants

    task = get_task("classification")
    config = resolve(task.default_config(), {}, {"conversion.impl": "preconditioned"})
    check_before_training(task, config, plan_cells(parse_variants(["lc-frozen"], [2]), [0], {}))


def test_resumed_cells_say_from_where_and_the_summary_flags_approximate_ones():
    def record(cell_id: str, variant: str, *, train: str = "fp32", resume: dict | None = None) -> dict:
        kind, _, e = variant.partition("@")
        resumes = [resume] if resume else []
        return {"id": cell_id, "task": "detection", "variant": variant, "kind": kind, "mode": "x", "spatial": None,
                "E": int(e) if e else None, "axes": {}, "seed": 0, "init_seed": 0, "data_seed": 1000,
                "metrics": {"map50_95": 0.5}, "frozen_digest_before": "d", "frozen_digest_after": "d",
                "costs": {"trainable_params": 1, "wall_time_s": 1.0},
                "provenance": {"precision": {"train": train, "eval": "fp32"}, "init": "kaiming_uniform",
                               "resume": {"resumed": bool(resumes), "exact": all(r["exact"] for r in resumes) if resumes else None,
                                          "resumes": resumes},
                               "primary_weights": "ema", "frozen_digests": {"model": "d", "ema": "d"}}}

    records = [
        record("learnable__seed0", "learnable", train="bf16",
               resume={"after_epoch": 3, "source": "fp32_state", "exact": True, "data_order": "restarted"}),
        record("frozen__seed0", "frozen",
               resume={"after_epoch": 5, "source": "ultralytics_fp16_ema", "exact": False, "data_order": "restarted"}),
    ]
    summary = summarize([CellRecord.from_dict(r) for r in records], "map50_95", True)
    variants = summary.groups[""]["variants"]
    assert variants["learnable"]["provenance"]["resumed"] == ["learnable__seed0"]
    assert variants["learnable"]["provenance"]["approximate_resumes"] == []
    assert variants["frozen"]["provenance"]["approximate_resumes"] == ["frozen__seed0"]
    table = markdown_table(summary)
    assert "**Precision not fp32:** learnable trained in bf16, evaluated in fp32" in table
    assert "frozen trained" not in table  # fp32 is not shown
    assert "Primary metric from the ema weights (learnable); ema weights (frozen)" in table
    assert "**Approximate resumes** (continued from ultralytics' fp16 EMA checkpoint" in table
    assert table.split("**Approximate resumes**")[1].split("\n")[0].endswith("frozen__seed0  ")


def test_an_evaluated_copy_with_other_frozen_filters_fails_the_cell(toy_installed, tmp_path, monkeypatch, capsys):
    from lcdense.engine.task import get_task

    toy = type(get_task("toy"))
    original = toy.evaluate

    def evaluate_a_drifted_copy(self, model, data, config, cell):
        cell.provenance.frozen_digests["ema"] = "0" * 64
        return original(self, model, data, config, cell)

    monkeypatch.setattr(toy, "evaluate", evaluate_a_drifted_copy)
    assert main(["run", "--task", "toy", "--variants", "frozen", "--epochs", "1", "--out", str(tmp_path), "--quiet",
                 "--no-analysis"]) == 2
    assert "frozen filters of the evaluated ema weights differ from the model's" in capsys.readouterr().err
    record = _cell(_run_dir(tmp_path), "frozen__seed0")
    assert record["status"] == "failed"


def test_every_resume_of_a_cell_is_kept_in_its_provenance(tmp_path):
    from torch import nn

    from lcdense.engine.task import Cell
    from lcdense.engine.training import TrainSettings, train_loop

    class Crash(Exception):
        pass

    x, y = torch.randn(32, 4, generator=torch.Generator().manual_seed(0)), torch.randn(32, 1)
    settings = TrainSettings(epochs=4, lr=0.05, optimizer="sgd")

    def train(crash_at: int | None) -> Cell:
        cell = Cell(variant="learnable", seed=0, init_seed=0, data_seed=1000, dir=tmp_path, device=torch.device("cpu"),
                    convert=lambda m: m, quiet=True)
        save = cell.save_checkpoint

        def save_then_crash(state):
            save(state)
            if state["epoch"] + 1 == crash_at:
                raise Crash

        cell.save_checkpoint = save_then_crash
        torch.manual_seed(0)
        train_loop(nn.Linear(4, 1), batches=lambda epoch: [(x, y)], steps_per_epoch=1,
                   loss=lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]), settings=settings, cell=cell)
        return cell

    for crash_at in (1, 3):
        with pytest.raises(Crash):
            train(crash_at)
    cell = train(None)
    assert [r["after_epoch"] for r in cell.provenance.resumes] == [1, 3]
    assert cell.provenance.to_dict("kaiming_uniform")["resume"]["exact"] is True
    assert cell.provenance.train_precisions == ["fp32"]


def _shared_loop_experiments() -> list[str]:
    from lcdense.paper import experiments

    return [name for name, e in experiments().items() if e.recipe and e.task in ("classification", "segmentation")]


@pytest.mark.parametrize("name", _shared_loop_experiments())
def test_paper_recipes_keep_decaying_every_trainable_parameter(name):
    """``train.wd_norm_bias`` defaults to true: every paper recipe on the shared loop still decays norms and
    biases with the rest, in one parameter group equal to the optimizer it built before the setting existed."""
    from torch import nn

    from lcdense.engine.config import load_yaml, resolve
    from lcdense.engine.task import get_task
    from lcdense.engine.training import TrainSettings, make_optimizer
    from lcdense.paper import get_experiment

    experiment = get_experiment(name)
    task = get_task(experiment.task)
    config = resolve(task.default_config(), load_yaml(experiment.recipe_path()), {})
    config = task.resolve_config(config) if hasattr(task, "resolve_config") else config
    if config["train"].get("recipe") == "timm":
        pytest.skip("timm's own optimizer (never decays norms and biases)")
    settings = TrainSettings.from_config(config["train"])
    assert settings.wd_norm_bias is True and settings.weight_decay > 0
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))
    optimizer = make_optimizer(model, settings)
    (group,) = optimizer.param_groups
    assert group["weight_decay"] == settings.weight_decay and len(group["params"]) == 6
    before = (torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum, nesterov=settings.nesterov,
                              weight_decay=settings.weight_decay) if settings.optimizer == "sgd" else
              torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay))
    assert optimizer.state_dict() == before.state_dict()


def test_wd_norm_bias_false_spares_norms_and_biases_and_the_cell_records_it(tmp_path):
    """``train.wd_norm_bias: false`` (ultralytics' and timm's choice): conv and linear weights decay, norm
    scales/shifts and biases do not — in the update itself and in the provenance the loop records."""
    from torch import nn

    from lcdense import Cell, TrainSettings, train_loop

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(36, 2))
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    cell = Cell(variant="learnable", seed=0, init_seed=0, data_seed=1, dir=tmp_path, device=torch.device("cpu"),
                convert=lambda m: None, quiet=True)
    settings = TrainSettings(epochs=1, lr=0.1, optimizer="sgd", momentum=0.0, weight_decay=0.5, wd_norm_bias=False,
                             schedule="constant")
    batch = torch.zeros(2, 3, 5, 5)
    train_loop(model, batches=lambda epoch: [batch], steps_per_epoch=1, settings=settings, cell=cell,
               loss=lambda net, x: 0.0 * net(x).sum())  # zero gradients: what moves is the decay alone
    moved = {k: not torch.equal(v, start[k]) for k, v in model.named_parameters()}
    assert moved == {"0.weight": True, "0.bias": False, "1.weight": False, "1.bias": False, "3.weight": True,
                     "3.bias": False}
    assert torch.allclose(model[0].weight, start["0.weight"] * (1 - 0.1 * 0.5))
    assert cell.provenance.to_dict("kaiming_uniform")["weight_decay"] == {
        "rates": [0.5], "decayed": {"tensors": 2, "params": 4 * 3 * 9 + 2 * 36},
        "not_decayed": {"tensors": 4, "params": 4 + 4 + 4 + 2}, "norms_and_biases": "not decayed"}


def _ema_record(variant: str, seed: int, metrics: dict, weights: str, scope: str) -> CellRecord:
    kind, _, e = variant.partition("@")
    return CellRecord.from_dict({
        "id": f"{variant}__seed{seed}", "task": "detection", "variant": variant, "kind": kind, "mode": "x",
        "E": int(e) if e else None, "seed": seed, "metrics": metrics, "costs": {"trainable_params": 1, "wall_time_s": 1.0},
        "conversion": {"scope": f"{scope}: what it converts"},
        "provenance": {"precision": {"train": "fp32", "eval": "fp32"}, "init": "kaiming_uniform",
                       "resume": {"resumed": False, "exact": None, "resumes": []}, "primary_weights": weights}})


def test_the_summary_reports_the_raw_weights_beside_the_ema_and_says_why_for_lc_learnable():
    """Detection's primary metric is the EMA's: raw_map50_95 gets a column beside it, and with an lc-learnable
    variant the summary says that its EMA (of P and W apart) is not the EMA of W' = P·W. timm's primary is the
    raw weights': the EMA's ema_top1_best is the column beside it. Every group names its conversion scope."""
    records = [_ema_record(v, s, {"map50_95": 0.5 + s / 10, "raw_map50_95": 0.4 + s / 10}, "ema", "backbone+neck")
               for v in ("learnable", "lc-learnable@8") for s in (0, 1)]
    table = markdown_table(summarize(records, "map50_95", True))
    assert "| variant | seeds | map50_95 (mean ± std) | raw_map50_95 (mean ± std) | trainable params |" in table
    assert "| lc-learnable@8 | 2 | 0.5500 ± 0.0707 | 0.4500 ± 0.0707 | 1 |" in table
    assert "EMA: map50_95 is of the EMA weights, raw_map50_95 of the trained (raw) weights; both are in the table." in table
    assert "not the EMA of its combined filters W' = P·W" in table
    assert "Conversion scope: backbone+neck (every variant)" in table
    records = [_ema_record(v, 0, {"top1": 0.7, "ema_top1_best": 0.72}, "model", "all") for v in ("learnable", "lc-frozen@8")]
    table = markdown_table(summarize(records, "top1", True))
    assert "| top1 (mean ± std) | ema_top1_best (mean ± std) |" in table
    assert "EMA: top1 is of the trained (raw) weights, ema_top1_best of the EMA weights" in table
    assert "W' = P·W" not in table  # no lc-learnable variant: the averages are exact
    records = [_ema_record("frozen", 0, {"dice": 0.7}, "model", "encoder+decoder")]
    table = markdown_table(summarize(records, "dice", True))
    assert "EMA" not in table and "| dice (mean ± std) | trainable params |" in table
# ---- the fp32 math mode (issue 21, item 3): explicit per cell, kept through evaluation, recorded ----------------

def _paper_recipes() -> list[Path]:
    import yaml

    experiments = yaml.safe_load((Path(__file__).parents[1] / "lcdense" / "paper" / "experiments.yaml").read_text())
    found = set()

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "recipe" and isinstance(value, str) and value.endswith(".yaml") and "tiny" not in value:
                    found.add(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(experiments)
    return sorted(Path(__file__).parents[1] / p for p in found)


def test_every_paper_recipe_turns_tf32_off_explicitly():
    from lcdense.engine.config import RUN_DEFAULTS, load_yaml

    recipes = _paper_recipes()
    assert len(recipes) >= 7 and any("detection" in str(p) for p in recipes) and any("segmentation" in str(p) for p in recipes)
    for path in recipes:
        assert load_yaml(path)["train"]["tf32"] is False, path
    assert RUN_DEFAULTS["train"] == {"tf32": False}  # the default for every task, downstream included


@pytest.mark.parametrize("tf32", [False, True])
def test_set_fp32_math_sets_torch_explicitly_and_reads_it_back(tf32, monkeypatch):
    from lcdense import fp32_math, set_fp32_math

    value = "tf32" if tf32 else "ieee"
    try:
        assert set_fp32_math(torch.device("cpu"), tf32) == "ieee"  # no TF32 units on a CPU
        assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision,
                torch.backends.cudnn.rnn.fp32_precision) == (value, value, value)
        # a GPU with TF32 units (Ampere and later) reads the mode back; an older one runs IEEE fp32 whatever is set
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
        assert fp32_math(torch.device("cuda:0")) == value
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
        assert fp32_math(torch.device("cuda:0")) == "ieee"
    finally:
        set_fp32_math(torch.device("cpu"), False)


def test_the_record_names_fp32_work_on_tf32_units_tf32():
    from lcdense import Provenance

    p = Provenance()
    p.ran_in("tf32")
    p.trained_in("fp32")
    p.eval_precision = "fp32"
    assert p.to_dict("kaiming_uniform")["precision"] == {"train": "tf32", "eval": "tf32", "fp32_math": "tf32",
                                                         "epoch_eval": None}
    p.ran_in("ieee")  # changed mid-cell (a library, a resume on another setting): both are said
    assert p.to_dict("kaiming_uniform")["precision"]["fp32_math"] == "tf32+ieee"
    q = Provenance()
    q.restore(p.state())
    assert q.fp32_math == "tf32+ieee"


@pytest.mark.parametrize("tf32", [False, True])
def test_training_and_evaluation_run_in_the_configured_math_mode(toy_installed, tmp_path, monkeypatch, tf32):
    from lcdense.engine.task import get_task

    seen: dict[str, list[str]] = {"fit": [], "evaluate": []}
    toy = type(get_task("toy"))
    fit, evaluate = toy.fit, toy.evaluate

    def spy(name, method):
        def wrapped(self, *args):
            seen[name].append(torch.backends.cudnn.conv.fp32_precision + "/" + torch.backends.cuda.matmul.fp32_precision)
            return method(self, *args)
        return wrapped

    monkeypatch.setattr(toy, "fit", spy("fit", fit))
    monkeypatch.setattr(toy, "evaluate", spy("evaluate", evaluate))
    # a previous cell (or torch's default: cuDNN convolutions in TF32) left the other mode behind
    from lcdense import set_fp32_math

    set_fp32_math(torch.device("cpu"), not tf32)
    try:
        assert main(["run", "--task", "toy", "--variants", "learnable", "--epochs", "1", "--set", f"train.tf32={str(tf32).lower()}",
                     "--out", str(tmp_path), "--quiet", "--no-analysis"]) == 0
    finally:
        set_fp32_math(torch.device("cpu"), False)
    want = "tf32/tf32" if tf32 else "ieee/ieee"
    assert seen == {"fit": [want], "evaluate": [want]}
    record = _cell(_run_dir(tmp_path), "learnable__seed0")
    assert record["provenance"]["precision"]["fp32_math"] == "ieee"  # CPU: no TF32 units, whatever is allowed
