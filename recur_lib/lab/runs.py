"""The experiment runner: jobs launched from Python (a notebook cell) as subprocesses (under torchrun
when a job has several processes).

    rec = launch(cfg, runs_dir="runs/workbook")                 # train (+ eval), streamed into the cell
    df = sweep(base, {"schedule.n_loops": [1, 2, 4]}, seeds=[0, 1, 2])
    df = sweep(base, [Arm("wide", {"model.dim": 128}, labels={"width": 128}), ...])
    ev = evaluate_variants(df, [Arm("int6", {"quant.export_bits": 6}, labels={"bits": 6})])

A run's folder is named `<run.name>-<id>`, where the id hashes the resolved config (seed included) and
the code version: the modules that change what a run computes (`COMPUTE_FILES`). So a finished run is
found and reused instead of re-run, an unfinished one resumes from its checkpoint, and `force=True`
trains again (the old folder is moved aside, never deleted). Training and every evaluation run as
subprocesses: a failing or diverging arm, or a failing evaluation, becomes a row with its status and
log tail, and the sweep goes on. Everything lives in run folders, so nothing finished is lost when a
kernel dies.
"""
from __future__ import annotations

import ast
import collections
import hashlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TextIO, Union

import pandas as pd

from ..config import Config, ConfigError
from ..paths import PROJECT_ROOT, atomic_write, project_relative, resolve
from ..rundir import FINAL_STATUSES, PARENT_PID_ENV, read_eval, read_summary

PACKAGE = Path(__file__).resolve().parents[1]

# The modules (relative to recur_lib/) that change what a run computes: its weights, losses, bpb and
# artifact. Only they enter the code version, so editing a plot, a verdict, the CLI or the runner
# retrains nothing. The config's values are hashed directly, so config.py and presets.py are not here.
# tests/test_layout.py checks that every module the trainer and the evaluator import is either listed
# here or in NOT_COMPUTING.
COMPUTE_FILES = (
    "train.py", "evaluate.py", "export.py", "quant.py", "optim.py", "device.py",
    "model/gpt.py", "model/blocks.py", "model/tricks.py", "model/schedule.py", "model/lora.py", "model/fused.py",
    "data/dataset.py", "data/shards.py", "data/loader.py", "data/tokenizer.py", "data/bpb.py",
)
# Imported by training or evaluation without changing a number: re-exports, the config tree (hashed by
# value), paths, run-folder bookkeeping, the version string.
NOT_COMPUTING = ("__init__.py", "version.py", "config.py", "presets.py", "paths.py", "rundir.py",
                 "data/__init__.py", "model/__init__.py")


def code_version(package: Path = PACKAGE) -> str:
    """A hash of COMPUTE_FILES under `package`: each file's syntax tree without its docstrings, so that a
    comment, a docstring or a line break retrains nothing (a sweep outlives such edits) while any change
    to what the code does gives new run ids."""
    h = hashlib.sha256()
    for name in COMPUTE_FILES:
        h.update(name.encode())
        h.update(_code_only((package / name).read_text()).encode())
    return h.hexdigest()[:12]


def _code_only(source: str) -> str:
    """The syntax tree as text (comments and layout are not in it), docstrings removed."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


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
                             "diverged_at_step": s.get("diverged_at_step"), "loss_peak_excess": s.get("loss_peak_excess"),
                             "loss_spikes": s.get("loss_spikes"), "reused": self.reused,
                             "run_dir": str(self.run_dir)}
        if self.eval:
            r.update(eval_row(self.eval))
        if self.status not in FINAL_STATUSES:
            r["error"] = s.get("error") or self.log_tail.strip().splitlines()[-1:] or ""
        return r


def eval_row(e: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {f"{prefix}float_bpb": e["float"]["plain"]["val_bpb"], f"{prefix}quant_bpb": e["quantized"]["plain"]["val_bpb"],
           f"{prefix}quant_gap": e["quant_gap_bpb"], f"{prefix}artifact_bytes": e["artifact"]["total_bytes"]}
    for mode in ("sliding", "ttt"):
        if mode in e["float"]:
            out[f"{prefix}{mode}_bpb"] = e["float"][mode]["val_bpb"]
    if "quant_gap_ci" in e:  # the gap's bootstrap interval over eval windows, within the run
        out[f"{prefix}quant_gap_lo"], out[f"{prefix}quant_gap_hi"] = e["quant_gap_ci"]["lo"], e["quant_gap_ci"]["hi"]
    return out


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    """A run's metrics.jsonl as a table. A last line still being written (a live or killed run) is left
    out; a damaged line before it raises, naming the file and the line."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return pd.DataFrame()
    lines = [x for x in path.read_text().splitlines() if x.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON; the run folder is damaged") from None
    return pd.DataFrame(rows)


def metric_by_step(run: str | Path | pd.DataFrame, metric: str) -> pd.Series | None:
    """One run's `metric` indexed by step, None when the run logs none; `run`: its folder, or its
    metrics as load_metrics read them (to read several metrics from one read). A resumed run logs the
    steps after its last checkpoint again: each step keeps its last value, the one the finished run
    stands on."""
    m = run if isinstance(run, pd.DataFrame) else load_metrics(run)
    if metric not in m:
        return None
    s = m.dropna(subset=[metric]).set_index("step")[metric]
    return s[~s.index.duplicated(keep="last")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A job is `python -c _FOLLOW_PARENT module args...`: it asks the kernel to end it when this process dies
# (rundir.die_with_parent), then runs the module as `python -m module args...` would. Under torchrun
# the torchrun process follows us (it then stops its workers), and each worker follows torchrun.
_FOLLOW_PARENT = ("import runpy, sys; from recur_lib.rundir import die_with_parent; die_with_parent(); "
                  "module = sys.argv.pop(1); runpy.run_module(module, run_name='__main__', alter_sys=True)")


def _job_cmd(module: str, *args: str) -> list[str]:
    """The command line of a job that runs `module` (as with -m) and dies with this process."""
    return [sys.executable, "-c", _FOLLOW_PARENT, module, *args]


def _say(line: str) -> None:
    """One status line in a single write: print() writes the text and its newline separately, and lines
    from a sweep's threads then run together."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Progress:
    """The bar that leads each status line of a sweep: jobs ended out of all. It is drawn in the line
    itself, so a notebook's output (and its published copy) keeps one line per event; a separate
    live bar would leave a copy of itself between every two lines of the stored output."""

    def __init__(self, total: int, width: int = 12) -> None:
        self.total, self.width, self.done = max(total, 1), width, 0
        self._lock = threading.Lock()

    def bar(self, ended: bool = False) -> str:
        """The bar as of now, counting one more ended job when `ended`."""
        with self._lock:
            self.done += ended
            filled = self.width * self.done // self.total
            return f"{self.done:>{len(str(self.total))}}/{self.total} {'█' * filled}{'░' * (self.width - filled)} "


# The jobs running now, and whether an interrupted sweep is stopping them: `_pool_map` asks each to
# stop (it writes its checkpoint) and no new one starts.
_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()
_stopping = threading.Event()


def _stream(cmd: list[str], log_path: Path, prefix: str, env: dict[str, str], quiet: bool) -> tuple[int, str]:
    """Run cmd, echoing its output lines into the notebook (and a log file); returns (rc, tail). Call it
    in the thread that waits for the job: on Linux the job's death signal follows the starting thread.
    The job gets a session of its own, so a signal to the notebook's process group (a terminal's Ctrl-C)
    does not reach it beside the one the runner sends: a second signal would interrupt the job inside a
    step, where no checkpoint can be written."""
    with open(log_path, "a") as log:  # opened first: a log that cannot be written starts no job
        with _live_lock:
            if _stopping.is_set():
                raise KeyboardInterrupt
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                    cwd=PROJECT_ROOT, bufsize=1, start_new_session=True)
            _live.add(proc)
        return _follow(proc, log, prefix, quiet)


def _follow(proc: subprocess.Popen, log: TextIO, prefix: str, quiet: bool) -> tuple[int, str]:
    """Copy a running job's output into its log (and the notebook), wait for it, and forget it."""
    tail: collections.deque[str] = collections.deque(maxlen=40)
    with proc:
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
        finally:
            with _live_lock:
                _live.discard(proc)


def _threads_per_process(nproc: int, jobs: int = 1) -> int | None:
    """The CPU threads each process gets when `jobs` jobs of `nproc` processes share this machine
    (None: one process alone keeps torch's default)."""
    return max(1, (os.cpu_count() or 1) // (nproc * jobs)) if nproc * jobs > 1 else None


def _job_env(threads: int | None = None) -> dict[str, str]:
    """The notebook's environment, with this checkout importable by the job, this process as the parent
    whose death ends the job (and a thread count, when jobs share the machine)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env[PARENT_PID_ENV] = str(os.getpid())
    if threads:
        env.setdefault("OMP_NUM_THREADS", str(threads))  # a user-set value wins
    return env


def run_evaluation(run_dir: str | Path, name: str = "eval", overrides: Mapping[str, Any] | None = None, *,
             quiet: bool = False, threads: int | None = None) -> tuple[str, dict[str, Any] | None, str]:
    """Evaluate a finished run in a subprocess (`recur eval RUN_DIR --name NAME --set ...`), with
    `overrides` (quant, eval, data or run fields) on top of its config; returns (status, eval dict,
    log tail) with status "finished", "invalid_config" or "eval_failed". A saved RUN_DIR/NAME.json of
    the same config is reused; an over-budget artifact is measured, not refused."""
    run_dir = Path(run_dir)
    overrides = dict(overrides or {})
    try:
        cfg = Config.load(run_dir / "config.json").override(overrides)
    except ConfigError as e:
        return "invalid_config", None, str(e)
    saved = read_eval(run_dir, name)
    if saved is not None and saved.get("config") == cfg.to_dict():
        return "finished", saved, ""
    sets = [arg for k, v in overrides.items() for arg in ("--set", f"{k}={v}")]
    cmd = _job_cmd("recur_lib.cli", "eval", str(run_dir), "--report-only", "--name", name, *sets)
    rc, tail = _stream(cmd, run_dir / "stdout.log", f"[{run_dir.name} {name}] ", _job_env(threads), quiet)
    result = read_eval(run_dir, name) if rc == 0 else None
    return ("finished", result, tail) if result is not None else ("eval_failed", None, tail)


def _outcome(rec: RunRecord, seconds: float | None) -> str:
    """One line for a run's end: status, steps, bpb, and for a failure its error and where its log is."""
    s = rec.summary
    if rec.status == "finished":
        bpb = s.get("final_val_bpb")
        text = f"finished {s.get('steps')} steps val_bpb " + (f"{bpb:.4f}" if isinstance(bpb, (int, float)) else "-")
        if rec.eval:
            text += f" quantized {rec.eval['quantized']['plain']['val_bpb']:.4f}"
    elif rec.status == "diverged":
        text = f"diverged: {s.get('reason')}"
    elif rec.status == "interrupted":
        text = f"interrupted at step {s.get('steps')} ({s.get('reason')}); it resumes on the next launch"
    else:
        last = s.get("error") or (rec.log_tail.strip().splitlines() or [""])[-1]
        text = f"{rec.status}: {last} (log: {project_relative(rec.run_dir / 'stdout.log')})"
    return text + (" (reused)" if rec.reused else f" in {seconds:.0f} s" if seconds is not None else "")


def _finished_twin(base: Path, rid: str) -> Path | None:
    """A finished run of the same content address under another name (names are not part of run_id): two
    arms that differ only in their labels, e.g. a length arm at the loop grid's own length, train once."""
    for d in sorted(base.glob(f"*-{rid}")):
        if (read_summary(d) or {}).get("status") in FINAL_STATUSES:
            return d
    return None


def _checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint holds (memory-mapped: only the small entry is read), or None. The summary's
    step count can be ahead of it: a run logs steps after its last checkpoint."""
    if not path.exists():
        return None
    try:
        import torch
        step = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("step")
        return int(step) if isinstance(step, int) else None
    except Exception:  # unreadable here: training reports it when it loads the checkpoint
        return None


def launch(cfg: Config, runs_dir: str | Path = "runs", *, nproc: int | None = None, evaluate: bool = True,
           force: bool = False, quiet: bool = False, threads: int | None = None, label: str | None = None,
           progress: Progress | None = None) -> RunRecord:
    """Train (and evaluate) one config as a subprocess; reuse a finished run, resume an unfinished one.

    Prints a line when the job starts and one when the run ends (status, steps, val_bpb), each led by
    `[label]` (default: run name and seed). The job's own output goes to RUN_DIR/stdout.log and, unless
    `quiet`, into the cell as well.
    `threads`: CPU threads per process (default: the cores shared among the nproc processes).
    `progress`: a sweep's bar, leading both lines (the end line counts this run as ended).
    Never raises for a failing job: the record says `failed` and carries the log tail.
    """
    label = label or f"{cfg.run.name} seed {cfg.run.seed}"
    nproc = nproc or cfg.run.nproc
    cfg = cfg.override({"run.nproc": nproc})
    rid = run_id(cfg)
    base = resolve(runs_dir)
    run_dir = base / f"{cfg.run.name}-{rid}"
    if not force and not run_dir.exists():
        run_dir = _finished_twin(base, rid) or run_dir
    cfg = cfg.override({"run.out_dir": str(base), "run.name": run_dir.name})
    summary = read_summary(run_dir) or {}
    reused = summary.get("status") in FINAL_STATUSES and not force
    tail = ""
    started = None
    if not reused:
        started = time.monotonic()
        done = _checkpoint_step(run_dir / "ckpt.pt")
        how = ("resuming" + (f" from step {done}" if done else "")) if (run_dir / "ckpt.pt").exists() and not force \
            else "training"
        _say(f"{progress.bar() if progress else ''}[{label}] {how} in {project_relative(run_dir)}")
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "launch.json", cfg.to_json() + "\n")
        train_args = ["train", "--config", str(run_dir / "launch.json"), "--run-dir", str(run_dir),
                      "--force" if force else "--reuse"]
        env = _job_env(threads or _threads_per_process(nproc))
        if nproc > 1:
            cmd = _job_cmd("torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(_free_port()),
                           "-m", "recur_lib.cli", *train_args)
        else:
            cmd = _job_cmd("recur_lib.cli", *train_args)
        rc, tail = _stream(cmd, run_dir / "stdout.log", f"[{run_dir.name}] ", env, quiet)
        summary = read_summary(run_dir) or {}
        if rc != 0 and summary.get("status") in (None, "finished"):
            # e.g. a refusal (another job trains in the folder): its message is the job's last line
            last = tail.strip().splitlines()[-1:] or [""]
            summary = {**summary, "status": "failed", "error": f"exit code {rc}: {last[0]}".rstrip(": ")}
    status = summary.get("status", "failed")
    ev = read_eval(run_dir)
    if evaluate and status == "finished" and (ev is None or not reused):
        status, ev, etail = run_evaluation(run_dir, quiet=quiet, threads=threads)
        tail += etail
    rec = RunRecord(run_dir, status, cfg, summary, ev, reused, tail)
    _say(f"{progress.bar(ended=True) if progress else ''}[{label}] "
         f"{_outcome(rec, None if started is None else time.monotonic() - started)}")
    return rec


@dataclass
class Arm:
    """One arm of a sweep (or one variant of an evaluation): a name, the config overrides it applies,
    and labels, the values a table groups by. `sweep` and `evaluate_variants` write both the overrides
    and the labels as columns, so no value is ever read back out of a name."""
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)


Arms = Union[Sequence[Arm], Mapping[str, Arm], Mapping[str, Mapping[str, Any]], Mapping[str, Sequence[Any]]]


def as_arms(grid: Arms) -> list[Arm]:
    """Arms as given (a list of Arm, or {name: Arm}), {name: {overrides}}, or the product of a
    {key: [values]} grid (each arm named `field=value,...`)."""
    if isinstance(grid, Sequence) and not isinstance(grid, str):
        return list(grid)
    if all(isinstance(v, Arm) for v in grid.values()):
        return list(grid.values())  # type: ignore[arg-type]
    if all(isinstance(v, Mapping) for v in grid.values()):
        return [Arm(str(k), dict(v)) for k, v in grid.items()]  # type: ignore[arg-type]
    keys = list(grid)
    arms = []
    for values in itertools.product(*(grid[k] for k in keys)):  # type: ignore[misc]
        over = dict(zip(keys, values))
        arms.append(Arm(",".join(f"{k.split('.')[-1]}={v}" for k, v in over.items()), over))
    return arms


def _pool_map(fn: Any, jobs: list[Any], parallel: int) -> list[Any]:
    """fn over jobs, `parallel` at a time. An interrupt (Ctrl-C, a kernel interrupt) reaches only this
    thread: the queued jobs are dropped and the running ones asked to stop, each writing its checkpoint,
    before it is raised; a rerun resumes them."""
    if parallel <= 1:
        return [fn(j) for j in jobs]
    _stopping.clear()
    pool = ThreadPoolExecutor(parallel)
    try:
        return list(pool.map(fn, jobs))
    except KeyboardInterrupt:
        with _live_lock:
            _stopping.set()
            for proc in _live:
                proc.send_signal(signal.SIGINT)
        raise
    finally:  # after an interrupt: the queued jobs never start, the running ones end with their checkpoints
        pool.shutdown(wait=True, cancel_futures=_stopping.is_set())
        _stopping.clear()  # every job has ended: the next launch in this kernel runs


def sweep(base: Config, grid: Arms, seeds: Sequence[int] = (0,), runs_dir: str | Path = "runs", *,
          nproc: int = 1, parallel: int = 1, evaluate: bool = True, force: bool = False,
          quiet: bool = False) -> pd.DataFrame:
    """Every arm x seed; one row per run with the arm's name, overrides and labels as columns. A bad arm
    (invalid config, crash, divergence) is a row too. Each run prints `[arm seed N]` lines as `launch`
    does, led by the sweep's progress bar (`quiet`: those lines only, not the training output).

    `parallel` jobs run at once, the cores split between them (on 2 CPU cores, 2 one-thread jobs
    of the quick model train ~1.25x faster in total than one two-thread job).
    """
    threads = _threads_per_process(nproc, parallel) if parallel > 1 else None
    jobs = [(arm, seed) for arm in as_arms(grid) for seed in seeds]
    progress = Progress(len(jobs))

    def one(job: tuple[Arm, int]) -> dict[str, Any]:
        arm, seed = job
        row: dict[str, Any] = {"arm": arm.name, "seed": seed, **arm.overrides, **arm.labels}
        try:
            cfg = base.override({**arm.overrides, "run.seed": seed, "run.name": _slug(arm.name)})
            rec = launch(cfg, runs_dir, nproc=nproc, evaluate=evaluate, force=force, quiet=quiet, threads=threads,
                         label=f"{arm.name} seed {seed}", progress=progress)
            row.update(rec.row())
        except ConfigError as e:
            row.update({"status": "invalid_config", "error": str(e)})
            _say(f"{progress.bar(ended=True)}[{arm.name} seed {seed}] invalid config: {e}")
        return row

    return pd.DataFrame(_pool_map(one, jobs, parallel))


# The columns a run row gets from its results; every other column (arm, seed, overrides, labels) says
# what the run is, and evaluate_variants carries it over to the variant rows.
RESULT_COLUMNS = ("status", "final_val_bpb", "final_train_loss", "steps", "tokens_per_s", "train_time_s",
                  "diverged_at_step", "reused", "error", "float_bpb", "quant_bpb", "quant_gap", "artifact_bytes",
                  "sliding_bpb", "ttt_bpb")


def evaluate_variants(df: pd.DataFrame, variants: Arms | Callable[[Config], Arms], *, parallel: int = 1,
                      quiet: bool = False) -> pd.DataFrame:
    """Evaluate every finished run of a sweep once per variant (quant/eval overrides, or a function of
    the run's config giving them), each in a subprocess as `launch` does; one row per run and variant
    with the run's identity columns, the variant's name and labels, and its status. A failing variant
    is a row with its error; saved evaluations of the same config are reused."""
    threads = _threads_per_process(1, parallel) if parallel > 1 else None
    jobs = []
    for _, r in df.iterrows():
        if r.get("status") != "finished":
            continue
        saved = Config.load(Path(r["run_dir"]) / "config.json")
        for v in as_arms(variants(saved) if callable(variants) else variants):
            jobs.append((r, v))
    progress = Progress(len(jobs))

    def one(job: tuple[pd.Series, Arm]) -> dict[str, Any]:
        r, v = job
        started = time.monotonic()
        status, e, tail = run_evaluation(r["run_dir"], v.name, v.overrides, quiet=quiet, threads=threads)
        row = {k: r[k] for k in r.index if k not in RESULT_COLUMNS}
        row.update({"variant": v.name, **v.labels, "status": status})
        if e is not None:
            row.update({"eval_loops": e.get("eval_loops"), **eval_row(e)})
            took = time.monotonic() - started
            line = (f"val_bpb {e['float']['plain']['val_bpb']:.4f} quantized {e['quantized']['plain']['val_bpb']:.4f}"
                    + (" (reused)" if not tail else f" in {took:.0f} s"))
        else:
            row["error"] = tail.strip().splitlines()[-1] if tail.strip() else status
            line = f"{status}: {row['error']} (log: {project_relative(Path(r['run_dir']) / 'stdout.log')})"
        _say(f"{progress.bar(ended=True)}[{Path(r['run_dir']).name} {v.name}] {line}")  # one line per evaluation
        return row

    return pd.DataFrame(_pool_map(one, jobs, parallel))


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
        values = list(last["lora_norms"].values())
        norms = pd.DataFrame(values, columns=["A", "B", "BA", "BA_over_W"][:len(values[0])])
        upd = last.get("update_rms")
        rows.append({"arm": r["arm"], "seed": r["seed"], "step": int(last["step"]),
                     **{f"{c}_mean": norms[c].mean() for c in norms}, "BA_max": norms["BA"].max(),
                     "lora_update_rms": upd.get("lora") if isinstance(upd, dict) else None})
    if not rows:
        return pd.DataFrame()
    t = pd.DataFrame(rows)
    spectral = {"BA_over_W_mean": ("BA_over_W_mean", "mean")} if "BA_over_W_mean" in t else {}
    return t.groupby("arm", sort=False).agg(
        runs=("seed", "size"), step=("step", "max"), A_mean=("A_mean", "mean"), B_mean=("B_mean", "mean"),
        BA_mean=("BA_mean", "mean"), BA_max=("BA_max", "max"), **spectral,
        lora_update_rms=("lora_update_rms", "mean")).reset_index()


def save_table(df: pd.DataFrame, results_dir: str | Path, name: str) -> Path:
    """Write a results table as CSV and JSON next to the executed notebook; returns the CSV path. Run
    folders inside the project are written project-relative, so a published table names no machine's
    paths (`resolve` reads them back from anywhere)."""
    out = resolve(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    if "run_dir" in df:
        df = df.assign(run_dir=[project_relative(Path(v)) if isinstance(v, str) else v for v in df["run_dir"]])
    df.to_csv(out / f"{name}.csv", index=False)
    df.to_json(out / f"{name}.json", orient="records", indent=2)
    return out / f"{name}.csv"
