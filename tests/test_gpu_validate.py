"""scripts/gpu_validate.py, the first GPU's checklist (issue 21), runs on the CPU at a tiny size: its checks
pass here, and it writes its JSON and its table. The default suite runs the checks of its own (filters,
fold, one task, the plan against a real step, the collectives); the embedded runs of detection,
segmentation and the timm recipe (which their own tests cover in the default suite) and the repeated
cell run here under ``slow``."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_validate.py"
CHEAP = ["filters", "fold", "task:classification", "dry-run", "collectives"]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_validate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _validate(tmp_path_factory, only: list[str] | None):
    module, out = _load(), tmp_path_factory.mktemp("validate")
    status = module.main(["--device", "cpu", "--tiny", "--out", str(out), *(["--only", ",".join(only)] if only else [])])
    return status, json.loads((out / "gpu_validate.json").read_text()), (out / "gpu_validate.md").read_text(), module


@pytest.fixture(scope="module")
def validation(tmp_path_factory):
    return _validate(tmp_path_factory, CHEAP)


def _passed(status, report, table, names):
    failed = {k: v.get("traceback", v["summary"]) for k, v in report["checks"].items() if not v["passed"]}
    assert status == 0 and report["passed"], failed
    assert list(report["checks"]) == names
    assert report["size"] == "tiny" and report["environment"]["device"] == "cpu"
    for name in names:
        assert f"| {name} | ok |" in table


def test_the_checks_run_and_pass_on_the_cpu(validation):
    status, report, table, module = validation
    assert set(CHEAP) < set(module.CHECKS)
    _passed(status, report, table, CHEAP)


def test_the_numbers_it_reports(validation):
    checks = validation[1]["checks"]
    assert all(r["equal"] for r in checks["filters"]["inits"].values()) and len(checks["filters"]["inits"]) == 14
    assert checks["fold"]["fp64_fold_rel_error"] < 1e-10 and 0 < checks["fold"]["bf16_fold_rel_error"] < 0.1
    (cell,) = checks["task:classification"]["cells"]
    assert cell["digest_unchanged"] and cell["precision"]["fp32_math"] == "ieee"
    assert 0.5 < cell["measured_over_predicted"] < 1.5
    dry = checks["dry-run"]
    assert 0.5 < dry["measured_over_predicted"] < 1.5
    assert dry["refusal"].startswith("cell lc-learnable@1000000__seed0 needs about") and "\n" not in dry["refusal"]
    assert checks["collectives"]["backend"] == "gloo" and all(checks["collectives"]["collectives"].values())


def test_an_unknown_check_is_one_line(validation, capsys):
    module = validation[3]
    assert module.main(["--only", "nope"]) == 2
    assert capsys.readouterr().err.strip().startswith("gpu_validate: unknown check(s) nope; known: filters, fold")


@pytest.mark.slow
def test_every_check_at_a_tiny_size(tmp_path_factory):
    status, report, table, module = _validate(tmp_path_factory, None)
    _passed(status, report, table, list(module.CHECKS))
    checks = report["checks"]
    for task in ("detection", "segmentation"):
        (cell,) = checks[f"task:{task}"]["cells"]
        assert cell["digest_unchanged"] and cell["precision"]["fp32_math"] == "ieee" and cell["peak_memory_mb"] > 0
    assert checks["timm"]["training"]["channels_last"] is True and checks["timm"]["training"]["ema"]
    assert checks["repeat"]["bitwise_identical"] is True  # the CPU is deterministic: on a GPU this is the measurement
