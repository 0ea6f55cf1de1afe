"""Packaging: pyproject, constraints.txt and environment.yml agree; the setup pins torch==2.13.0."""
from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def pins(path: Path, pattern: str) -> dict[str, str]:
    out = {}
    for m in re.finditer(pattern, path.read_text(), re.M):
        out[m.group(1).lower()] = m.group(2)
    return out


def test_dependencies_agree_across_pyproject_constraints_and_environment() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    constraints = pins(ROOT / "constraints.txt", r"^([A-Za-z0-9_.-]+)==(\S+)\s*$")
    env = pins(ROOT / "environment.yml", r"^\s*-\s+([A-Za-z0-9_.-]+)==(\S+)\s*$")
    names = {r.name.lower() for r in reqs}
    assert names == set(constraints) == set(env), (names ^ set(constraints), names ^ set(env))
    for r in reqs:
        v = constraints[r.name.lower()]
        assert env[r.name.lower()] == v, f"{r.name}: environment.yml pins {env[r.name.lower()]}, constraints.txt {v}"
        assert r.specifier.contains(v), f"{r.name}=={v} does not satisfy pyproject's {r}"
    assert constraints["torch"] == "2.13.0"
    assert "python=3.11" in (ROOT / "environment.yml").read_text()


def test_runtime_dependencies_are_the_design_cards() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {Requirement(r).name.lower() for r in project["dependencies"]}
    assert {"torch", "jupyterlab", "papermill", "matplotlib", "pandas", "sentencepiece", "zstandard",
            "numpy", "tqdm"} <= names


def test_ci_and_ignores() -> None:
    ci = ROOT / ".ci" / "run"
    assert os.access(ci, os.X_OK) and "set -euo pipefail" in ci.read_text() and "make test" in ci.read_text()
    ignored = (ROOT / ".gitignore").read_text().split()
    assert {"/data/", "/runs/", ".venv"} <= set(ignored)
    # anchored at the root: an unanchored "data/" would also ignore the package recur_lib/data/
    assert "data/" not in ignored and "runs/" not in ignored
    assert "make test" in (ROOT / "README.md").read_text() and "make workbook" in (ROOT / "README.md").read_text()
