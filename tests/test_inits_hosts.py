"""Seeded filters are bitwise identical across CPU capabilities (issue 21, item 7).

CPU ``torch.randn`` draws differently under AVX2/AVX512 (vectorised) and without them (scalar,
e.g. aarch64 nodes or ``ATEN_CPU_CAPABILITY=default``); a cell resumed on another node type then
failed its digest check. Every init is drawn here in this process (the machine's best capability)
and in a subprocess forced to the scalar path, and the digests must be equal.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lcdense.core.inits import INITS, seeded_filters

SHAPES = ((64, 16, 3, 3), (7, 3, 5, 5), (48, 1, 3, 3))  # > 16 elements (randn's vectorised threshold), odd counts



def filter_digests(shapes: list[list[int]]) -> dict[str, str]:
    """sha256 of every init's filters, float32 and float64, for each of ``shapes``, and the CPU capability."""
    out = {"capability": torch.backends.cpu.get_cpu_capability()}
    for init in INITS:
        for dtype in (torch.float32, torch.float64):
            for shape in shapes:
                w = seeded_filters(init, shape, seed=3, name="layer1.0.conv1", dtype=dtype)
                out[f"{init}/{dtype}/{tuple(shape)}"] = hashlib.sha256(w.numpy().tobytes()).hexdigest()
    return out


SCALAR = """
import json, sys
from tests.test_inits_hosts import filter_digests
print(json.dumps(filter_digests(json.loads(sys.argv[1]))))
"""


def test_every_init_is_bitwise_identical_under_the_scalar_and_the_best_cpu_path():
    fastest = filter_digests([list(s) for s in SHAPES])  # this process: the machine's best capability
    best = fastest.pop("capability")
    if best == "DEFAULT":
        pytest.skip("this process runs the default CPU capability (no AVX2/AVX512 here, or ATEN_CPU_CAPABILITY set): "
                    "nothing to compare")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    done = subprocess.run([sys.executable, "-c", SCALAR, json.dumps(SHAPES)], env=env, capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    scalar = json.loads(done.stdout)
    assert scalar.pop("capability") == "DEFAULT"
    assert len(scalar) == len(INITS) * 2 * len(SHAPES)
    differ = sorted(k for k in scalar if scalar[k] != fastest[k])
    assert not differ, f"filters differ between {best} and the scalar CPU path: {differ}"


def test_exact_log_matches_the_logarithm():
    from lcdense.core.inits import exact_log

    x = torch.cat([torch.rand(10_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 1e-12,
                   torch.tensor([1.0, 0.5, 2.0, 1e-300, 0.7071067811865476], dtype=torch.float64)])
    got = exact_log(x)
    want = torch.tensor([math.log(v) for v in x.tolist()], dtype=torch.float64)
    assert float(((got - want).abs() / want.abs().clamp(min=1e-300)).max()) < 1e-15  # a few units in the last place
    assert float(got[-5]) == 0.0


def test_normal_samples_do_not_depend_on_the_chunk_size(monkeypatch):
    from lcdense.core.inits import standard_normal

    whole = standard_normal(5_001, torch.Generator().manual_seed(7), dtype=torch.float32)
    import lcdense.core.inits as inits

    monkeypatch.setattr(inits, "_CHUNK", 100)
    assert torch.equal(whole, standard_normal(5_001, torch.Generator().manual_seed(7), dtype=torch.float32))


def test_normal_inits_have_the_target_std():
    w = seeded_filters("kaiming_normal", (256, 64, 3, 3), seed=0, name="x", dtype=torch.float64)
    assert float(w.std()) == pytest.approx(1 / math.sqrt(3 * 64 * 9), rel=0.01)
    assert abs(float(w.mean())) < 3e-4
    # kurtosis of a normal is 3 (uniform's is 1.8): the samples are normal, not just scaled
    z = (w - w.mean()) / w.std()
    assert float((z**4).mean()) == pytest.approx(3.0, abs=0.05)
