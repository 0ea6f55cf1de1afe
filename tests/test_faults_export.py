"""Fault injection: an export killed with SIGKILL at any point leaves the previous artifact intact and
loadable, and no partial file that a loader accepts.

Each trial is a fresh process that exports a trained-like model over a previous artifact and is killed:
either by itself at its K-th executed line of recur_lib's export/quant/paths code (every line of
`atomic_write`, where a kill matters most, and random lines elsewhere), or by this process after a random
delay. Everything left in the folder is then loaded: the target must hold the old weights or the new ones,
and any other file must be refused or be the complete new artifact (killed between fsync and rename).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from recur_lib import Config
from recur_lib.export import ArtifactError, export_artifact, read_artifact

from test_export import trained_like

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = {"quant.export_bits": 6}

CHILD = r"""
import json, os, signal, sys, torch
from recur_lib import Config, build_model
from recur_lib.export import export_artifact

path, mode, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = Config.from_name("smoke", json.loads(sys.argv[4]))
torch.manual_seed(1)  # as test_export.trained_like(cfg, seed=1)
m = build_model(cfg)
with torch.no_grad():
    for p in m.parameters():
        p.add_(torch.randn_like(p) * 0.05)
m.eval()
pkg = os.path.dirname(sys.modules["recur_lib.export"].__file__)
watched = {os.path.join(pkg, f) for f in ("export.py", "quant.py", "paths.py")}
events = [0]
in_write = []

def local(frame, event, arg):
    if event == "line":
        events[0] += 1
        if frame.f_code.co_name == "atomic_write":
            in_write.append(events[0])
        if events[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
    return local

if mode == "time":
    print("ready", flush=True)
else:
    sys.settrace(lambda frame, event, arg: local if frame.f_code.co_filename in watched else None)
export_artifact(m, cfg, path)
sys.settrace(None)
print(json.dumps({"events": events[0], "in_write": in_write}), flush=True)
"""


def child(path: Path, mode: str, k: int = 0) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(path), mode, str(k), json.dumps(OVERRIDES)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The previous artifact (seed 0) and, for comparison, the one the killed exports are writing (seed 1)."""
    d = tmp_path_factory.mktemp("ref")
    cfg = Config.from_name("smoke", OVERRIDES)
    export_artifact(trained_like(cfg, seed=0), cfg, d / "old.rgolf")
    export_artifact(trained_like(cfg, seed=1), cfg, d / "new.rgolf")
    return {"old_bytes": (d / "old.rgolf").read_bytes(), "old": read_artifact(d / "old.rgolf")[1],
            "new_bytes": (d / "new.rgolf").read_bytes(), "new": read_artifact(d / "new.rgolf")[1]}


def test_a_killed_export_never_costs_the_previous_artifact(tmp_path: Path, artifacts: dict) -> None:
    count_dir = tmp_path / "count"
    count_dir.mkdir()
    (count_dir / "model.rgolf").write_bytes(artifacts["old_bytes"])
    out, err = child(count_dir / "model.rgolf", "count", 0).communicate(timeout=120)
    assert out, err[-2000:]
    trace = json.loads(out.strip().splitlines()[-1])
    # the uninterrupted export wrote exactly the reference: same model, same bytes
    assert (count_dir / "model.rgolf").read_bytes() == artifacts["new_bytes"]
    writes = trace["in_write"]
    assert 5 <= len(writes) < 40 and writes[-1] < trace["events"]
    rng = random.Random(0)
    trials = [("line", k) for k in writes + [writes[-1] + 1]]                 # every line of the write
    trials += [("line", rng.randrange(1, writes[0])) for _ in range(5)]       # anywhere in quantize/pack/compress
    trials += [("time", i) for i in range(4)]  # i-th of 4 delays spread over the export's ~40 ms

    def run(i: int, mode: str, k: int) -> tuple[str, int, Path, int]:
        d = tmp_path / f"trial{i}"
        d.mkdir()
        (d / "model.rgolf").write_bytes(artifacts["old_bytes"])
        p = child(d / "model.rgolf", mode, k)
        if mode == "time":  # ready = imported and built; then the export takes ~40 ms, the exit ~300 ms
            p.stdout.readline()
            time.sleep(0.01 * (k + rng.random()))
            p.send_signal(signal.SIGKILL)
        p.communicate(timeout=120)
        return mode, k, d, p.returncode

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda a: run(*a), [(i, *t) for i, t in enumerate(trials)]))

    outcomes = {"old": 0, "new": 0, "leftover": 0}
    for mode, k, d, rc in results:
        where = f"{mode} kill at {k}: {sorted(p.name for p in d.iterdir())}"
        if mode == "line":
            assert rc == -signal.SIGKILL, where
        _, state = read_artifact(d / "model.rgolf")  # the target always loads...
        kept = same(state, artifacts["old"])
        assert kept or same(state, artifacts["new"]), where  # ...with the old weights or the new ones
        outcomes["old" if kept else "new"] += 1
        for other in d.iterdir():
            if other.name == "model.rgolf":
                continue
            outcomes["leftover"] += 1
            try:
                _, left = read_artifact(other)
            except ArtifactError:
                continue
            assert same(left, artifacts["new"]), f"{where}: {other.name} loads but is not the complete export"
    # the trials did reach every outcome: kept, replaced, and killed with a .tmp on disk
    assert outcomes["old"] and outcomes["new"] and outcomes["leftover"], outcomes


def test_no_prefix_of_an_artifact_loads(tmp_path: Path, artifacts: dict) -> None:
    """What a write cut short leaves (any prefix of the file) is refused, whatever the cut."""
    raw = artifacts["new_bytes"]
    rng = random.Random(1)
    cuts = set(range(0, 200)) | set(range(len(raw) - 200, len(raw))) | set(rng.sample(range(len(raw)), 300))
    path = tmp_path / "cut.rgolf"
    for n in sorted(cuts):
        path.write_bytes(raw[:n])
        with pytest.raises(ArtifactError):
            read_artifact(path)
