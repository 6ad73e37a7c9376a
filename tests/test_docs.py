"""The documentation: the README stays the front door, and the MkDocs site (docs/, mkdocs.yml, the API
reference generated from the docstrings) builds in strict mode, so a broken link, anchor or
reference fails the suite."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
QUICK_START = ['pip install ".[all]" && lcdense run --task detection --E 8',
               'pip install ".[all,test]" && python -m pytest -q']


def _section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_is_the_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    blocks = re.findall(r"```(\w*)\n(.*?)```", _section(text, "Quick start"), flags=re.S)
    assert blocks == [("bash", command + "\n") for command in QUICK_START]  # CI runs the second one verbatim


def test_readme_links_point_to_files():
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    relative = [link.split("#", 1)[0] for link in links if not re.match(r"[a-z]+:", link) and not link.startswith("#")]
    assert relative and [link for link in relative if not (ROOT / link).exists()] == []


def test_site_builds_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    for page in ["index.html", "install/index.html", "architecture/index.html", "plugins/index.html",
                 "reference/index.html", *(f"reference/{layer}/index.html" for layer in
                                           ("base", "core", "cost", "engine", "paper", "reporting", "api", "cli"))]:
        assert (site / page).is_file(), page
    core = (site / "reference" / "core" / "index.html").read_text()
    assert 'id="lcdense.core.convert.convert"' in core and 'id="lcdense.core.fold.fold"' in core  # rendered, not copied
    assert (site / "fve_layers_detection.png").is_file()

