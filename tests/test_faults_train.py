"""Fault injection: kill -9 a `recur train` process at random points (while it starts, between and
inside steps, while it writes a checkpoint, in its final evaluation), resume it each time, and check
what a crash may and may not do: nothing finished is lost, nothing partial is used, and the resumed
run computes bitwise what an uninterrupted run does.

The kill points are drawn from RECUR_FAULT_SEED (default fixed); a failure prints the plan it ran.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from recur_lib import Config
from recur_lib.rundir import RunLock
from recur_lib.train import train

from conftest import TINY_VOCAB

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="kill -9 and flock are POSIX")

ITERATIONS = 36
CKPT_EVERY = 3
# Every piece of state a checkpoint carries: per-loop LoRA on Muon, EMA and SWA, late and noisy QAT
# (random draws), clipping, LR warmup and warmdown, validation and update-norm records.
OVER = {"model.loop_lora_rank": 2, "model.loop_lora_form": "matrices", "optim.lora_optimizer": "muon",
        "train.ema_decay": 0.9, "train.swa_start_frac": 0.5, "train.swa_every": 2, "quant.qat_bits": 6,
        "quant.qat_start_frac": 0.5, "quant.noisy_qat_bits": 6, "train.grad_clip": 1.0, "train.lr_warmup_steps": 2,
        "train.warmdown_iters": 6, "train.log_every": 6, "train.val_every": 12, "train.ckpt_every": CKPT_EVERY}
SEED = int(os.environ.get("RECUR_FAULT_SEED", "1729"))
# Where each kill lands, in order; the last run is left to finish.
PLAN = ("startup", "step", "checkpoint", "step", "final")


def cfg_for(data: Path, runs: Path, name: str) -> Config:
    return Config.from_name("smoke", {"data.root": str(data), "model.vocab_size": TINY_VOCAB, "run.out_dir": str(runs),
                                      "run.name": name, "train.iterations": ITERATIONS, **OVER})


def records(run_dir: Path) -> list[dict[str, Any]]:
    """Complete metrics records (a torn last line is skipped), without their timings."""
    out = []
    path = run_dir / "metrics.jsonl"
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        for timing in ("time", "seconds"):
            rec.pop(timing, None)
        out.append(rec)
    return out


def ckpt_step(run_dir: Path) -> int:
    path = run_dir / "ckpt.pt"
    return torch.load(path, weights_only=True)["step"] if path.exists() else 0


def wait_for(cond, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Poll cond until it holds (True) or the process ended (False)."""
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            return False
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for a kill point")
        time.sleep(0.0005)
    return True


def kill_at(kind: str, proc: subprocess.Popen, run_dir: Path, rng: random.Random) -> str:
    """Wait for the kill point, then SIGKILL; returns what happened, for the failure message."""
    if kind == "startup":  # importing, locking the folder, loading data, building the model
        time.sleep(rng.uniform(0.2, 2.5))
        where = "startup"
    elif kind == "step":
        target = rng.randint(min(ckpt_step(run_dir) + 1, ITERATIONS - 1), ITERATIONS - 1)
        wait_for(lambda: max((r["step"] for r in records(run_dir) if "train_loss" in r), default=0) >= target, proc)
        time.sleep(rng.uniform(0.0, 0.03))
        where = f"after step {target} + a few ms"
    elif kind == "checkpoint":
        hit = wait_for(lambda: (run_dir / "ckpt.pt.tmp").exists(), proc)
        where = "inside a checkpoint write" if hit else "at the end (no checkpoint write caught)"
    else:  # final validation, model.pt, summary.json
        wait_for(lambda: any(r.get("step") == ITERATIONS and "train_loss" in r for r in records(run_dir)), proc)
        time.sleep(rng.uniform(0.0, 0.3))
        where = "after the last step"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return f"{kind}: {where} (rc {proc.returncode})"


def check_crash_residue(run_dir: Path, ref: list[dict[str, Any]], history: list[str]) -> None:
    """What a kill -9 may leave: a torn metrics line, lines past the checkpoint, a ckpt.pt.tmp. What it
    may not: an unreadable ckpt.pt, summary.json or model.pt, a lost finished step, a held lock."""
    if not run_dir.exists():
        return
    RunLock.acquire(run_dir).release()  # the kernel dropped the dead process's lock
    step = ckpt_step(run_dir)  # loads as data: whole
    assert step % CKPT_EVERY == 0 or step == ITERATIONS, history
    by_step = {(r["step"], "final" in r): r for r in ref}
    have = records(run_dir)
    for rec in have:  # every complete line, kept or about to be trimmed, is what the straight run logged
        assert rec == by_step[(rec["step"], "final" in rec)], (history, rec)
    done = {r["step"] for r in have if "train_loss" in r}
    assert set(range(1, step + 1)) <= done, (history, step, sorted(done))  # nothing checkpointed is missing
    for name in ("summary.json", "config.json"):
        if (run_dir / name).exists():
            json.loads((run_dir / name).read_text())
    if (run_dir / "model.pt").exists():
        torch.load(run_dir / "model.pt", weights_only=True)


def test_kill_9_at_random_points_then_resume_is_bitwise(tiny_data: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the jobs below (OMP_NUM_THREADS=1): same kernels, same bits
    try:
        straight = train(cfg_for(tiny_data, tmp_path, "straight"))
    finally:
        torch.set_num_threads(threads)
    ref = records(straight.run_dir)
    cfg = cfg_for(tiny_data, tmp_path, "victim")
    cfg.save(tmp_path / "victim.json")
    run_dir = tmp_path / "victim"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "recur_lib.cli", "train", "--config", str(tmp_path / "victim.json"), "--reuse"]
    rng = random.Random(SEED)
    history: list[str] = [f"seed {SEED}"]
    for n, kind in enumerate((*PLAN, None)):
        with open(tmp_path / f"job{n}.log", "w") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
            try:
                if kind is None:
                    rc = proc.wait(180)
                    assert rc == 0, (history, (tmp_path / f"job{n}.log").read_text()[-3000:])
                    break
                history.append(kill_at(kind, proc, run_dir, rng))
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        check_crash_residue(run_dir, ref, history)
        if kind == "checkpoint" and (run_dir / "ckpt.pt").exists() and not (run_dir / "ckpt.pt.tmp").exists():
            # the poll missed the write: leave exactly what a kill inside it leaves, half a new checkpoint
            data = (run_dir / "ckpt.pt").read_bytes()
            (run_dir / "ckpt.pt.tmp").write_bytes(data[: len(data) // 2])
        if kind == "step" and (run_dir / "metrics.jsonl").exists():
            # and what a kill inside a metrics append leaves, a torn line
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write('{"step": 999, "train_lo')

    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "finished" and s["steps"] == ITERATIONS, history
    for key in ("final_val_bpb", "final_train_loss", "best_val_bpb", "loss_peak_excess", "loss_spikes", "eval_weights"):
        assert s[key] == straight.summary[key], (history, key)
    assert records(run_dir) == ref, history  # every step once, every value bitwise
    a = torch.load(straight.run_dir / "model.pt", weights_only=True)
    b = torch.load(run_dir / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), history
    assert "resumed from step" in (run_dir / "train.log").read_text(), history
