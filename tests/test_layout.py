"""The house rules of the package layout, checked on the source: no import circle; the runner does not
import the trainer; the notebook layer imports the core and never the reverse; run ids hash exactly the
modules that change what a run computes."""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "recur_lib"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package modules it imports, at any depth of its code (function-level imports count)."""
    files = {module_name(f): f for f in package.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for name, f in files.items():
        pkg = name if f.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_graph_sees_the_imports() -> None:
    """The walker itself: the edges it must find (relative, nested-relative, function-level)."""
    g = import_graph()
    assert {"recur_lib.config", "recur_lib.rundir"} <= g["recur_lib.lab.runs"]
    assert "recur_lib.data.shards" in g["recur_lib.data.corpus.build"]
    assert "recur_lib.evaluate" in g["recur_lib.cli"]  # imported inside a command function


def test_no_import_circle() -> None:
    g = import_graph()
    circles = sorted(m for m in g if m in reachable(g, m))
    assert not circles, f"modules on an import circle: {circles}"


def test_the_runner_does_not_import_the_trainer() -> None:
    assert "recur_lib.train" not in reachable(import_graph(), "recur_lib.lab.runs")


def test_core_never_imports_the_notebook_layer_or_the_cli() -> None:
    g = import_graph()
    upper = {m for m in g if m.startswith("recur_lib.lab")} | {"recur_lib.cli"}
    core = set(g) - upper - {"recur_lib"}  # the package facade re-exports the lab lazily, by name
    wrong = {m: sorted(g[m] & upper) for m in core if g[m] & upper}
    assert not wrong, f"core modules importing the notebook layer or the CLI: {wrong}"


def test_importing_the_package_loads_no_notebook_dependency() -> None:
    """A training job imports recur_lib; pandas and matplotlib load only when the lab is used."""
    code = ("import sys, recur_lib, recur_lib.train, recur_lib.cli\n"
            "print('pandas' in sys.modules, 'matplotlib' in sys.modules)\n"
            "from recur_lib import sweep, plots\n"
            "print('pandas' in sys.modules, 'matplotlib' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False", "True", "True"]


def test_compute_files_cover_what_training_and_evaluation_import() -> None:
    """Every module a training job or an evaluation loads is either hashed into run ids or declared
    as not changing a number; a new module must be put in one of the two lists."""
    from recur_lib.lab.runs import COMPUTE_FILES, NOT_COMPUTING
    code = ("import sys, json\nimport recur_lib.cli, recur_lib.train, recur_lib.evaluate, recur_lib.export\n"
            "print(json.dumps(sorted(m.__file__ for n, m in list(sys.modules.items()) "
            "if n.startswith('recur_lib') and getattr(m, '__file__', None))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = {Path(f).resolve().relative_to(PACKAGE).as_posix() for f in json.loads(out.stdout)} - {"cli.py"}
    assert not set(COMPUTE_FILES) & set(NOT_COMPUTING)
    assert loaded - set(NOT_COMPUTING) == set(COMPUTE_FILES), sorted(loaded ^ (set(COMPUTE_FILES) | set(NOT_COMPUTING)))
    assert all((PACKAGE / f).exists() for f in COMPUTE_FILES + NOT_COMPUTING)


@pytest.mark.parametrize("edited, changes", [
    ("lab/ablations.py", False), ("lab/plots.py", False), ("lab/runs.py", False), ("cli.py", False),
    ("rundir.py", False), ("model/gpt.py", True), ("optim.py", True), ("quant.py", True), ("train.py", True),
    ("data/loader.py", True), ("export.py", True),
])
def test_code_version_follows_only_the_computing_modules(tmp_path: Path, edited: str, changes: bool) -> None:
    from recur_lib.lab.runs import code_version
    copy = tmp_path / "recur_lib"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_version(copy)
    assert before == code_version(PACKAGE)
    with open(copy / edited, "a") as f:
        f.write("\n_EDITED = 1\n")
    assert (code_version(copy) != before) == changes


def test_code_version_ignores_comments_docstrings_and_layout(tmp_path: Path) -> None:
    from recur_lib.lab.runs import code_version
    copy = tmp_path / "recur_lib"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_version(copy)
    src = (copy / "train.py").read_text()
    edited = src.replace('"""', '"""Reworded. ', 1) + "\n# a comment\n\n\n"
    edited = edited.replace("def _validate(job: Job) -> dict[str, float]:",
                            "def _validate(job: Job) -> dict[str, float]:\n    \"\"\"A new docstring.\"\"\"  # and a comment")
    assert edited != src and "A new docstring" in edited
    (copy / "train.py").write_text(edited)
    assert code_version(copy) == before
    (copy / "train.py").write_text(edited.replace("e.seq_len, e.batch_tokens", "e.batch_tokens, e.seq_len", 1))
    assert code_version(copy) != before  # the same words in another order compute something else


def test_readme_layout_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    missing = [f.relative_to(PACKAGE).as_posix() for f in sorted(PACKAGE.rglob("*.py"))
               if f.name != "__init__.py" and f.name not in layout]
    assert not missing, f"README Layout does not name {missing}"
    assert all(f"{d}/" in layout for d in ("data", "corpus", "model", "lab"))
