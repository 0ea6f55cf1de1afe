"""A run folder: what one training job leaves behind, and how it is read back.

    config.json    the resolved config          train.log      what the job printed
    metrics.jsonl  a line per step              summary.json   status, bpb, speed, provenance
    ckpt.pt        resumable state              model.pt       the weights evaluation and export use
    eval.json      `recur eval` (and <variant>.json for extra evaluations)
    train.lock     who trains here: an OS lock held by that process, its pid and host as text

A run ends `finished`, `diverged`, `interrupted` (a checkpoint is kept, `--resume` continues) or
`failed` (the error is in summary.json). The trainer writes through `RunFolder`; the runner and the
notebooks only read (`read_summary`, `read_eval`), so they never import the trainer.

One process trains in a folder at a time (`RunLock`), and a job the runner started ends when the
runner does (`die_with_parent`). Every file is replaced atomically except the two that are appended
(train.log, metrics.jsonl): a process killed mid-line leaves a torn last line, which `--resume`
trims away with everything written after the checkpoint.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from .config import Config, ConfigError
from .paths import PROJECT_ROOT, atomic_write, resolve

FINAL_STATUSES = ("finished", "diverged")

# Config groups and fields that change what a resumed run computes: --resume refuses a change in them.
RESUME_FIXED_GROUPS = ("model", "schedule", "optim", "quant", "data")
RESUME_FIXED_FIELDS = ("train.batch_tokens", "train.seq_len", "train.grad_accum_steps")


LOCK_NAME = "train.lock"
# Set by the runner for the jobs it starts: the pid of the process whose death ends the job.
PARENT_PID_ENV = "RECUR_PARENT_PID"


class RunExistsError(RuntimeError):
    """The run folder already holds a run that this call would overwrite."""


class RunLockedError(RuntimeError):
    """Another live process is training in the run folder."""


class RunFileError(ValueError):
    """A file of the run folder cannot be read back (damaged, truncated, or not written by the trainer)."""


def run_dir_for(cfg: Config) -> Path:
    return resolve(cfg.run.out_dir) / cfg.run.name


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's contents, or None when it is absent or unreadable (e.g. a run still starting)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    return read_json(Path(run_dir) / "summary.json")


def read_eval(run_dir: str | Path, name: str = "eval") -> dict[str, Any] | None:
    return read_json(Path(run_dir) / f"{name}.json")


def git_commit() -> str | None:
    """The checkout's commit, with "-dirty" when tracked files differ from it (None outside git)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class RunLock:
    """The claim of one process on a run folder: an OS lock (flock) on `train.lock` in the folder, held
    for the whole run. The kernel drops it when the process ends, however it ends, so a crashed run
    never blocks its rerun, and nothing has to clean up. The file's text (pid and host) only feeds the
    message another process gets; it is written in place because the lock lives on the file itself,
    which is therefore never replaced or deleted."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    @classmethod
    def acquire(cls, run_dir: str | Path) -> "RunLock":
        """Lock the folder (creating it), or raise RunLockedError naming the process that holds it."""
        lock = cls(Path(run_dir))
        lock._fd = lock._take()
        return lock

    def _take(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid, host = self.owner()
            who = f"pid {pid}" + (f" on {host}" if host else "") if pid else "another process (its pid is not written yet)"
            raise RunLockedError(
                f"{self.path.parent} is in use: {who} is training in it (it holds {self.path}). Wait for it to end, "
                f"or stop it (kill {pid or 'PID'}: it writes a checkpoint, then --resume continues); two jobs in one "
                "folder would interleave its files") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        return fd

    def owner(self) -> tuple[int | None, str | None]:
        """(pid, host) of the process that last took the lock, as its file says."""
        for _ in range(20):  # the owner writes its pid just after it takes the lock: give it a moment
            try:
                words = self.path.read_text().split()
            except OSError:
                words = []
            if words and words[0].isdigit():
                return int(words[0]), (words[1] if len(words) > 1 else None)
            time.sleep(0.05)
        return None, None

    def renew(self) -> None:
        """Lock the folder again at the same path after --force moved the old one (with the old lock
        file) aside; raises RunLockedError if another process locked the new folder in between."""
        old = self._fd
        try:
            self._fd = self._take()
        finally:
            if old is not None:
                os.close(old)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def die_with_parent() -> None:
    """When the runner started this process (it sets RECUR_PARENT_PID), end it with SIGTERM once that
    parent dies: the trainer then writes a checkpoint and stops, instead of training on unobserved and
    racing a rerun. Linux: PR_SET_PDEATHSIG, kept across exec (and sent when the thread that started
    us ends: the runner starts and waits for a job in one thread); elsewhere a thread polling the
    parent pid. Children of this process (torchrun's workers) then follow this one in turn."""
    want = os.environ.get(PARENT_PID_ENV)
    if not want or int(want) == os.getpid():  # not started by the runner, or already following it
        return
    parent = int(want)
    if not _kernel_deathsig(signal.SIGTERM):
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()
    os.environ[PARENT_PID_ENV] = str(os.getpid())
    if os.getppid() != parent:  # it died before the kernel was told
        os.kill(os.getpid(), signal.SIGTERM)


def _kernel_deathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    PR_SET_PDEATHSIG = 1
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def prepare_run_dir(run_dir: Path, cfg: Config, resume: bool, force: bool, lock: RunLock | None = None) -> bool:
    """Check what the folder holds; returns True when there is a checkpoint to resume from. With a lock
    (the trainer's), --force locks the fresh folder before anything else can claim it."""
    summary = read_summary(run_dir)
    has_ckpt = (run_dir / "ckpt.pt").exists()
    if force and run_dir.exists() and any(p.name != LOCK_NAME for p in run_dir.iterdir()):
        # --force keeps the old run beside the new one rather than deleting a result
        backup = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(backup)
        run_dir.mkdir(parents=True, exist_ok=True)
        if lock is not None:
            lock.renew()
        print(f"--force: moved the previous contents of {run_dir} to {backup}", flush=True)
        summary, has_ckpt = None, False
    if summary and summary.get("status") in FINAL_STATUSES and not force:
        raise RunExistsError(
            f"{run_dir} already holds a {summary['status']} run (val_bpb {summary.get('final_val_bpb')}); "
            "use another run.name, or --force to move it aside and train again")
    if has_ckpt and not resume and not force:
        raise RunExistsError(f"{run_dir} holds an unfinished run (ckpt.pt); pass --resume to continue it "
                             "or --force to move it aside and start over")
    if resume and (run_dir / "config.json").exists():
        try:
            saved = Config.load(run_dir / "config.json")
        except ConfigError as e:
            raise RunFileError(f"{e}; --resume needs the run's saved config: restore it, or --force to move the "
                               "folder aside and start over") from None
        changed = {k: v for k, v in cfg.diff(saved).items() if not k.startswith("run.")}
        fixed = {k for k in changed if k.split(".")[0] in RESUME_FIXED_GROUPS or k in RESUME_FIXED_FIELDS}
        if fixed:
            raise ConfigError(f"--resume with a config that differs from {run_dir / 'config.json'} in "
                              f"{sorted(fixed)}; resume with the saved config or start a new run")
    run_dir.mkdir(parents=True, exist_ok=True)
    return has_ckpt and resume


class RunFolder:
    """The trainer's writer for one run folder. Only the main process writes; on other ranks every
    method is a no-op, so the training loop calls them unconditionally.

    With run.tensorboard on, every metrics record also goes to TensorBoard event files under
    `tensorboard/`: append_metrics is the one place all records pass through, so both always hold the
    same numbers. The writer opens with the metrics (start_metrics, or trim_metrics on a resume), which
    is where a missing tensorboard package stops the run, before its first step."""

    TENSORBOARD_DIR = "tensorboard"
    TENSORBOARD_MISSING = ("run.tensorboard is on but TensorBoard cannot be imported ({why}): "
                           "pip install 'recur-golf[tensorboard]', or set run.tensorboard=false")
    # Lists in a metrics record whose entries have names: lora_norms holds (||A||, ||B||, ||BA||, ||BA||_2 / ||W||_2)
    # per factor.
    LIST_LABELS = {"lora_norms": ("A", "B", "BA", "BA_over_W")}

    @classmethod
    def tensorboard_scalars(cls, rec: dict[str, Any]) -> dict[str, float]:
        """The numbers of one metrics record as TensorBoard tags: the record's own keys, nested groups
        joined by "/" (update_rms/matrices, lora_norms/b1_l0.q/BA). The step is the x axis, not a tag."""
        out: dict[str, float] = {}

        def walk(tag: str, value: Any, labels: tuple[str, ...] | None) -> None:
            if isinstance(value, bool) or value is None:
                return
            if isinstance(value, (int, float)):
                out[tag] = float(value)
            elif isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{tag}/{k}", v, labels)
            elif isinstance(value, (list, tuple)):
                for i, v in enumerate(value):
                    walk(f"{tag}/{labels[i] if labels and i < len(labels) else i}", v, None)

        for key, value in rec.items():
            if key != "step":
                walk(key, value, cls.LIST_LABELS.get(key))
        return out

    def __init__(self, path: Path, main: bool, tensorboard: bool | None = None) -> None:
        """tensorboard: None reads run.tensorboard from the folder's config.json (the trainer saves the
        config before it opens the folder)."""
        self.path, self.main = Path(path), main
        self._log = open(self.path / "train.log", "a") if main else None
        if tensorboard is None and main:
            run_group = (read_json(self.path / "config.json") or {}).get("run")
            tensorboard = bool(run_group.get("tensorboard", False)) if isinstance(run_group, dict) else False
        self.tensorboard = bool(main and tensorboard)
        self._tb: Any = None

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "ckpt.pt"

    def log(self, msg: str) -> None:
        """Keep a line in train.log and print it."""
        if self._log is not None:
            self._log.write(msg + "\n")
            self._log.flush()
            _echo(msg)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tb is not None:
            self._tb.close()  # flushes what is still queued
            self._tb = None

    def _open_tensorboard(self, purge_step: int | None) -> None:
        """purge_step: TensorBoard hides the events of earlier writers in this folder from that step on,
        as trim_metrics and start_metrics drop their metrics lines (0: a fresh start hides them all)."""
        if not self.tensorboard or self._tb is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch re-raises a missing or too old tensorboard as ImportError
            raise ConfigError(self.TENSORBOARD_MISSING.format(why=e)) from None
        self._tb = SummaryWriter(str(self.path / self.TENSORBOARD_DIR), purge_step=purge_step, flush_secs=10)

    # -- metrics.jsonl: appended a line per step, so a crash loses at most the line being written --
    def start_metrics(self) -> None:
        if self.main:
            self._open_tensorboard(purge_step=0)
            atomic_write(self.metrics_path, "")

    def append_metrics(self, rec: dict[str, Any]) -> None:
        if self.main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if self.tensorboard:
                self._open_tensorboard(purge_step=None)
                for tag, value in self.tensorboard_scalars(rec).items():
                    self._tb.add_scalar(tag, value, global_step=rec["step"])

    def trim_metrics(self, step: int) -> tuple[int, bool]:
        """Back to the checkpoint at `step`: drop what a stopped process wrote after it (later steps, a
        final record) and a torn last line (a process killed mid-write). Returns (lines dropped, whether
        the last was torn). A damaged line before the end is no crash residue and is refused."""
        if not self.main:
            return 0, False
        self._open_tensorboard(purge_step=step + 1)
        lines = [ln for ln in self.metrics_path.read_text().split("\n") if ln.strip()] \
            if self.metrics_path.exists() else []
        keep, torn = [], False
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
                rec_step = rec["step"] if isinstance(rec, dict) else None
            except ValueError:
                rec, rec_step = None, None
            if not isinstance(rec_step, int):
                if i == len(lines) - 1:
                    torn = True
                    break
                raise RunFileError(
                    f"{self.metrics_path} line {i + 1} is not a metrics record ({line[:60]!r}); only the last line "
                    "can be torn by a crash. Delete or mend that line and --resume, or --force to start over")
            if rec_step <= step and not rec.get("final"):
                keep.append(line)
        atomic_write(self.metrics_path, "".join(ln + "\n" for ln in keep))
        return len(lines) - len(keep), torn

    # -- weights and state --
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        if self.main:
            atomic_write(self.checkpoint_path, lambda f: torch.save(state, f))
            if self._tb is not None:
                self._tb.flush()  # a process killed later still leaves the events up to its checkpoint

    def load_checkpoint(self, device: torch.device) -> dict[str, Any]:
        """The checkpoint, loaded as data only (weights_only: a checkpoint never runs code)."""
        path = self.checkpoint_path
        size = path.stat().st_size if path.exists() else None
        try:
            ck = torch.load(path, map_location=device, weights_only=True)
        except Exception as e:
            # torch's own message would suggest weights_only=False, which executes whatever the file holds
            why = ("missing" if size is None else "empty (0 bytes)" if size == 0
                   else f"{size} bytes, unreadable: {type(e).__name__}")
            raise RunFileError(f"{path} is {why}: not a checkpoint this trainer wrote, or damaged since. "
                               "--force moves the folder aside and starts over (or put back an intact "
                               "ckpt.pt and --resume)") from None
        missing = [k for k in ("step", "model", "optim", "loader", "rng") if not isinstance(ck, dict) or k not in ck]
        if missing:
            raise RunFileError(f"{path} lacks {missing}: not a checkpoint of this trainer. --force moves the folder "
                               "aside and starts over")
        return ck

    def save_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        if self.main:
            atomic_write(self.path / "model.pt", lambda f: torch.save(state_dict, f))

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.main:
            atomic_write(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")


def _echo(msg: str) -> None:
    """Print a line; once nobody reads our output (the runner that started us died), go on silently."""
    try:
        print(msg, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the pending buffer and later prints go nowhere, harmlessly
        os.close(devnull)
