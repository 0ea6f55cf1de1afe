"""The experiment runner: jobs launched from Python (a notebook cell) as torchrun subprocesses.

    rec = launch(cfg, runs_dir="runs/workbook")                 # train (+ eval), streamed into the cell
    df = sweep(base, {"schedule.n_loops": [1, 2, 4]}, seeds=[0, 1, 2])

A run's folder is named `<run.name>-<id>`, where the id hashes the resolved config (seed included) and
the code version (the library files that affect results). So a finished run is found and reused
instead of re-run, an unfinished one resumes from its checkpoint, and `force=True` trains again (the
old folder is moved aside, never deleted). A failing or diverging arm becomes a row with its status
and log tail; the sweep goes on. Everything lives in run folders, so nothing finished is lost when a
kernel dies.
"""
from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from .config import Config, ConfigError
from .paths import PROJECT_ROOT, resolve
from .train import FINAL_STATUSES, read_summary

PACKAGE = Path(__file__).resolve().parent
# Files that cannot change a run's numbers: edits to them keep old runs reusable.
NOT_IN_CODE_VERSION = {"runs.py", "plots.py", "cli.py", "build.py", "corpus.py", "markup.py", "workbook.py",
                       "findings.py"}


def code_version() -> str:
    h = hashlib.sha256()
    for f in sorted(PACKAGE.rglob("*.py")):
        if f.name not in NOT_IN_CODE_VERSION:
            h.update(f.relative_to(PACKAGE).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def run_id(cfg: Config) -> str:
    """Content address: the config without where the run lives, plus the code version."""
    d = cfg.to_dict()
    for k in ("name", "out_dir"):
        d["run"].pop(k)
    return hashlib.sha256((json.dumps(d, sort_keys=True) + code_version()).encode()).hexdigest()[:10]


@dataclass
class RunRecord:
    run_dir: Path
    status: str                       # finished | diverged | interrupted | failed
    config: Config
    summary: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] | None = None
    reused: bool = False
    log_tail: str = ""

    @property
    def name(self) -> str:
        return self.config.run.name

    def metrics(self) -> pd.DataFrame:
        return load_metrics(self.run_dir)

    def row(self) -> dict[str, Any]:
        """One flat row for a results table."""
        s = self.summary
        r: dict[str, Any] = {"status": self.status, "final_val_bpb": s.get("final_val_bpb"),
                             "final_train_loss": s.get("final_train_loss"), "steps": s.get("steps"),
                             "tokens_per_s": s.get("tokens_per_s"), "train_time_s": s.get("train_time_s"),
                             "diverged_at_step": s.get("diverged_at_step"), "reused": self.reused,
                             "run_dir": str(self.run_dir)}
        if self.eval:
            r.update(eval_row(self.eval))
        if self.status == "failed":
            r["error"] = s.get("error") or self.log_tail.strip().splitlines()[-1:] or ""
        return r


def eval_row(e: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {f"{prefix}float_bpb": e["float"]["plain"]["val_bpb"], f"{prefix}quant_bpb": e["quantized"]["plain"]["val_bpb"],
           f"{prefix}quant_gap": e["quant_gap_bpb"], f"{prefix}artifact_bytes": e["artifact"]["total_bytes"]}
    for mode in ("sliding", "ttt"):
        if mode in e["float"]:
            out[f"{prefix}{mode}_bpb"] = e["float"][mode]["val_bpb"]
    return out


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return pd.DataFrame()
    return pd.DataFrame([json.loads(x) for x in path.read_text().splitlines() if x.strip()])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stream(cmd: list[str], log_path: Path, prefix: str, env: dict[str, str], quiet: bool) -> tuple[int, str]:
    """Run cmd, echoing its output lines into the notebook (and a log file); returns (rc, tail)."""
    tail: collections.deque[str] = collections.deque(maxlen=40)
    with open(log_path, "a") as log, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                                      env=env, cwd=PROJECT_ROOT, bufsize=1) as proc:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                tail.append(line)
                if not quiet:
                    print(f"{prefix}{line}", end="", flush=True)
            return proc.wait(), "".join(tail)
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)  # the job writes a resumable checkpoint
            proc.wait(timeout=120)
            raise


def _threads_per_process(nproc: int, jobs: int = 1) -> int | None:
    """The CPU threads each process gets when `jobs` jobs of `nproc` processes share this machine
    (None: one process alone keeps torch's default)."""
    return max(1, (os.cpu_count() or 1) // (nproc * jobs)) if nproc * jobs > 1 else None


def _job_env(threads: int | None = None) -> dict[str, str]:
    """The notebook's environment, with this checkout importable by the job (and a thread count, when
    jobs share the machine)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if threads:
        env.setdefault("OMP_NUM_THREADS", str(threads))  # a user-set value wins
    return env


def _read_eval(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "eval.json").read_text())
    except (OSError, ValueError):
        return None


def launch(cfg: Config, runs_dir: str | Path = "runs", *, nproc: int | None = None, evaluate: bool = True,
           force: bool = False, quiet: bool = False, threads: int | None = None) -> RunRecord:
    """Train (and evaluate) one config as a subprocess; reuse a finished run, resume an unfinished one.

    `threads`: CPU threads per process (default: the cores shared among the nproc processes).
    Never raises for a failing job: the record says `failed` and carries the log tail.
    """
    nproc = nproc or cfg.run.nproc
    cfg = cfg.override({"run.nproc": nproc})
    rid = run_id(cfg)
    base = resolve(runs_dir)
    run_dir = base / f"{cfg.run.name}-{rid}"
    cfg = cfg.override({"run.out_dir": str(base), "run.name": run_dir.name})
    summary = read_summary(run_dir) or {}
    reused = summary.get("status") in FINAL_STATUSES and not force
    tail = ""
    prefix = f"[{run_dir.name}] "
    if not reused:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "launch.json").write_text(cfg.to_json() + "\n")
        train_args = ["-m", "recur_lib.train", "--config", str(run_dir / "launch.json"), "--run-dir", str(run_dir),
                      "--force" if force else "--reuse"]
        env = _job_env(threads or _threads_per_process(nproc))
        if nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                   "--master_port", str(_free_port()), *train_args]
        else:
            cmd = [sys.executable, *train_args]
        rc, tail = _stream(cmd, run_dir / "stdout.log", prefix, env, quiet)
        summary = read_summary(run_dir) or {}
        if rc != 0 and summary.get("status") in (None, "finished"):
            summary = {**summary, "status": "failed", "error": f"exit code {rc}"}
    status = summary.get("status", "failed")
    ev = _read_eval(run_dir)
    if evaluate and status == "finished" and (ev is None or not reused):
        rc, etail = _stream([sys.executable, "-m", "recur_lib.cli", "eval", str(run_dir), "--report-only"],
                            run_dir / "stdout.log", prefix, _job_env(threads), quiet)
        ev = _read_eval(run_dir) if rc == 0 else None
        if rc != 0:
            tail += etail
            status = "eval_failed"
    return RunRecord(run_dir, status, cfg, summary, ev, reused, tail)


def _arms(grid: Mapping[str, Sequence[Any]] | Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Named arms: {"name": {overrides}} as given, or the product of a {key: [values]} grid."""
    if all(isinstance(v, Mapping) for v in grid.values()):
        return {str(k): dict(v) for k, v in grid.items()}  # type: ignore[arg-type]
    keys = list(grid)
    arms = {}
    for values in itertools.product(*(grid[k] for k in keys)):
        over = dict(zip(keys, values))
        arms[",".join(f"{k.split('.')[-1]}={v}" for k, v in over.items())] = over
    return arms


def sweep(base: Config, grid: Mapping[str, Any], seeds: Sequence[int] = (0,), runs_dir: str | Path = "runs", *,
          nproc: int = 1, parallel: int = 1, evaluate: bool = True, force: bool = False,
          quiet: bool = False) -> pd.DataFrame:
    """Every arm x seed; one row per run. A bad arm (invalid config, crash, divergence) is a row too.

    `parallel` jobs run at once, the cores split between them (on 2 CPU cores, 2 one-thread jobs
    of the quick model train ~1.25x faster in total than one two-thread job).
    """
    threads = _threads_per_process(nproc, parallel) if parallel > 1 else None
    jobs = [(arm, over, seed) for arm, over in _arms(grid).items() for seed in seeds]

    def one(job: tuple[str, dict[str, Any], int]) -> dict[str, Any]:
        arm, over, seed = job
        row: dict[str, Any] = {"arm": arm, "seed": seed, **{k: v for k, v in over.items()}}
        try:
            cfg = base.override({**over, "run.seed": seed, "run.name": _slug(arm)})
            rec = launch(cfg, runs_dir, nproc=nproc, evaluate=evaluate, force=force, quiet=quiet, threads=threads)
            row.update(rec.row())
            if rec.status not in ("finished", "diverged") and not quiet:
                print(f"[{arm} seed {seed}] {rec.status}: {rec.log_tail.strip()[-800:]}", flush=True)
        except ConfigError as e:
            row.update({"status": "invalid_config", "error": str(e)})
            if not quiet:
                print(f"[{arm} seed {seed}] invalid config: {e}", flush=True)
        return row

    if parallel > 1:
        with ThreadPoolExecutor(parallel) as pool:
            rows = list(pool.map(one, jobs))
    else:
        rows = [one(j) for j in jobs]
    return pd.DataFrame(rows)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text)[:80]


def summarize(df: pd.DataFrame, metric: str = "final_val_bpb", by: str = "arm") -> pd.DataFrame:
    """Mean, std and count of a metric per arm, over the runs that produced it, plus status counts."""
    g = df.groupby(by, sort=False)
    out = g[metric].agg(["mean", "std", "count"]) if metric in df else pd.DataFrame(index=g.size().index)
    out["runs"] = g.size()
    out["diverged"] = g["status"].apply(lambda s: int((s == "diverged").sum()))
    out["failed"] = g["status"].apply(lambda s: int((~s.isin(["finished", "diverged"])).sum()))
    return out.reset_index()


def lora_norm_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per arm, over its runs: the mean and max Frobenius norm of each per-loop LoRA factor (A, B) and of
    the delta BA (vector form: v, u, |u||v|) at the last logged step, and the LoRA update RMS there.
    The mechanism readout of the LoRA ablation: which arms grow which factor."""
    rows = []
    for _, r in df.iterrows():
        m = load_metrics(r["run_dir"]) if isinstance(r.get("run_dir"), str) else pd.DataFrame()
        if "lora_norms" not in m or m["lora_norms"].dropna().empty:
            continue
        last = m.dropna(subset=["lora_norms"]).iloc[-1]
        norms = pd.DataFrame(list(last["lora_norms"].values()), columns=["A", "B", "BA"])
        upd = last.get("update_rms")
        rows.append({"arm": r["arm"], "seed": r["seed"], "step": int(last["step"]),
                     **{f"{c}_mean": norms[c].mean() for c in norms}, "BA_max": norms["BA"].max(),
                     "lora_update_rms": upd.get("lora") if isinstance(upd, dict) else None})
    if not rows:
        return pd.DataFrame()
    t = pd.DataFrame(rows)
    return t.groupby("arm", sort=False).agg(
        runs=("seed", "size"), step=("step", "max"), A_mean=("A_mean", "mean"), B_mean=("B_mean", "mean"),
        BA_mean=("BA_mean", "mean"), BA_max=("BA_max", "max"), lora_update_rms=("lora_update_rms", "mean")).reset_index()


def save_table(df: pd.DataFrame, results_dir: str | Path, name: str) -> Path:
    """Write a results table as CSV and JSON next to the executed notebook; returns the CSV path."""
    out = resolve(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / f"{name}.csv", index=False)
    df.to_json(out / f"{name}.json", orient="records", indent=2)
    return out / f"{name}.csv"
