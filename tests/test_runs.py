"""The runner: content-addressed ids, reuse, resume, force, sweeps that record crashing, diverging
and invalid arms as rows while the other arms go on, and jobs that end with the runner."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recur_lib import Config
from recur_lib.lab.runs import Arm, evaluate_variants, launch, load_metrics, metric_by_step, run_id, summarize, sweep
from recur_lib.train import train

from conftest import TINY_VOCAB


def base(data: Path, **over) -> Config:
    return Config.from_name("smoke", {"data.root": str(data), "model.vocab_size": TINY_VOCAB, "train.iterations": 4,
                                      "run.name": "t", **over})


def test_run_id_is_content_addressed(tiny_data: Path) -> None:
    c = base(tiny_data)
    assert run_id(c) == run_id(c.override({"run.name": "other", "run.out_dir": "/elsewhere"}))
    assert run_id(c) != run_id(c.override({"run.seed": 1}))
    assert run_id(c) != run_id(c.override({"optim.matrix_lr": 0.03}))
    assert len(run_id(c)) == 10


def test_finished_run_is_reused_and_force_trains_again(tiny_data: Path, tmp_path: Path) -> None:
    first = launch(base(tiny_data), tmp_path, quiet=True)
    assert first.status == "finished" and not first.reused and first.eval is not None
    again = launch(base(tiny_data), tmp_path, quiet=True)
    assert again.reused and again.run_dir == first.run_dir and again.eval == first.eval
    forced = launch(base(tiny_data), tmp_path, force=True, quiet=True)
    assert not forced.reused and forced.status == "finished"
    assert list(tmp_path.glob(f"{first.run_dir.name}.replaced-*"))  # the old run was moved aside, not deleted
    assert forced.summary["final_val_bpb"] == first.summary["final_val_bpb"]


def test_unfinished_run_resumes(tiny_data: Path, tmp_path: Path) -> None:
    cfg = base(tiny_data, **{"train.iterations": 6})
    rid = run_id(cfg.override({"run.nproc": 1}))
    run_dir = tmp_path / f"t-{rid}"
    train(cfg.override({"run.out_dir": str(tmp_path), "run.name": run_dir.name}), run_dir, stop_at_step=3)
    rec = launch(cfg, tmp_path, quiet=True, evaluate=False)
    assert rec.status == "finished" and rec.run_dir == run_dir and not rec.reused
    steps = load_metrics(run_dir).dropna(subset=["train_loss"])["step"].tolist()
    assert steps == [1, 2, 3, 4, 5, 6]
    assert "resumed from step 3" in (run_dir / "train.log").read_text()


def test_resume_message_names_the_checkpoint_step_not_the_logged_one(tiny_data: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    cfg = base(tiny_data, **{"train.iterations": 6})
    run_dir = tmp_path / f"t-{run_id(cfg.override({'run.nproc': 1}))}"
    train(cfg.override({"run.out_dir": str(tmp_path), "run.name": run_dir.name}), run_dir, stop_at_step=3)
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "steps": 5}))  # steps logged after the checkpoint
    launch(cfg, tmp_path, quiet=True, evaluate=False)
    assert "resuming from step 3 in" in capsys.readouterr().out


def test_an_arm_with_the_same_content_under_another_name_reuses_the_finished_run(tiny_data: Path,
                                                                                 tmp_path: Path) -> None:
    first = launch(base(tiny_data), tmp_path, quiet=True, evaluate=False)
    twin = launch(base(tiny_data, **{"run.name": "t-1000steps"}), tmp_path, quiet=True, evaluate=False)
    assert twin.reused and twin.run_dir == first.run_dir
    assert not list(tmp_path.glob("t-1000steps-*"))
    other = launch(base(tiny_data, **{"run.name": "u", "run.seed": 1}), tmp_path, quiet=True, evaluate=False)
    assert not other.reused and other.run_dir.name.startswith("u-")


def test_sweep_records_crashing_diverging_and_invalid_arms(tiny_data: Path, tmp_path: Path) -> None:
    hot = {"optim.matrix_lr": 5.0, "optim.scalar_lr": 5.0, "optim.tied_embed_lr": 5.0,
           "train.diverge_loss": 10.0, "train.diverge_patience": 1, "train.iterations": 10}
    arms = {"ok": {}, "crash": {"data.root": str(tmp_path / "missing")}, "hot": hot, "invalid": {"model.dim": 3}}
    df = sweep(base(tiny_data), arms, seeds=[0, 1], runs_dir=tmp_path, quiet=True)
    status = df.groupby("arm")["status"].first().to_dict()
    assert status == {"ok": "finished", "crash": "failed", "hot": "diverged", "invalid": "invalid_config"}
    assert len(df) == 8 and df[df.arm == "ok"]["final_val_bpb"].notna().all()
    assert df[df.arm == "crash"]["error"].str.contains("data folder not found|exit code", regex=True).all()
    assert "model.dim = 3" in df[df.arm == "invalid"]["error"].iloc[0]
    s = summarize(df).set_index("arm")
    assert s.loc["ok", "count"] == 2 and s.loc["hot", "diverged"] == 2 and s.loc["crash", "failed"] == 2
    again = sweep(base(tiny_data), {"ok": {}}, seeds=[0, 1], runs_dir=tmp_path, quiet=True)
    assert again["reused"].all()


def test_grid_product_names_arms_and_parallel_runs_share_the_cores(tiny_data: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    df = sweep(base(tiny_data, **{"train.iterations": 2}), {"schedule.n_loops": [1, 2], "model.dim": [32]},
               seeds=[0], runs_dir=tmp_path, evaluate=False, quiet=True, parallel=2)
    assert df["arm"].tolist() == ["n_loops=1,dim=32", "n_loops=2,dim=32"]  # rows in job order
    assert (df["status"] == "finished").all()
    assert [json.loads((Path(d) / "summary.json").read_text())["threads"] for d in df["run_dir"]] == [1, 1]
    assert json.loads((Path(df["run_dir"][1]) / "config.json").read_text())["schedule"]["n_loops"] == 2


def test_arm_labels_become_columns_and_variants_evaluate_in_subprocesses(tiny_data: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """Labels travel from the arm to the sweep row and on to every variant row; a failing variant is a
    row with its status (the others still evaluate, two at a time); a saved evaluation is reused. Quiet,
    each evaluation prints one line, its log staying in the run folder."""
    arms = [Arm("narrow", {"model.dim": 32}, labels={"width": 32, "kind": "n"}),
            Arm("wide", {"model.dim": 64}, labels={"width": 64, "kind": "w"})]
    df = sweep(base(tiny_data, **{"train.iterations": 2}), arms, seeds=[0], runs_dir=tmp_path, evaluate=False, quiet=True)
    assert df[["arm", "width", "kind", "model.dim"]].values.tolist() == [["narrow", 32, "n", 32], ["wide", 64, "w", 64]]
    variants = [Arm("int6", {"quant.export_bits": 6}, labels={"bits": 6}),
                Arm("bad", {"quant.export_bits": 99}, labels={"bits": 99}),
                Arm("nodata", {"data.root": str(tmp_path / "missing")}, labels={"bits": 8})]
    capsys.readouterr()
    ev = evaluate_variants(df, variants, parallel=2, quiet=True)
    assert len(ev) == 6 and ev[["arm", "variant"]].values.tolist()[:3] == [["narrow", "int6"], ["narrow", "bad"],
                                                                          ["narrow", "nodata"]]
    status = ev.set_index(["arm", "variant"])["status"].to_dict()
    assert {k[1]: v for k, v in status.items()} == {"int6": "finished", "bad": "invalid_config", "nodata": "eval_failed"}
    ok = ev[ev["variant"] == "int6"]
    assert ok["width"].tolist() == [32, 64] and ok["bits"].eq(6).all() and ok["quant_gap"].notna().all()
    assert "quant.export_bits" in ev.loc[ev["variant"] == "bad", "error"].iloc[0]
    assert (Path(df["run_dir"][0]) / "int6.json").exists() and not (Path(df["run_dir"][0]) / "nodata.json").exists()
    saved = Path(df["run_dir"][0]) / "int6.json"
    mtime = saved.stat().st_mtime_ns
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 6 and sum("int6] val_bpb" in line for line in printed) == 2, printed
    assert sorted(line.split()[0] for line in printed) == [f"{i}/6" for i in range(1, 7)]  # the progress bar
    assert printed[-1].startswith("6/6 " + "█" * 12 + " [")
    assert any("nodata] eval_failed" in line and "stdout.log" in line for line in printed)
    again = evaluate_variants(df, variants[:1], quiet=True)
    assert again["quant_gap"].tolist() == ok["quant_gap"].tolist() and saved.stat().st_mtime_ns == mtime  # reused
    assert capsys.readouterr().out.count("(reused)") == 2


# -- a job ends with its runner ------------------------------------------------------------------------

RUNNER = """
import sys
from recur_lib import Config
from recur_lib.lab.runs import launch
launch(Config.load(sys.argv[1]), sys.argv[2], nproc=int(sys.argv[3]), evaluate=False, quiet=True)
"""


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    return kids


def _descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    """Running, and not a zombie (a reparented child may wait for a reaper that never comes)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_for(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _train_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    out = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "train_loss" in rec:
            out.append(rec["step"])
    return out


def _kill_runner_mid_run(cfg: Config, runs: Path, nproc: int, expect_jobs: int) -> Path:
    """Start a runner process that launches cfg, SIGKILL it once training is under way, and check that
    every process it started (the job; under torchrun, torchrun and its workers) ends within seconds.
    Returns the run folder."""
    cfg.save(runs / "cfg.json")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(runs / "cfg.json"), str(runs), str(nproc)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jobs: list[int] = []
    try:
        _wait_for(lambda: any(runs.glob("t-*/metrics.jsonl")) and
                  len(_train_steps(next(runs.glob("t-*")))) >= 3, 120, "the job's first steps")
        run_dir = next(runs.glob("t-*"))
        jobs = _descendants(runner.pid)
        assert len(jobs) >= expect_jobs, jobs
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        _wait_for(lambda: not any(_alive(p) for p in jobs), 30, f"the jobs {jobs} to end after their runner")
    finally:
        if runner.poll() is None:
            runner.kill()
        for p in jobs:  # nothing may outlive the test, whatever it found
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    return run_dir


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_job_ends_with_its_runner_and_the_rerun_resumes(tiny_data: Path, tmp_path: Path) -> None:
    """A notebook or sweep killed with SIGKILL: its training job gets SIGTERM, writes a checkpoint and
    ends; the rerun resumes, so every step is trained and logged exactly once."""
    cfg = base(tiny_data, **{"train.iterations": 100, "train.log_every": 50})
    run_dir = _kill_runner_mid_run(cfg, tmp_path, nproc=1, expect_jobs=1)
    s = json.loads((run_dir / "summary.json").read_text())
    assert (s["status"], s["reason"]) == ("interrupted", "SIGTERM") and s["steps"] < 100
    lines = len(_train_steps(run_dir))
    time.sleep(1.0)
    assert len(_train_steps(run_dir)) == lines  # nobody trains on
    rec = launch(cfg, tmp_path, quiet=True, evaluate=False)
    assert rec.status == "finished" and rec.run_dir == run_dir
    assert _train_steps(run_dir) == list(range(1, 101))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_torchrun_and_its_workers_end_with_the_runner(tiny_data: Path, tmp_path: Path) -> None:
    cfg = base(tiny_data, **{"train.iterations": 2000, "train.log_every": 100})
    run_dir = _kill_runner_mid_run(cfg, tmp_path, nproc=2, expect_jobs=3)  # torchrun + 2 workers
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["world_size"] == 2
    assert _train_steps(run_dir) == list(range(1, s["steps"] + 1))


def test_a_job_refused_for_a_busy_folder_says_why(tiny_data: Path, tmp_path: Path) -> None:
    """The runner's record of a job that another process's lock refused carries the refusal."""
    from recur_lib.rundir import RunLock
    cfg = base(tiny_data)
    run_dir = tmp_path / f"t-{run_id(cfg.override({'run.nproc': 1}))}"
    lock = RunLock.acquire(run_dir)
    try:
        rec = launch(cfg, tmp_path, quiet=True, evaluate=False)
    finally:
        lock.release()
    assert rec.status == "failed" and f"pid {os.getpid()}" in rec.row()["error"]


def test_load_metrics_leaves_out_a_torn_last_line(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train_loss": 5.0}\n{"step": 2, "train_lo')
    assert load_metrics(tmp_path)["step"].tolist() == [1]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1\n{"step": 2, "train_loss": 5.0}\n')
    with pytest.raises(ValueError, match="metrics.jsonl: line 1"):
        load_metrics(tmp_path)


def test_metric_by_step_keeps_a_resumed_runs_own_values(tmp_path: Path) -> None:
    # steps 1-3, an interruption after step 3 with the checkpoint at step 2, the resumed run's steps 3-4;
    # validation rows carry no train_loss
    rows = [(1, 5.0), (2, 4.0), (3, 9.0), (3, 3.5), (4, 3.0)]
    lines = [json.dumps({"step": s, "train_loss": v}) for s, v in rows] + [json.dumps({"step": 4, "val_bpb": 2.0})]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    loss = metric_by_step(tmp_path, "train_loss")
    assert loss.index.tolist() == [1, 2, 3, 4] and loss.tolist() == [5.0, 4.0, 3.5, 3.0]
    assert metric_by_step(tmp_path, "val_bpb").to_dict() == {4: 2.0}
    assert metric_by_step(tmp_path, "lora_norms") is None and metric_by_step(tmp_path / "none", "train_loss") is None


def test_the_progress_bar_counts_ended_jobs() -> None:
    from recur_lib.lab.runs import Progress
    p = Progress(4, width=8)
    assert p.bar() == "0/4 ░░░░░░░░ "
    assert p.bar(ended=True) == "1/4 ██░░░░░░ " and p.bar() == "1/4 ██░░░░░░ "
    assert [p.bar(ended=True) for _ in range(3)][-1] == "4/4 ████████ "
    assert Progress(12).bar(ended=True).startswith(" 1/12 ")  # the count keeps its width


def test_an_interrupted_parallel_sweep_stops_its_jobs_with_checkpoints(tiny_data: Path, tmp_path: Path,
                                                                         request: pytest.FixtureRequest) -> None:
    """Ctrl-C (a kernel interrupt) in a sweep running two jobs at once: the two running jobs stop at a
    step boundary and write checkpoints, the queued one never starts, and the interrupt reaches the
    caller within seconds rather than after the runs."""
    import threading
    cfg = base(tiny_data, **{"train.iterations": 5000, "train.log_every": 1})

    def interrupt_once_both_train() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            dirs = list(tmp_path.glob("*/metrics.jsonl"))
            if len(dirs) == 2 and all(len(_train_steps(d.parent)) >= 3 for d in dirs):
                break
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)  # as a kernel interrupt does; it wakes the waiting main thread

    # a shell that starts pytest in the background (`cmd &`) leaves SIGINT ignored; a kernel's Ctrl-C is not
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    threading.Thread(target=interrupt_once_both_train, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        sweep(cfg, {"schedule.n_loops": [1, 2, 3]}, seeds=[0], runs_dir=tmp_path, evaluate=False, quiet=True,
              parallel=2)
    assert time.monotonic() - started < 100  # the runs themselves take minutes
    folders = sorted(d for d in tmp_path.iterdir() if d.is_dir())
    assert [d.name.split("-")[0] for d in folders] == ["n_loops=1", "n_loops=2"]  # n_loops=3 never started
    for d in folders:
        s = json.loads((d / "summary.json").read_text())
        assert (s["status"], s["reason"]) == ("interrupted", "SIGINT") and s["steps"] < 5000, s
        assert (d / "ckpt.pt").exists() and s["checkpoint_step"] == s["steps"]
    # the interrupt was this sweep's: the next run in the same kernel trains
    after = sweep(base(tiny_data, **{"train.iterations": 2}), {"schedule.n_loops": [1]}, seeds=[0],
                  runs_dir=tmp_path / "after", evaluate=False, quiet=True)
    assert list(after["status"]) == ["finished"]


def test_a_job_whose_log_cannot_be_opened_never_starts(tmp_path: Path) -> None:
    from recur_lib.lab import runs as runs_mod
    marker = tmp_path / "started"
    cmd = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    with pytest.raises(OSError):
        runs_mod._stream(cmd, tmp_path / "missing" / "stdout.log", "", dict(os.environ), quiet=True)
    time.sleep(0.5)
    assert not marker.exists() and not runs_mod._live
    rc, _ = runs_mod._stream(cmd, tmp_path / "stdout.log", "", dict(os.environ), quiet=True)
    assert rc == 0 and marker.exists() and not runs_mod._live
