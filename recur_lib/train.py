"""Train one job. `python -m recur_lib.train --preset quick` or, for N processes,
`torchrun --nproc_per_node N -m recur_lib.train --config cfg.json`.

One run folder holds everything: config.json, train.log, metrics.jsonl (a line per step: loss, lr,
tokens, time; on log steps per-group update RMS and per-loop LoRA norms; on val steps val bpb),
summary.json (status, bpb, speed, provenance), ckpt.pt (resumable) and model.pt (the weights that
evaluation and export use: SWA/EMA when on). The loop calls named steps; every trick is in the model.

A run ends as `finished`, `diverged` (NaN/inf loss, or above train.diverge_loss for
train.diverge_patience steps: a result, with the last good checkpoint kept), `interrupted` (Ctrl-C:
a checkpoint is written, `--resume` continues), or `failed` (an error, recorded with its message).
A resumed run reproduces the uninterrupted run's losses bitwise on CPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import __version__, device
from .config import Config, ConfigError
from .data import open_data
from .evaluate import eval_bpb
from .loader import DistributedTokenLoader, load_tokens, trim_for_eval
from .model import RecurGPT, build_model
from .muon import Optimizers
from .paths import PROJECT_ROOT, resolve
from .quant import set_qat

FINAL_STATUSES = ("finished", "diverged")


class RunExistsError(RuntimeError):
    """The run folder already holds a run that this call would overwrite."""


@dataclass
class RunResult:
    run_dir: Path
    status: str
    summary: dict[str, Any]


# -- the learning-rate schedule and the weight averages ---------------------------------------------


def lr_scale(step: int, elapsed_s: float, cfg: Config) -> float:
    """1) linear warmup, 2) constant, 3) linear warmdown over the last warmdown_iters steps, or,
    with a wall-clock cap, over the time those steps take at the current pace (as the baseline)."""
    t = cfg.train
    warm = (step + 1) / t.warmup_steps if step < t.warmup_steps else 1.0
    if t.warmdown_iters == 0:
        return warm
    if t.max_wallclock_s > 0 and step > 0:
        warmdown_s = t.warmdown_iters * elapsed_s / step
        remaining = max(t.max_wallclock_s - elapsed_s, 0.0)
        down = remaining / warmdown_s if remaining <= warmdown_s else 1.0
    else:
        start = t.iterations - t.warmdown_iters
        down = (t.iterations - step) / t.warmdown_iters if step >= start else 1.0
    return min(warm, down)


def muon_momentum(step: int, cfg: Config) -> float:
    o = cfg.optim
    if o.muon_momentum_warmup_steps == 0:
        return o.muon_momentum
    frac = min(step / o.muon_momentum_warmup_steps, 1.0)
    return (1 - frac) * o.muon_momentum_warmup_start + frac * o.muon_momentum


class WeightAverager:
    """EMA (decay per step) and SWA (uniform average of snapshots every k steps from a start step)."""

    def __init__(self, model: torch.nn.Module, cfg: Config) -> None:
        t = cfg.train
        self.decay = t.ema_decay
        self.swa_start = math.ceil(t.swa_start_frac * t.iterations) if t.swa_start_frac > 0 else None
        self.swa_every = t.swa_every
        params = dict(model.named_parameters())
        self.ema = {n: p.detach().float().clone() for n, p in params.items()} if self.decay else None
        self.swa: dict[str, torch.Tensor] | None = None
        self.swa_count = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """Call after the optimizer step that completes `step` steps."""
        params = dict(model.named_parameters())
        if self.ema is not None:
            for n, p in params.items():
                self.ema[n].lerp_(p.detach().float(), 1 - self.decay)
        if self.swa_start is not None and step >= self.swa_start and (step - self.swa_start) % self.swa_every == 0:
            self.swa_count += 1
            if self.swa is None:
                self.swa = {n: p.detach().float().clone() for n, p in params.items()}
            else:
                for n, p in params.items():
                    self.swa[n].add_((p.detach().float() - self.swa[n]) / self.swa_count)

    def choose(self, mode: str) -> tuple[str, dict[str, torch.Tensor] | None]:
        if mode == "auto":
            mode = "swa" if self.swa is not None else "ema" if self.ema is not None else "raw"
        if mode == "swa" and self.swa is None:
            raise ConfigError("train.eval_weights = 'swa' but no SWA snapshot was taken (set train.swa_start_frac)")
        if mode == "ema" and self.ema is None:
            raise ConfigError("train.eval_weights = 'ema' but EMA is off (set train.ema_decay)")
        return mode, {"swa": self.swa, "ema": self.ema, "raw": None}[mode]

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema, "swa": self.swa, "swa_count": self.swa_count}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.ema, self.swa, self.swa_count = s["ema"], s["swa"], s["swa_count"]


# -- what gets logged --------------------------------------------------------------------------------


@torch.no_grad()
def lora_norms(model: RecurGPT) -> dict[str, list[float]]:
    """Per (block, loop, target): Frobenius norms of A, B and of the product BA (u, v, uv^T for vectors)."""
    out: dict[str, list[float]] = {}
    if model.loop_lora is None:
        return out
    for key, lora in model.loop_lora.items():
        for target, f in lora.items():
            if f.form == "vectors":
                a, b = f.v.norm().item(), f.u.norm().item()
                out[f"{key}.{target}"] = [a, b, a * b]
            else:
                A, B = f.A.float(), f.B.float()
                ba = torch.trace((B.T @ B) @ (A @ A.T)).clamp_min(0).sqrt().item()  # ||BA||_F without forming BA
                out[f"{key}.{target}"] = [A.norm().item(), B.norm().item(), ba]
    return out


def git_commit() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


# -- the run folder ----------------------------------------------------------------------------------


def run_dir_for(cfg: Config) -> Path:
    return resolve(cfg.run.out_dir) / cfg.run.name


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


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
        train_keys = {k for k in changed if k.split(".")[0] in ("model", "schedule", "optim", "quant", "data")
                      or k in ("train.batch_tokens", "train.seq_len", "train.grad_accum_steps")}
        if train_keys:
            raise ConfigError(f"--resume with a config that differs from {run_dir / 'config.json'} in "
                              f"{sorted(train_keys)}; resume with the saved config or start a new run")
    run_dir.mkdir(parents=True, exist_ok=True)
    return has_ckpt and resume


# -- the job -----------------------------------------------------------------------------------------


class _Log:
    def __init__(self, run_dir: Path, main: bool) -> None:
        self.main = main
        self.file = open(run_dir / "train.log", "a") if main else None

    def __call__(self, msg: str) -> None:
        if self.main:
            print(msg, flush=True)
            assert self.file is not None
            self.file.write(msg + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()


def train(cfg: Config, run_dir: str | Path | None = None, resume: bool = False, force: bool = False,
          stop_at_step: int | None = None) -> RunResult:
    """Train per cfg into run_dir (default runs/<run.name>). stop_at_step simulates an interruption
    (a checkpoint is written and the run is left resumable), for tests and notebooks."""
    rt = device.setup(cfg.run)
    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(cfg)
    can_resume = False
    if rt.is_main:
        can_resume = prepare_run_dir(run_dir, cfg, resume, force)
        cfg.save(run_dir / "config.json")
    if rt.distributed:
        flag = [can_resume]
        dist.broadcast_object_list(flag, src=0)
        can_resume = bool(flag[0])
    log = _Log(run_dir, rt.is_main)
    try:
        return _train(cfg, rt, run_dir, can_resume, stop_at_step, log)
    except Exception as e:
        if rt.is_main:  # a crash is recorded as a result too, so a sweep can show it and go on
            _atomic_json(run_dir / "summary.json", {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                                    "config": cfg.to_dict(), "git_commit": git_commit()})
            log(f"failed: {type(e).__name__}: {e}")
        raise
    finally:
        log.close()


def _train(cfg: Config, rt: device.Runtime, run_dir: Path, resume: bool, stop_at_step: int | None, log: _Log) -> RunResult:
    t = cfg.train
    data = open_data(cfg)
    loader = DistributedTokenLoader(data.train_files, rt.rank, rt.world_size, cfg.model.vocab_size)
    val_tokens = trim_for_eval(load_tokens(data.val_files, cfg.model.vocab_size, cfg.data.val_max_tokens), cfg.eval.seq_len)
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg).to(rt.device)
    opt = Optimizers(model, cfg)
    averager = WeightAverager(model, cfg)
    # Before #1406-style repeats switch on, the second pass's per-loop parameters get no gradient.
    unused = cfg.schedule.kind == "repeat" and cfg.schedule.repeat_start_frac > 0
    ddp = (torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False, find_unused_parameters=unused)
           if rt.distributed else model)
    runner = device.maybe_compile(ddp, cfg.run)
    repeat_start = math.ceil(cfg.schedule.repeat_start_frac * t.iterations)
    qat_start = math.ceil(cfg.quant.qat_start_frac * t.iterations) if cfg.quant.qat_bits else None
    step, elapsed, above, best_val, last_good_step = 0, 0.0, 0, float("inf"), 0
    metrics_path = run_dir / "metrics.jsonl"
    if resume:
        ck = torch.load(run_dir / "ckpt.pt", map_location=rt.device, weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optim"])
        averager.load_state_dict(ck["averager"])
        loader.load_state_dict(ck["loader"])
        device.set_rng_state(ck["rng"], rt)
        step, elapsed, above, best_val = ck["step"], ck["elapsed"], ck["above"], ck["best_val"]
        last_good_step = step
        if rt.is_main:  # drop lines an interrupted process wrote after its last checkpoint
            lines = metrics_path.read_text().splitlines() if metrics_path.exists() else []
            metrics_path.write_text("".join(ln + "\n" for ln in lines if json.loads(ln)["step"] <= step))
        log(f"resumed from step {step} ({elapsed:.1f} s of training)")
    else:
        if rt.is_main:
            metrics_path.write_text("")
        log(f"recur_lib {__version__}, torch {torch.__version__}, {rt.device} x {rt.world_size}, {rt.dtype}")
        log(model.describe())
        log(opt.table())
        if t.val_every:  # the starting point of the val curve
            model.repeats_on = repeat_start == 0
            v0 = eval_bpb(model, val_tokens, data.tables, cfg.eval.seq_len, cfg.eval.batch_tokens, rt)
            if rt.is_main:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps({"step": 0, "time": 0.0, "tokens": 0, **v0}) + "\n")
            log(f"step 0 val_bpb {v0['val_bpb']:.4f}")

    def checkpoint() -> None:
        if rt.is_main:
            state = {"step": step, "elapsed": elapsed, "above": above, "best_val": best_val,
                     "model": model.state_dict(), "optim": opt.state_dict(), "averager": averager.state_dict(),
                     "loader": loader.state_dict(), "rng": device.rng_state(rt)}
            tmp = run_dir / "ckpt.pt.tmp"
            torch.save(state, tmp)
            os.replace(tmp, run_dir / "ckpt.pt")
        if rt.distributed:
            dist.barrier()

    def write_metrics(rec: dict[str, Any]) -> None:
        if rt.is_main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def validate() -> dict[str, float]:
        return eval_bpb(model, val_tokens, data.tables, cfg.eval.seq_len, cfg.eval.batch_tokens, rt)

    status, reason, last = "finished", "iterations", {}
    bar = _progress(t.iterations, step, rt)
    tokens_per_step = t.batch_tokens
    try:
        while step < t.iterations:
            if stop_at_step is not None and step >= stop_at_step:
                status, reason = "interrupted", f"stop_at_step {stop_at_step}"
                break
            if t.max_wallclock_s and _stop_for_time(elapsed, t.max_wallclock_s, rt):
                reason = "wallclock"
                break
            model.repeats_on = step >= repeat_start
            if qat_start is not None:
                set_qat(model, cfg.quant.qat_bits if step >= qat_start else 0, cfg.quant.clip_percentile)
            scale = lr_scale(step, elapsed, cfg)
            opt.set_lr_scale(scale)
            opt.set_muon_momentum(muon_momentum(step, cfg))
            log_step = (step + 1) % t.log_every == 0 or step + 1 == t.iterations
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=rt.device)
            for micro in range(t.grad_accum_steps):
                x, y = loader.next_batch(t.batch_tokens, t.seq_len, t.grad_accum_steps)
                x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
                sync = nullcontext() if (micro == t.grad_accum_steps - 1 or not rt.distributed) else ddp.no_sync()
                with sync, device.autocast(rt):
                    loss = runner(x, y) / t.grad_accum_steps
                loss.backward()
                loss_sum += loss.detach()
            train_loss = device.all_reduce_sum(loss_sum, rt).item() / rt.world_size
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            before = {g: [p.detach().clone() for _, p in named] for g, named in opt.groups.items()} if log_step else None
            opt.step()
            opt.zero_grad()
            averager.update(model, step + 1)
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            elapsed += time.perf_counter() - t0
            step += 1
            rec: dict[str, Any] = {"step": step, "time": round(elapsed, 4), "tokens": step * tokens_per_step,
                                   "train_loss": train_loss, "lr_scale": scale}
            bad = not math.isfinite(train_loss)
            above = above + 1 if (t.diverge_loss and train_loss > t.diverge_loss) else 0
            if log_step and before is not None:
                rec["update_rms"] = {g: _rms_change(before[g], [p for _, p in opt.groups[g]]) for g in opt.groups}
                norms = lora_norms(model)
                if norms:
                    rec["lora_norms"] = norms
            if bad or above >= t.diverge_patience:
                write_metrics(rec)
                status = "diverged"
                reason = (f"train loss {train_loss} at step {step}" if bad else
                          f"train loss above {t.diverge_loss} for {above} steps (step {step})")
                log(f"diverged: {reason}; the last good checkpoint (step {last_good_step}) is kept")
                break
            if t.val_every and step % t.val_every == 0 and step < t.iterations:
                v = validate()
                rec.update(v)
                best_val = min(best_val, v["val_bpb"])
            write_metrics(rec)
            last = rec
            if bar is not None:
                bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{step * tokens_per_step / max(elapsed, 1e-9):,.0f}")
                bar.update(1)
            elif log_step:
                log(f"step {step}/{t.iterations} loss {train_loss:.4f} lr {scale:.3f} "
                    f"{step * tokens_per_step / max(elapsed, 1e-9):,.0f} tok/s" + (f" val_bpb {rec['val_bpb']:.4f}" if "val_bpb" in rec else ""))
            if t.ckpt_every and step % t.ckpt_every == 0 and above == 0:  # only good steps are checkpointed
                checkpoint()
                last_good_step = step
    except KeyboardInterrupt:
        status, reason = "interrupted", "KeyboardInterrupt"
        log("interrupted: writing a checkpoint; continue with --resume")
    finally:
        if bar is not None:
            bar.close()

    summary: dict[str, Any] = {"status": status, "reason": reason, "steps": step, "tokens": step * tokens_per_step,
                               "train_time_s": round(elapsed, 3),
                               "tokens_per_s": step * tokens_per_step / elapsed if elapsed else None,
                               "final_train_loss": last.get("train_loss")}
    if status == "interrupted":
        checkpoint()
    elif status == "finished":
        checkpoint()
        used, weights = averager.choose(t.eval_weights)
        if weights is not None:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(weights[n].to(p.dtype))
        model.repeats_on = True
        v = validate()
        best_val = min(best_val, v["val_bpb"])
        summary.update({"final_val_bpb": v["val_bpb"], "final_val_loss": v["val_loss"], "val_tokens": v["val_tokens"],
                        "val_bytes": v["val_bytes"], "eval_weights": used})
        write_metrics({"step": step, "time": round(elapsed, 4), "tokens": step * tokens_per_step, "final": True, **v})
        if rt.is_main:
            torch.save(model.state_dict(), run_dir / "model.pt.tmp")
            os.replace(run_dir / "model.pt.tmp", run_dir / "model.pt")
    else:  # diverged: the last checkpoint (if any) holds the last good weights
        summary.update({"diverged_at_step": step, "last_good_step": last_good_step,
                        "last_good_checkpoint": (run_dir / "ckpt.pt").exists()})
    summary.update({"best_val_bpb": best_val if math.isfinite(best_val) else None,
                    "world_size": rt.world_size, "threads": torch.get_num_threads(), "device": str(rt.device), "dtype": str(rt.dtype).replace("torch.", ""),
                    "torch": torch.__version__, "recur_lib": __version__, "git_commit": git_commit(),
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "config": cfg.to_dict()})
    if rt.is_main:
        _atomic_json(run_dir / "summary.json", summary)
        log(f"{status} ({reason}): {step} steps, {summary['tokens_per_s'] or 0:,.0f} tok/s"
            + (f", val_bpb {summary['final_val_bpb']:.4f}" if "final_val_bpb" in summary else ""))
    return RunResult(run_dir, status, summary)


def _rms_change(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    sq = sum(float((a.detach().float() - b.float()).pow(2).sum()) for a, b in zip(after, before))
    n = sum(b.numel() for b in before)
    return math.sqrt(sq / max(n, 1))


def _stop_for_time(elapsed: float, cap: float, rt: device.Runtime) -> bool:
    flag = torch.tensor(float(elapsed >= cap), device=rt.device)
    return bool(device.all_reduce_sum(flag, rt).item() > 0)  # all ranks stop on the same step


def _progress(total: int, start: int, rt: device.Runtime) -> Any:
    if not rt.is_main or not sys.stderr.isatty():
        return None  # plain log lines instead
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)


# -- command line ------------------------------------------------------------------------------------


def add_train_args(p: argparse.ArgumentParser) -> None:
    from .cli import add_config_args
    add_config_args(p)
    p.add_argument("--run-dir", help="run folder (default: run.out_dir/run.name)")
    p.add_argument("--resume", action="store_true", help="continue the run in the folder from its checkpoint")
    p.add_argument("--force", action="store_true", help="move an existing run aside and train again")
    p.add_argument("--reuse", action="store_true",
                   help="a finished run in the folder is reported instead of retrained; an unfinished one resumes")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="recur train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_args(p)
    args = p.parse_args(argv)
    return run_cli(args)


def run_cli(args: argparse.Namespace) -> int:
    from .cli import config_from_args
    try:
        cfg = config_from_args(args)
        run_dir = Path(args.run_dir) if args.run_dir else run_dir_for(cfg)
        resume = args.resume
        if args.reuse and not args.force:
            done = read_summary(run_dir)
            if done and done.get("status") in FINAL_STATUSES:
                print(f"{run_dir}: reusing the {done['status']} run (val_bpb {done.get('final_val_bpb')}); "
                      "--force to train again")
                return 0
            resume = resume or (run_dir / "ckpt.pt").exists()
        result = train(cfg, run_dir, resume=resume, force=args.force)
    except (ConfigError, RunExistsError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        device.teardown()
    return {"finished": 0, "diverged": 0, "interrupted": 130}.get(result.status, 1)


if __name__ == "__main__":
    sys.exit(main())
