"""A run folder: what one training job leaves behind, and how it is read back.

    config.json    the resolved config          train.log      what the job printed
    metrics.jsonl  a line per step              summary.json   status, bpb, speed, provenance
    ckpt.pt        resumable state              model.pt       the weights evaluation and export use
    eval.json      `recur eval` (and <variant>.json for extra evaluations)

A run ends `finished`, `diverged`, `interrupted` (a checkpoint is kept, `--resume` continues) or
`failed` (the error is in summary.json). The trainer writes through `RunFolder`; the runner and the
notebooks only read (`read_summary`, `read_eval`), so they never import the trainer.
"""
from __future__ import annotations

import json
import subprocess
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


class RunExistsError(RuntimeError):
    """The run folder already holds a run that this call would overwrite."""


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


def prepare_run_dir(run_dir: Path, cfg: Config, resume: bool, force: bool) -> bool:
    """Check what the folder holds; returns True when there is a checkpoint to resume from."""
    summary = read_summary(run_dir)
    has_ckpt = (run_dir / "ckpt.pt").exists()
    if force and run_dir.exists() and any(run_dir.iterdir()):
        # --force keeps the old run beside the new one rather than deleting a result
        backup = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(backup)
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
        saved = Config.load(run_dir / "config.json")
        changed = {k: v for k, v in cfg.diff(saved).items() if not k.startswith("run.")}
        fixed = {k for k in changed if k.split(".")[0] in RESUME_FIXED_GROUPS or k in RESUME_FIXED_FIELDS}
        if fixed:
            raise ConfigError(f"--resume with a config that differs from {run_dir / 'config.json'} in "
                              f"{sorted(fixed)}; resume with the saved config or start a new run")
    run_dir.mkdir(parents=True, exist_ok=True)
    return has_ckpt and resume


class RunFolder:
    """The trainer's writer for one run folder. Only the main process writes; on other ranks every
    method is a no-op, so the training loop calls them unconditionally."""

    def __init__(self, path: Path, main: bool) -> None:
        self.path, self.main = Path(path), main
        self._log = open(self.path / "train.log", "a") if main else None

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "ckpt.pt"

    def log(self, msg: str) -> None:
        """Print a line and keep it in train.log."""
        if self._log is not None:
            print(msg, flush=True)
            self._log.write(msg + "\n")
            self._log.flush()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- metrics.jsonl: appended a line per step, so a crash loses at most the line being written --
    def start_metrics(self) -> None:
        if self.main:
            self.metrics_path.write_text("")

    def append_metrics(self, rec: dict[str, Any]) -> None:
        if self.main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def trim_metrics(self, step: int) -> None:
        """Drop the lines an interrupted process wrote after its last checkpoint (at `step`)."""
        if self.main:
            lines = self.metrics_path.read_text().splitlines() if self.metrics_path.exists() else []
            atomic_write(self.metrics_path, "".join(ln + "\n" for ln in lines if json.loads(ln)["step"] <= step))

    # -- weights and state --
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        if self.main:
            atomic_write(self.checkpoint_path, lambda f: torch.save(state, f))

    def load_checkpoint(self, device: torch.device) -> dict[str, Any]:
        return torch.load(self.checkpoint_path, map_location=device, weights_only=True)

    def save_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        if self.main:
            atomic_write(self.path / "model.pt", lambda f: torch.save(state_dict, f))

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.main:
            atomic_write(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")
