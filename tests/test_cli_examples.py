"""The commands a user copies: every example in `recur --help` (and its subcommands' help) and in the
README's code blocks runs as written, in a copy of this project with a small default corpus in
data/default; the main command leaves `git status` clean; default run folders do not collide; a
closed pipe ends a command quietly.

Examples that take many minutes or the network are listed in SLOW with the test that covers them
instead; an example with a placeholder (`<run>`) is parsed, not run."""
from __future__ import annotations

import os
import random
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recur_lib.cli import build_parser
from recur_lib.data.corpus.build import BuildOptions, build

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Examples not run here, each with where it is covered (the prefix must still match an example: a stale
# entry fails test_slow_examples_still_exist).
SLOW = {
    "recur data build": "downloads Debian packages; the build itself: test_build.py and test_cli_build_and_audit",
    "recur workbook --preset quick": "about 15 minutes; the same code at smoke: the smoke example here, test_notebooks.py",
    "recur workbook --preset cpu": "hours; the same code at smoke: test_notebooks.py",
    "make ": "make workbook/test: what CI itself runs",
    "torchrun --standalone --nproc_per_node 8": "the GPU recipe: 8 GPUs and the FineWeb shards",
    "recur eval runs/seed-927-8xh100": "the GPU recipe's run",
}


def help_texts() -> list[str]:
    """The top-level help and every subcommand's, as argparse prints them."""
    parser = build_parser()
    texts = [parser.format_help()]
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if isinstance(action, __import__("argparse")._SubParsersAction):
                for sub in action.choices.values():
                    texts.append(sub.format_help())
                    stack.append(sub)
    return texts


def command_lines(text: str) -> list[str]:
    """Lines that are commands (`recur ...`, `torchrun ...`, `make ...`), comments stripped."""
    out = []
    for line in text.splitlines():
        cmd = re.split(r"\s+#\s", line.strip(), maxsplit=1)[0].strip()
        if re.match(r"(recur|torchrun|make) ", cmd):
            out.append(cmd)
    return out


def readme_examples() -> list[str]:
    blocks = re.findall(r"^ *```(?:bash|sh)?\n(.*?)^ *```", (ROOT / "README.md").read_text(), re.S | re.M)
    return [c for b in blocks for c in command_lines(b)]


def help_examples() -> list[str]:
    seen, out = set(), []
    for text in help_texts():
        for c in command_lines(text):
            if c not in seen:
                seen.add(c)
                out.append(c)
    return out


def slow(cmd: str) -> bool:
    return any(cmd.startswith(prefix) for prefix in SLOW)


def placeholder(cmd: str) -> bool:
    """`<run>`, or `$FW` (the GPU recipe's FineWeb settings)."""
    return "<" in cmd or "$" in cmd


def test_examples_are_found() -> None:
    h, r = help_examples(), readme_examples()
    assert len(h) >= 12 and any(c.startswith("recur runs ls") for c in h) and any(c.startswith("torchrun") for c in h)
    assert len(r) >= 8 and any(c.startswith("recur eval") for c in r)


def test_slow_examples_still_exist() -> None:
    examples = help_examples() + readme_examples()
    for prefix in SLOW:
        assert any(c.startswith(prefix) for c in examples), f"SLOW names {prefix!r}, which no example uses any more"


@pytest.mark.parametrize("cmd", [c for c in readme_examples() + help_examples() if c.startswith("recur")])
def test_every_recur_example_parses(cmd: str) -> None:
    """Every `recur` line of the help and the README is a command the parser accepts (placeholders
    replaced by a name)."""
    argv = shlex.split(re.sub(r"<[^>]+>", "x", re.sub(r"\$\w+", "", cmd.split(" > ")[0])))[1:]
    args = build_parser().parse_args(argv)
    assert callable(args.func)


# -- a copy of the project: examples run in it as a user runs them in a checkout -----------------------

def _corpus(text_dir: Path) -> Path:
    """Pseudo-words enough for the presets' 1024-piece tokenizer (the tests' tiny corpus has too few)."""
    rng = random.Random(0)
    syllables = [a + b for a in "bcdfghklmnprstvz" for b in "aeiou"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    text_dir.mkdir(parents=True)
    for i in range(80):
        sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 20))).capitalize() + "."
                     for _ in range(100)]
        (text_dir / f"doc_{i:03d}.txt").write_text(" ".join(sentences) + "\n")
    return text_dir


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's files (tracked, and untracked ones git does not ignore) in a fresh git repository,
    with a small corpus built into data/default where the presets look for it."""
    dest = tmp_path_factory.mktemp("checkout") / "recur-golf"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "copy"], cwd=dest, check=True)
    build(BuildOptions(out=dest / "data" / "default", text_dir=_corpus(tmp_path_factory.mktemp("texts") / "t"),
                       vocab_size=1024, val_permille=200, shard_tokens=50_000))
    return dest


def shell(project: Path, cmd: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """A command line as a user types it in the checkout: `recur` and `torchrun` from this venv, the
    checkout's recur_lib first on the path."""
    env = {**os.environ, "PYTHONPATH": str(project), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1"}
    env.pop("COLUMNS", None)
    return subprocess.run(["bash", "-c", cmd], cwd=project, env=env, capture_output=True, text=True, timeout=timeout)


def git_status(project: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=project, capture_output=True,
                          text=True, check=True).stdout


def test_the_main_command_leaves_the_repository_clean_and_talks(project: Path) -> None:
    """`make workbook` is `recur data audit` + `recur workbook --preset quick`; at smoke, one notebook,
    the same code: nothing tracked changes, nothing untracked appears, the executed notebook names no
    folder of this machine, and the terminal shows a line per run and no kernel transport warning."""
    assert git_status(project) == ""
    audit = shell(project, "recur data audit --preset smoke")
    assert audit.returncode == 0, audit.stderr
    r = shell(project, "recur workbook --preset smoke --notebooks 00_quickstart --no-html")
    assert r.returncode == 0, r.stdout + r.stderr
    assert git_status(project) == ""
    out = project / "results" / "local" / "smoke"
    executed = (out / "00_quickstart.ipynb").read_text()
    assert str(project) not in executed and "results/local/smoke" in executed
    assert "== 00_quickstart" in r.stdout and re.search(r"\] training in runs/workbook/", r.stdout)
    assert re.search(r"\] finished \d+ steps val_bpb \d\.\d{4}", r.stdout)
    assert "without encryption" not in r.stdout + r.stderr and "Parent appears to have exited" not in r.stderr


def run_examples(project: Path, examples: list[str]) -> dict[str, subprocess.CompletedProcess]:
    done = {}
    for cmd in examples:
        if slow(cmd) or placeholder(cmd) or cmd in done:
            continue
        r = shell(project, cmd)
        assert r.returncode == 0, f"`{cmd}` failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        done[cmd] = r
    return done


def test_every_help_example_runs_as_written(project: Path) -> None:
    done = run_examples(project, help_examples())
    assert len(done) >= 10
    trained = [c for c in done if c.startswith("recur train --preset smoke") and "run.name" not in c]
    assert "run folder runs/smoke-" in done[trained[0]].stdout
    assert (project / "runs" / "try1" / "summary.json").exists()
    ev = done["recur eval --preset smoke"]
    # progress while it works: a line per finished step, then the summary
    assert re.search(r"float +plain +val_bpb \d\.\d{4}", ev.stdout)
    assert re.search(r"quantized +plain +val_bpb \d\.\d{4}", ev.stdout)
    assert list((project / "runs").glob("cfg-*/summary.json"))  # the torchrun example's run, named from its file


def test_every_readme_example_runs_as_written(project: Path) -> None:
    """From a checkout without runs, as a reader meets the README (the help examples' runs moved aside:
    the same command on a finished run refuses to train it again, as it should)."""
    if (project / "runs").exists():
        (project / "runs").rename(project / "runs-help")
    done = run_examples(project, readme_examples())
    assert any(c.startswith("recur runs ls") for c in done) and any(c.startswith("recur config show") for c in done)


def test_default_run_folders_do_not_collide(project: Path) -> None:
    """Two presets, and one preset with another setting, train side by side; the same command again finds
    its own folder."""
    shutil.rmtree(project / "runs", ignore_errors=True)
    for cmd in ("recur train --preset smoke --set train.iterations=3",
                "recur train --preset smoke --set train.iterations=3 --set optim.matrix_lr=0.03",
                "recur train --preset seed-927-smoke --set train.iterations=3"):
        r = shell(project, cmd)
        assert r.returncode == 0, r.stderr
    folders = sorted(p.parent.name for p in (project / "runs").glob("*/summary.json"))
    assert len([f for f in folders if re.fullmatch(r"smoke-[0-9a-f]{10}", f)]) >= 2
    assert any(f.startswith("seed-927-smoke-") for f in folders)
    again = shell(project, "recur train --preset smoke --set train.iterations=3 --reuse")
    assert again.returncode == 0 and "reusing the finished run" in again.stdout
    ls = shell(project, "recur runs ls --status finished")
    assert ls.returncode == 0 and "seed-927-smoke-" in ls.stdout


def test_a_closed_pipe_ends_quietly(project: Path) -> None:
    r = shell(project, "recur config fields | head -n 2; echo \"status ${PIPESTATUS[0]}\"")
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and lines[-1] in ("status 0", "status 141"), r.stdout
    assert r.stderr == "", r.stderr
