"""Fault injection: `recur data build` killed with SIGKILL at random points, as a subprocess.

After every kill: each shard file present is whole (shards are written atomically); a manifest present
means a finished build (it is written last, and removed first when a build starts over); otherwise every
reader refuses the folder (`open_data`, even under data.trust_unmanifested), naming the build command.
A re-run then finishes with the bytes of an uninterrupted build: after a chain of kills in one folder,
after a killed --force rebuild, and after a killed build that was asked for other inputs.

The kill points are drawn from a seeded generator and named in every failure: either a delay after the
build's first output, within the length of a whole build, or the moment the k-th output (a document
file, the tokenizer, a shard, the manifest) appears. Where a delay lands depends on the machine's speed;
the invariants hold wherever it lands.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recur_lib.config import Config
from recur_lib.data import open_data
from recur_lib.data.corpus.build import is_finished
from recur_lib.data.dataset import DataError
from recur_lib.data.shards import ShardError, read_header

from conftest import TINY_VOCAB, make_text_dir

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261125
POLL_S = 0.002


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _command(out: Path, texts: Path, *extra: str, val_permille: int = 200) -> list[str]:
    return [sys.executable, "-m", "recur_lib.cli", "data", "build", "--out", str(out), "--text-dir", str(texts),
            "--vocab-size", str(TINY_VOCAB), "--val-permille", str(val_permille),
            "--shard-tokens", "3000", *extra]  # ~25 train shards: many points to be killed at


def _outputs(out: Path) -> dict[str, tuple[int, int]]:
    """Every file of the build with (inode, mtime): an atomic write shows as a new inode."""
    seen = {}
    for folder in (out, out / "docs"):
        try:
            with os.scandir(folder) as it:
                for e in it:
                    if e.is_file() and not e.name.endswith(".tmp"):
                        st = e.stat()
                        seen[f"{folder.name}/{e.name}"] = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            pass
    return seen


def _changed(before: dict[str, tuple[int, int]], now: dict[str, tuple[int, int]]) -> int:
    return sum(1 for k, v in now.items() if before.get(k) != v)


def run_build(cmd: list[str], out: Path, log: Path, kill: tuple[str, float] | None = None) -> tuple[bool, int, float]:
    """Run a build; with kill = ("delay", s) or ("event", k), SIGKILL it s seconds after its first output
    or when the k-th output appears. Returns (killed, outputs seen, seconds from the first output to the
    last)."""
    before = _outputs(out)
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT)
    t_start = t_last = None
    events = 0
    while proc.poll() is None:
        now = _outputs(out)
        seen, events = events, _changed(before, now)
        if events > seen:
            t_last = time.monotonic()
            t_start = t_start or t_last
        if kill is not None and (
                (kill[0] == "delay" and t_start is not None and time.monotonic() - t_start >= kill[1])
                or (kill[0] == "event" and events >= kill[1])):
            proc.kill()  # SIGKILL: no cleanup runs
            proc.wait()
            return True, events, 0.0
        time.sleep(POLL_S)
    assert proc.returncode == 0, f"build failed (rc {proc.returncode}):\n{log.read_text()[-3000:]}"
    events = _changed(before, _outputs(out))
    return False, events, (t_last - t_start) if t_start is not None and t_last is not None else 0.0


def cfg_for(out: Path, trust: bool = False) -> Config:
    return Config.from_name("smoke", {"data.root": str(out), "model.vocab_size": TINY_VOCAB,
                                      "data.trust_unmanifested": trust})


def shard_hashes(out: Path) -> dict[str, str]:
    m = json.loads((out / "manifest.json").read_text())
    files = {s["file"]: s["sha256"] for split in m["splits"].values() for s in split["shards"]}
    return {**files, m["tokenizer"]["file"]: m["tokenizer"]["sha256"]}


def check_invariants(out: Path, where: str, reference: dict[str, str] | None) -> None:
    for f in out.glob("*.bin"):
        read_header(f)  # raises on a half-written shard
    if (out / "manifest.json").exists():
        assert is_finished(out), f"{where}: a manifest describes an unfinished folder"
        if reference is not None:
            assert shard_hashes(out) == reference, f"{where}: a finished build with other bytes"
        open_data(cfg_for(out))
        return
    for trust in (False, True):
        expected = DataError if (out / "docs").is_dir() else (DataError, ShardError)
        with pytest.raises(expected) as e:
            open_data(cfg_for(out, trust))
        assert "recur data build" in str(e.value), f"{where}: {e.value}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_text_dir(tmp_path_factory.mktemp("fault_texts"), n_docs=120, seed=7)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> tuple[Path, dict[str, str], int, float]:
    """An uninterrupted build through the same command: its folder, hashes, outputs written, and seconds
    from its start to its last output (the window the kills are drawn from)."""
    out = tmp_path_factory.mktemp("fault_ref") / "d"
    _, events, seconds = run_build(_command(out, corpus), out, out.parent / "log.txt")
    assert is_finished(out) and events > 20 and seconds > 0
    return out, shard_hashes(out), events, seconds


def draw_kill(rng: random.Random, events: int, seconds: float) -> tuple[str, float]:
    """A kill point inside a whole build; a resumed build reuses finished stages and is shorter, so the
    later points of the range may come after it has finished (then the next chain begins)."""
    if rng.random() < 0.5:
        return ("delay", round(rng.uniform(0.0, 0.8 * seconds), 4))
    return ("event", rng.randint(1, events - 3))


def test_killed_repeatedly_then_finished_matches_the_uninterrupted_build(tmp_path: Path, corpus: Path,
                                                                         reference) -> None:
    """Chains of kills in one folder, each attempt resuming what the last left, until one finishes."""
    _, ref_hashes, events, seconds = reference
    rng = random.Random(SEED)
    landed, history = 0, []
    for chain in range(8):
        out = tmp_path / f"chain{chain}"
        for _ in range(4):
            kill = draw_kill(rng, events, seconds)
            killed, _, _ = run_build(_command(out, corpus), out, tmp_path / "log.txt", kill)
            interrupted = killed and not is_finished(out)  # a kill after the manifest interrupts nothing
            history.append((chain, kill, interrupted))
            check_invariants(out, f"kills {history}", ref_hashes)
            landed += interrupted
            if not interrupted:
                break
        run_build(_command(out, corpus), out, tmp_path / "log.txt")
        assert is_finished(out) and shard_hashes(out) == ref_hashes, history
        if landed >= 5:
            break
    assert landed >= 3, f"the build outran most kills: {history}"


def test_a_killed_force_rebuild_is_refused_then_finishes(tmp_path: Path, corpus: Path, reference) -> None:
    ref_dir, ref_hashes, events, seconds = reference
    rng = random.Random(SEED + 1)
    for attempt, kill in enumerate([("event", rng.randint(1, events // 2)), draw_kill(rng, events, seconds)]):
        out = tmp_path / f"f{attempt}"
        shutil.copytree(ref_dir, out)
        killed, _, _ = run_build(_command(out, corpus, "--force"), out, tmp_path / "log.txt", kill)
        check_invariants(out, f"--force killed at {kill} (killed: {killed})", ref_hashes)
        run_build(_command(out, corpus), out, tmp_path / "log.txt")
        assert shard_hashes(out) == ref_hashes, kill


def test_a_killed_build_with_other_inputs_then_the_original_ones(tmp_path: Path, corpus: Path, reference) -> None:
    """Killed while rebuilding a finished folder for another split, then asked for the original inputs:
    nothing of the other build may survive into the result."""
    ref_dir, ref_hashes, events, _ = reference
    rng = random.Random(SEED + 2)
    out = tmp_path / "d"
    shutil.copytree(ref_dir, out)
    other = _command(out, corpus, val_permille=100)
    kill = ("event", rng.randint(8, events // 2))  # among the shards, after the other split's documents and tokenizer
    killed, _, _ = run_build(other, out, tmp_path / "log.txt", kill)
    assert killed and not is_finished(out), f"the build with other inputs was not under way at {kill}"
    check_invariants(out, f"other inputs killed at {kill}", None)
    run_build(_command(out, corpus), out, tmp_path / "log.txt")
    assert shard_hashes(out) == ref_hashes, kill
