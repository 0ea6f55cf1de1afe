"""Train one job: `train(cfg)` from Python, `recur train` from a shell, or over N processes
`torchrun --nproc_per_node N -m recur_lib.cli train --config cfg.json`.

The loop reads top to bottom: set up the job (`_setup`), start or resume it (`_start`, `_restore`),
take steps (`_step`), watch for divergence, validate, checkpoint, and finish (`_finish`: the weights
that evaluation and export use, the final val bpb, summary.json). Every trick is in the model; every
file is written through the run folder (`rundir.RunFolder`).

A run ends as `finished`, `diverged` (a result, with the last good checkpoint kept: see `watch_loss`),
`interrupted` (Ctrl-C or SIGTERM: the step under way completes, a checkpoint is written, `--resume`
continues), or `failed` (an error, recorded with its message). A resumed run reproduces the
uninterrupted run's losses bitwise on CPU. One process trains in a run folder at a time (it holds the
folder's lock for the whole run); checkpoints come every train.ckpt_every steps, by default about every
5 minutes of training.
"""
from __future__ import annotations

import copy
import math
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from . import device
from .config import Config, ConfigError, QuantConfig
from .data import open_data
from .data.bpb import ByteTables
from .data.loader import DistributedTokenLoader, load_tokens, trim_for_eval
from .evaluate import eval_bpb
from .model import RecurGPT, build_model
from .optim import Optimizers
from .quant import set_qat, set_quant_noise
from .rundir import RunFolder, RunLock, git_commit, prepare_run_dir, run_dir_for
from .version import __version__

# train.ckpt_every = 0: a checkpoint once this much training time has passed since the last one.
AUTO_CKPT_S = 300.0
# The divergence monitor's smoothing: an EMA with a horizon of about 10 steps. Its running minimum is
# biased low by noise; at 0.5 nat of per-step noise (5x what the smoke preset shows) the smoothed loss
# still stays within 0.7 nat of it over 3,000 steps (tested), where a 5-step horizon reaches 1 nat.
LOSS_EMA_ALPHA = 0.1
# A rise of the smoothed loss this far above its running minimum counts as a spike (instability
# statistics); the spike ends when the rise falls back below half of it.
SPIKE_NATS = 0.5


@dataclass(frozen=True)
class LossWatch:
    """The divergence monitor's state after some steps: the smoothed train loss, its running minimum,
    the streak of bad steps, and the run's instability statistics."""
    ema: float | None = None        # smoothed train loss (None before the first step)
    floor: float = math.inf         # running minimum of the smoothed loss
    bad: int = 0                    # consecutive steps meeting a divergence criterion
    peak_excess: float = 0.0        # largest rise of the smoothed loss above its running minimum
    spikes: int = 0                 # rises above SPIKE_NATS, each counted once
    in_spike: bool = False


def watch_loss(w: LossWatch, loss: float, rel_nats: float, patience: int,
               limit: float = 0.0) -> tuple[LossWatch, str | None]:
    """One step of the divergence monitor (pure): the new state, and why the run has diverged or None.

    A step is bad when the smoothed loss is more than `rel_nats` above its running minimum (0 = off), or
    the loss itself above `limit` (0 = off); `patience` bad steps in a row are a divergence. A NaN or
    inf loss is one at once. The relative rule needs no knowledge of the loss scale: a logit softcap
    bounds the loss of a broken model (no NaN ever comes), and no fixed threshold fits every vocab."""
    if not math.isfinite(loss):
        return replace(w, bad=w.bad + 1), f"train loss {loss}"
    ema = loss if w.ema is None else w.ema + LOSS_EMA_ALPHA * (loss - w.ema)
    floor = min(w.floor, ema)
    excess = ema - floor
    rising = rel_nats > 0 and excess > rel_nats
    high = limit > 0 and loss > limit
    bad = w.bad + 1 if (rising or high) else 0
    in_spike = excess > SPIKE_NATS or (w.in_spike and excess > SPIKE_NATS / 2)
    new = LossWatch(ema, floor, bad, max(w.peak_excess, excess), w.spikes + int(in_spike and not w.in_spike), in_spike)
    if bad < patience:
        return new, None
    if high:
        return new, f"train loss above {limit} for {bad} steps"
    return new, f"smoothed train loss {ema:.3f} more than {rel_nats} nat above its minimum {floor:.3f} for {bad} steps"


def diverge_patience(cfg: Config) -> int:
    """train.diverge_patience, capped at a fifth of a short run (at least 5 steps) so that a short run
    can diverge before it ends."""
    t = cfg.train
    return min(t.diverge_patience, max(5, t.iterations // 5))


@dataclass
class TrainState:
    """Where a run stands: the non-tensor part of its checkpoint."""
    step: int = 0
    elapsed: float = 0.0            # seconds spent in training steps (validation excluded)
    best_val: float = float("inf")
    last_good_step: int = 0         # the step of the last checkpoint written from a good step
    ckpt_elapsed: float = 0.0       # training time at the last checkpoint (for train.ckpt_every = 0)
    last_loss: float | None = None  # the last good step's train loss
    qat: bool = False               # fake quantization on in the last step (and so in validation after it)
    watch: LossWatch = field(default_factory=LossWatch)
    warnings: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    run_dir: Path
    status: str
    summary: dict[str, Any]


# -- the learning-rate schedule and the weight averages ---------------------------------------------


def lr_scale(step: int, elapsed_s: float, cfg: Config) -> float:
    """1) linear warmup (none in the baseline), 2) constant, 3) linear warmdown over the last warmdown
    steps, or, with a wall-clock cap, over the time those steps take at the current pace (as the baseline)."""
    t, ph = cfg.train, cfg.phases()
    warmup, warmdown = ph["lr_warmup_steps"], ph["warmdown_steps"]
    warm = (step + 1) / warmup if step < warmup else 1.0
    if warmdown == 0:
        return warm
    if t.max_wallclock_s > 0 and step > 0:
        warmdown_s = warmdown * elapsed_s / step
        remaining = max(t.max_wallclock_s - elapsed_s, 0.0)
        down = remaining / warmdown_s if remaining <= warmdown_s else 1.0
    else:
        start = t.iterations - warmdown
        down = (t.iterations - step) / warmdown if step >= start else 1.0
    return min(warm, down)


def muon_momentum(step: int, cfg: Config) -> float:
    o, warmup = cfg.optim, cfg.phases()["muon_momentum_warmup_steps"]
    if warmup == 0:
        return o.muon_momentum
    frac = min(step / warmup, 1.0)
    return (1 - frac) * o.muon_momentum_warmup_start + frac * o.muon_momentum


def repeats_on(step: int, elapsed_s: float, start_step: int, cfg: Config) -> bool:
    """Whether a repeat schedule runs its extra passes at this step: from repeat_start_frac of the steps, or
    of the wall-clock cap (schedule.repeat_start_unit = 'clock', as the records since #1855 switch their
    loop on at 35% of the training time; training time as the warmdown's clock counts it). Once on, a
    clock switch stays on, as theirs does: training time only grows."""
    s, cap = cfg.schedule, cfg.train.max_wallclock_s
    if s.repeat_start_unit == "clock" and cap > 0:
        return elapsed_s >= s.repeat_start_frac * cap
    return step >= start_step


def _qat_args(q: QuantConfig) -> tuple[float, str]:
    """(clip percentile, scheme) of QAT and the training noise, in set_qat's order (`QuantConfig.qat_rule`)."""
    scheme, clip = q.qat_rule()
    return clip, scheme


def qat_on(step: int, lr_multiplier: float, cfg: Config) -> bool:
    """STE QAT from quant.qat_start_frac of the run (#927: from step 0; #1406: late), or once the LR
    multiplier drops below quant.qat_below_lr_scale (#1096: 0.5, in warmdown)."""
    q = cfg.quant
    if not q.qat_bits:
        return False
    return step >= cfg.phases()["qat_start_step"] or lr_multiplier < q.qat_below_lr_scale


def sampled_loops(step: int, cfg: Config) -> int | None:
    """The loop count of training step `step` under train.loop_sampling (None: the schedule's own).
    Huginn (Geiping et al. 2025, arXiv:2502.05171) trains with r ~ Poisson(tau), tau ~ LogNormal(log(r_mean) -
    sigma^2 / 2, sigma), so that the model sees many depths and can be run deeper at test time. The draw
    depends only on (run.seed, step): ranks agree and a resume continues the same sequence."""
    t = cfg.train
    if t.loop_sampling == "fixed":
        return None
    top = t.loop_sampling_max or 2 * cfg.schedule.n_loops
    rng = np.random.default_rng([cfg.run.seed, step, 0x100B])
    if t.loop_sampling == "uniform":
        return int(rng.integers(1, top + 1))
    sigma = 0.5
    tau = rng.lognormal(math.log(cfg.schedule.n_loops) - sigma ** 2 / 2, sigma)
    return int(min(top, max(1, rng.poisson(tau))))


def lora_lr_scale(step: int, cfg: Config) -> float:
    """The LoRA factors' extra LR multiplier: a linear warmup (#1096's v7 survived with one)."""
    warmup = cfg.phases()["lora_warmup_steps"]
    return (step + 1) / warmup if step < warmup else 1.0


class WeightAverager:
    """EMA (decay per step) and SWA (uniform average of snapshots every k steps from a start step).

    torch.optim.swa_utils.AveragedModel (EMA through get_ema_multi_avg_fn) computes the same numbers
    bitwise once its EMA is handed the initial weights (its first update copies instead of averaging;
    tested). This one stays because its state is two dicts of float32 tensors that the checkpoint holds
    as they are, where AveragedModel deep-copies the whole module, buffers included, per average.
    """

    def __init__(self, model: torch.nn.Module, cfg: Config) -> None:
        ph = cfg.phases()
        self.decay = ph["ema_decay"]
        self.swa_start = ph["swa_start_step"]
        self.swa_every = cfg.train.swa_every
        self.swa_below = cfg.train.swa_below_lr_scale
        params = dict(model.named_parameters())
        # on when set, even where a short run's horizon (ema_horizon_frac) makes the decay 0: the EMA is then the
        # last weights, and a seed that exports its EMA (train.eval_weights = 'ema') still can at smoke size
        on = cfg.train.ema_decay > 0 or cfg.train.ema_horizon_frac > 0
        self.ema = {n: p.detach().float().clone() for n, p in params.items()} if on else None
        self.swa: dict[str, torch.Tensor] | None = None
        self.swa_count = 0

    def swa_due(self, step: int, lr_scale: float) -> bool:
        """Whether the step that completes `step` steps, run at LR multiplier lr_scale, adds an SWA snapshot:
        every swa_every steps from the start step, or, with train.swa_below_lr_scale, every swa_every steps
        (counted from 0) while the multiplier is below it (#927, #1406 lineage: `scale < 0.2`, every 50)."""
        if self.swa_below:
            return lr_scale < self.swa_below and step % self.swa_every == 0 and step >= (self.swa_start or 0)
        return self.swa_start is not None and step >= self.swa_start and (step - self.swa_start) % self.swa_every == 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int, lr_scale: float = 1.0) -> None:
        """Call after the optimizer step that completes `step` steps, run at LR multiplier lr_scale."""
        params = dict(model.named_parameters())
        if self.ema is not None:
            for n, p in params.items():
                self.ema[n].lerp_(p.detach().float(), 1 - self.decay)
        if self.swa_due(step, lr_scale):
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
            raise ConfigError("train.eval_weights = 'swa' but no SWA snapshot was taken (set train.swa_start_frac or "
                              "train.swa_below_lr_scale)")
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
    """Per (block, loop, target): Frobenius norms of A, B and of the product BA (u, v, uv^T for vectors),
    and ||BA||_2 / ||W||_2, the delta's spectral norm against its base weight's: how far one loop's
    weight has moved from the shared one."""
    out: dict[str, list[float]] = {}
    if model.loop_lora is None:
        return out
    for key, lora in model.loop_lora.items():
        block = model.blocks[int(key.split("_")[0][1:])]
        for target, f in lora.items():
            w = _lora_base(block, target).weight.detach().float()
            w2 = torch.linalg.matrix_norm(w, ord=2).item()
            if f.form == "vectors":
                a, b = f.v.norm().item(), f.u.norm().item()
                out[f"{key}.{target}"] = [a, b, a * b, a * b / w2 if w2 else math.inf]
            else:
                A, B = f.A.float(), f.B.float()
                ba = torch.trace((B.T @ B) @ (A @ A.T)).clamp_min(0).sqrt().item()  # ||BA||_F without forming BA
                ba2 = torch.linalg.matrix_norm(B @ A, ord=2).item()
                out[f"{key}.{target}"] = [A.norm().item(), B.norm().item(), ba, ba2 / w2 if w2 else math.inf]
    return out


def _lora_base(block: torch.nn.Module, target: str) -> torch.nn.Module:
    """The projection a LoRA target adapts: q, k, v, o in attention, fc, proj in the MLP."""
    return getattr(block.attn if target in ("q", "k", "v", "o") else block.mlp, target)


# -- the job ------------------------------------------------------------------------------------------


@dataclass
class Job:
    """Everything one training job holds besides its TrainState."""
    cfg: Config
    rt: device.Runtime
    run: RunFolder
    model: RecurGPT
    ddp: torch.nn.Module            # the model, wrapped in DDP when distributed
    forward: torch.nn.Module        # what a step calls: ddp, compiled when run.compile
    opt: Optimizers
    averager: WeightAverager
    loader: DistributedTokenLoader
    val_tokens: np.ndarray
    tables: ByteTables
    repeat_start: int               # first step with #1406's repeats on
    qat_start: int | None           # first step of QAT (None: no QAT)


def train(cfg: Config, run_dir: str | Path | None = None, resume: bool = False, force: bool = False,
          stop_at_step: int | None = None) -> RunResult:
    """Train per cfg into run_dir (default runs/<run.name>). stop_at_step simulates an interruption
    (a checkpoint is written and the run is left resumable), for tests and notebooks. Raises
    RunLockedError when another process trains in the folder."""
    rt = device.setup(cfg.run)
    run_dir = Path(run_dir) if run_dir is not None else run_dir_for(cfg)
    can_resume, lock, refusal = False, None, None
    if rt.is_main:
        try:
            lock = RunLock.acquire(run_dir)  # first: what the folder holds is only read under the lock
            can_resume = prepare_run_dir(run_dir, cfg, resume, force, lock)
            cfg.save(run_dir / "config.json")
        except Exception as e:
            refusal = e
    if rt.distributed:  # the other ranks learn whether to resume, or that rank 0 refused
        flag = [can_resume, None if refusal is None else f"{type(refusal).__name__}: {refusal}"]
        dist.broadcast_object_list(flag, src=0)
        can_resume = bool(flag[0])
        if flag[1] is not None and refusal is None:
            refusal = RuntimeError(f"rank 0 refused the run: {flag[1]}")
    if refusal is not None:
        if lock is not None:
            lock.release()
        raise refusal
    run = RunFolder(run_dir, rt.is_main, tensorboard=cfg.run.tensorboard)
    try:
        with _StopSignals() as signals:
            return _train(cfg, rt, run, can_resume, stop_at_step, signals)
    except Exception as e:
        # a crash is recorded as a result too, so a sweep can show it and go on
        run.write_summary({"status": "failed", "error": f"{type(e).__name__}: {e}", "config": cfg.to_dict(),
                           "git_commit": git_commit() if rt.is_main else None})
        run.log(f"failed: {type(e).__name__}: {e}")
        raise
    finally:
        run.close()
        if lock is not None:
            lock.release()


class _StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (what a scheduler sends before it kills a job, and what a job the
    runner started gets when the runner dies) ask the loop to stop at the next step boundary, where the
    state is whole and a checkpoint can be written; the same signal again (Ctrl-C pressed twice)
    interrupts at once. A different one does not: a runner that sends SIGINT and then dies sends the
    job SIGTERM too, and that must not tear the step the first signal is waiting for. Handlers can only
    be set from the main thread; elsewhere Ctrl-C keeps Python's default."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received == name:
            raise KeyboardInterrupt
        self.received = self.received or name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _train(cfg: Config, rt: device.Runtime, run: RunFolder, resume: bool, stop_at_step: int | None,
           signals: _StopSignals) -> RunResult:
    t = cfg.train
    job = _setup(cfg, rt, run)
    state = _restore(job) if resume else _start(job)
    status, reason = "finished", "iterations"
    patience = diverge_patience(cfg)
    bar = _progress(t.iterations, state.step, rt)
    whole = True  # False from a step's first change of state until its metrics line is written
    try:
        while state.step < t.iterations:
            if stop_at_step is not None and state.step >= stop_at_step:
                status, reason = "interrupted", f"stop_at_step {stop_at_step}"
                break
            stop = _stop_reason(state.elapsed, t.max_wallclock_s, signals, rt)
            if stop == "wallclock":
                reason = stop
                break
            if stop is not None:
                status, reason = "interrupted", stop
                run.log(f"interrupted by {stop} after step {state.step}: writing a checkpoint; continue with --resume")
                break
            whole = False
            rec = _step(job, state)
            state.watch, diverged = watch_loss(state.watch, rec["train_loss"], t.diverge_rel_nats, patience,
                                               t.diverge_loss)
            if diverged:
                run.append_metrics(rec)
                whole = True
                status, reason = "diverged", f"{diverged} (step {state.step})"
                run.log(f"diverged: {reason}; " + (f"the last good checkpoint (step {state.last_good_step}) is kept"
                                                  if run.checkpoint_path.exists() else "no checkpoint was written"))
                break
            _warn_uniform(job, state, at_end=False)
            if t.val_every and state.step % t.val_every == 0 and state.step < t.iterations:
                rec.update(_validate(job))
                state.best_val = min(state.best_val, rec["val_bpb"])
            run.append_metrics(rec)
            state.last_loss = rec["train_loss"]
            whole = True
            _report(job, state, rec, bar)
            if _checkpoint_due(job, state):
                _checkpoint(job, state)
    except KeyboardInterrupt:
        status, reason = "interrupted", "KeyboardInterrupt"
        if whole:
            run.log("interrupted: writing a checkpoint; continue with --resume")
        else:
            run.log(f"interrupted inside step {state.step + 1}: its state is partly updated, so no checkpoint is "
                    f"written; --resume continues from the last one (step {state.last_good_step})")
    finally:
        if bar is not None:
            bar.close()
    return _finish(job, state, status, reason, checkpoint=whole)


def _setup(cfg: Config, rt: device.Runtime, run: RunFolder) -> Job:
    """Data, model, optimizers and weight averages, in the order that fixes the random streams."""
    data = open_data(cfg)
    loader = DistributedTokenLoader(data.train_files, rt.rank, rt.world_size, cfg.model.vocab_size,
                                    seed=cfg.run.seed if cfg.data.seed_offset else None)
    val_tokens = trim_for_eval(load_tokens(data.val_files, cfg.model.vocab_size, cfg.data.val_max_tokens), cfg.eval.seq_len)
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg).to(rt.device)
    if cfg.quant.noisy_qat_bits:  # #1096: the shared blocks only, the whole run
        for b in model.max_loop:
            set_quant_noise(model.blocks[b], cfg.quant.noisy_qat_bits, *_qat_args(cfg.quant))
    opt = Optimizers(model, cfg)
    averager = WeightAverager(model, cfg)
    # Before #1406-style repeats switch on, the second pass's per-loop parameters get no gradient.
    unused = cfg.schedule.kind == "repeat" and cfg.schedule.repeat_start_frac > 0
    ddp = (torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False, find_unused_parameters=unused)
           if rt.distributed else model)
    ph = cfg.phases()
    return Job(cfg, rt, run, model, ddp, device.maybe_compile(ddp, cfg.run), opt, averager, loader, val_tokens,
               data.tables, repeat_start=ph["repeat_start_step"], qat_start=ph["qat_start_step"])


def _start(job: Job) -> TrainState:
    """A fresh run: an empty metrics file, the job's header in the log, and the val bpb at step 0."""
    run, rt = job.run, job.rt
    run.start_metrics()
    run.log(f"recur_lib {__version__}, torch {torch.__version__}, {rt.device} x {rt.world_size}, {rt.dtype}")
    run.log(job.model.describe())
    run.log(job.opt.table())
    run.log("phases    " + ", ".join(f"{k} {v}" for k, v in job.cfg.phases().items()))
    for w in job.cfg.schedule_warnings():
        run.log(f"warning: {w}")
    if job.cfg.train.warmup_steps:
        _prime(job)
    if job.cfg.train.val_every:  # the starting point of the val curve
        job.model.repeats_on = job.repeat_start == 0
        v0 = _validate(job)
        run.append_metrics({"step": 0, "time": 0.0, "tokens": 0, **v0})
        run.log(f"step 0 val_bpb {v0['val_bpb']:.4f}")
    return TrainState()


def _prime(job: Job) -> None:
    """The baseline's warmup: train.warmup_steps real steps that compile and warm every kernel the run
    will use, then weights, optimizer and averager state, the loader position and the RNG go back to
    where they were, so the run computes exactly what it would have without them (tested). Their time
    does not count as training time."""
    saved = copy.deepcopy({"model": job.model.state_dict(), "optim": job.opt.state_dict(),
                           "averager": job.averager.state_dict(), "loader": job.loader.state_dict()})
    rng = device.rng_state(job.rt)
    scratch = TrainState()
    for _ in range(job.cfg.train.warmup_steps):
        _step(job, scratch)
    job.model.load_state_dict(saved["model"])
    job.opt.load_state_dict(saved["optim"])
    job.averager.load_state_dict(saved["averager"])
    job.loader.load_state_dict(saved["loader"])
    device.set_rng_state(rng, job.rt)
    job.opt.zero_grad()
    job.run.log(f"primed {job.cfg.train.warmup_steps} steps ({scratch.elapsed:.1f} s), then restored the initial state")


def _restore(job: Job) -> TrainState:
    """Continue from ckpt.pt: weights, optimizer and averager state, loader position, RNG, the
    divergence monitor; metrics.jsonl goes back to the checkpoint's step."""
    ck = job.run.load_checkpoint(job.rt.device)
    saved_world = ck.get("world_size")  # checkpoints written before it was recorded do not say
    if saved_world is not None and saved_world != job.rt.world_size:
        # each rank reads its own slice of every batch, and the loader's position and the RNG are the world's:
        # another world size would continue on other tokens and end at another val_bpb
        raise ValueError(f"{job.run.checkpoint_path} was written by a {saved_world}-process run; this one has "
                         f"{job.rt.world_size}: resume it with `torchrun --nproc_per_node {saved_world}` (run.nproc "
                         f"= {saved_world}), or --force to move the folder aside and train anew")
    job.model.load_state_dict(ck["model"])
    job.opt.load_state_dict(ck["optim"])
    job.averager.load_state_dict(ck["averager"])
    job.loader.load_state_dict(ck["loader"])
    device.set_rng_state(ck["rng"], job.rt)
    saved = {f.name: ck[f.name] for f in fields(TrainState) if f.name in ck}  # older checkpoints lack some
    if isinstance(saved.get("watch"), dict):
        saved["watch"] = LossWatch(**saved["watch"])
    state = TrainState(**saved)
    state.last_good_step = state.step  # the checkpoint itself is the last good state
    if state.qat:  # as the last step left the model: a run resumed at its end validates as it would have
        q = job.cfg.quant
        set_qat(job.model, q.qat_bits, *_qat_args(q))
    dropped, torn = job.run.trim_metrics(state.step)
    job.run.log(f"resumed from step {state.step} ({state.elapsed:.1f} s of training)"
                + (f"; dropped {dropped} metrics lines written after it" + (", the last one torn" if torn else "")
                   if dropped else ""))
    return state


def _step(job: Job, state: TrainState) -> dict[str, Any]:
    """One optimizer step over train.grad_accum_steps micro-batches; returns the step's metrics record
    (on log steps with the per-group update RMS and the LoRA factor norms)."""
    cfg, rt, model, opt = job.cfg, job.rt, job.model, job.opt
    t = cfg.train
    model.repeats_on = repeats_on(state.step, state.elapsed, job.repeat_start, cfg)
    scale = lr_scale(state.step, state.elapsed, cfg)
    if job.qat_start is not None:
        state.qat = qat_on(state.step, scale, cfg)
        set_qat(model, cfg.quant.qat_bits if state.qat else 0, *_qat_args(cfg.quant))
    opt.set_lr_scale(scale, lora_scale=lora_lr_scale(state.step, cfg))
    opt.set_muon_momentum(muon_momentum(state.step, cfg))
    log_step = (state.step + 1) % t.log_every == 0 or state.step + 1 == t.iterations
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=rt.device)
    loops = sampled_loops(state.step, cfg)
    extra = {} if loops is None else {"n_loops": loops}
    for micro in range(t.grad_accum_steps):
        x, y = job.loader.next_batch(t.batch_tokens, t.seq_len, t.grad_accum_steps)
        x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
        sync = nullcontext() if (micro == t.grad_accum_steps - 1 or not rt.distributed) else job.ddp.no_sync()
        with sync, device.autocast(rt):
            loss = job.forward(x, y, **extra) / t.grad_accum_steps
        loss.backward()
        loss_sum += loss.detach()
    train_loss = device.all_reduce_sum(loss_sum, rt).item() / rt.world_size
    if t.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    before = {g: [p.detach().clone() for _, p in named] for g, named in opt.groups.items()} if log_step else None
    opt.step()
    opt.zero_grad()
    job.averager.update(model, state.step + 1, scale)
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    state.elapsed += time.perf_counter() - t0
    state.step += 1
    rec: dict[str, Any] = {"step": state.step, "time": round(state.elapsed, 4), "tokens": state.step * t.batch_tokens,
                           "train_loss": train_loss, "lr_scale": scale, **({} if loops is None else {"loops": loops})}
    if before is not None:
        rec["update_rms"] = {g: _rms_change(before[g], [p for _, p in opt.groups[g]]) for g in opt.groups}
        norms = lora_norms(model)
        if norms:
            rec["lora_norms"] = norms
    return rec


def _warn_uniform(job: Job, state: TrainState, at_end: bool) -> None:
    """Record (once) a smoothed loss above ln(vocab), the loss of a uniform guess, in the last 20% of
    the run or at its end: whatever the monitor says, such a model has learned nothing."""
    uniform, ema = math.log(job.cfg.model.vocab_size), state.watch.ema
    late = at_end or state.step >= 0.8 * job.cfg.train.iterations
    if not late or ema is None or ema <= uniform or any(w.startswith("uniform:") for w in state.warnings):
        return
    msg = (f"uniform: at step {state.step} the smoothed train loss {ema:.3f} is above ln(vocab) = {uniform:.3f}, "
           "the loss of guessing every token uniformly: the model has learned nothing, or lost it")
    state.warnings.append(msg)
    job.run.log(f"warning: {msg}")


def _checkpoint_due(job: Job, state: TrainState) -> bool:
    """Only after good steps (the checkpoint is the last good state); every train.ckpt_every steps, or
    with 0 once AUTO_CKPT_S of training time have passed since the last one (decided by all ranks
    together, as their clocks differ)."""
    t = job.cfg.train
    if state.watch.bad:
        return False
    if t.ckpt_every:
        return state.step % t.ckpt_every == 0
    due = float(state.elapsed - state.ckpt_elapsed >= AUTO_CKPT_S)
    if job.rt.distributed:
        due = device.all_reduce_sum(torch.tensor(due, device=job.rt.device), job.rt).item()
    return due > 0


def _validate(job: Job) -> dict[str, float]:
    e = job.cfg.eval
    return eval_bpb(job.model, job.val_tokens, job.tables, e.seq_len, e.batch_tokens, job.rt)


def _checkpoint(job: Job, state: TrainState) -> None:
    state.ckpt_elapsed = state.elapsed
    if state.watch.bad == 0:
        state.last_good_step = state.step
    if job.rt.is_main:
        job.run.save_checkpoint({**asdict(state), "model": job.model.state_dict(), "optim": job.opt.state_dict(),
                                 "averager": job.averager.state_dict(), "loader": job.loader.state_dict(),
                                 "rng": device.rng_state(job.rt), "world_size": job.rt.world_size})
    if job.rt.distributed:
        dist.barrier()


def _report(job: Job, state: TrainState, rec: dict[str, Any], bar: Any) -> None:
    """A progress bar in a terminal; a log line every train.log_every steps elsewhere."""
    t = job.cfg.train
    tok_s = state.step * t.batch_tokens / max(state.elapsed, 1e-9)
    if bar is not None:
        bar.set_postfix(loss=f"{rec['train_loss']:.4f}", tok_s=f"{tok_s:,.0f}")
        bar.update(1)
    elif state.step % t.log_every == 0 or state.step == t.iterations:
        job.run.log(f"step {state.step}/{t.iterations} loss {rec['train_loss']:.4f} lr {rec['lr_scale']:.3f} "
                    f"{tok_s:,.0f} tok/s" + (f" val_bpb {rec['val_bpb']:.4f}" if "val_bpb" in rec else ""))


def _finish(job: Job, state: TrainState, status: str, reason: str, checkpoint: bool = True) -> RunResult:
    """Checkpoint (unless an interrupt tore a step); for a finished run, load the chosen weights
    (SWA/EMA/raw), validate them and save model.pt; then summary.json."""
    cfg, rt, run, model = job.cfg, job.rt, job.run, job.model
    tokens = state.step * cfg.train.batch_tokens
    summary: dict[str, Any] = {"status": status, "reason": reason, "steps": state.step, "tokens": tokens,
                               "train_time_s": round(state.elapsed, 3),
                               "tokens_per_s": tokens / state.elapsed if state.elapsed else None,
                               "final_train_loss": state.last_loss}
    if status == "interrupted":
        if checkpoint:
            _checkpoint(job, state)
        # where --resume continues: this checkpoint, or after a torn step the last one (a good step's)
        summary["checkpoint_step"] = (state.step if checkpoint else state.last_good_step) \
            if run.checkpoint_path.exists() else None
    elif status == "finished":
        _warn_uniform(job, state, at_end=True)
        _checkpoint(job, state)
        used, weights = job.averager.choose(cfg.train.eval_weights)
        if weights is not None:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(weights[n].to(p.dtype))
        model.repeats_on = True
        v = _validate(job)
        state.best_val = min(state.best_val, v["val_bpb"])
        summary.update({"final_val_bpb": v["val_bpb"], "final_val_loss": v["val_loss"], "val_tokens": v["val_tokens"],
                        "val_bytes": v["val_bytes"], "eval_weights": used})
        run.append_metrics({"step": state.step, "time": round(state.elapsed, 4), "tokens": tokens, "final": True, **v})
        run.save_weights(model.state_dict())
    else:  # diverged: the last checkpoint (if any) holds the last good weights
        summary.update({"diverged_at_step": state.step, "last_good_step": state.last_good_step,
                        "last_good_checkpoint": run.checkpoint_path.exists()})
    w = state.watch
    summary.update({"warnings": list(state.warnings), "smoothed_train_loss": w.ema,
                    "loss_peak_excess": round(w.peak_excess, 6), "loss_spikes": w.spikes,
                    "diverge_patience": diverge_patience(cfg)})
    summary.update({"best_val_bpb": state.best_val if math.isfinite(state.best_val) else None,
                    "world_size": rt.world_size, "threads": torch.get_num_threads(), "device": str(rt.device),
                    "dtype": str(rt.dtype).replace("torch.", ""), "torch": torch.__version__, "recur_lib": __version__,
                    "git_commit": git_commit() if rt.is_main else None,
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "config": cfg.to_dict()})
    run.write_summary(summary)
    run.log(f"{status} ({reason}): {state.step} steps, {summary['tokens_per_s'] or 0:,.0f} tok/s"
            + (f", val_bpb {summary['final_val_bpb']:.4f}" if "final_val_bpb" in summary else ""))
    return RunResult(run.path, status, summary)


def _rms_change(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    sq = sum(float((a.detach().float() - b.float()).pow(2).sum()) for a, b in zip(after, before))
    n = sum(b.numel() for b in before)
    return math.sqrt(sq / max(n, 1))


def _stop_reason(elapsed: float, cap: float, signals: _StopSignals, rt: device.Runtime) -> str | None:
    """Why to stop before the next step (wallclock, or a stop signal's name), or None. All ranks stop on
    the same step: a rank that stopped alone would leave the others waiting in a collective."""
    time_up, signalled = float(bool(cap) and elapsed >= cap), float(signals.received is not None)
    if rt.distributed:
        flags = device.all_reduce_sum(torch.tensor([time_up, signalled], device=rt.device), rt).tolist()
        time_up, signalled = flags
    if signalled:
        return signals.received or "a signal to another rank"
    return "wallclock" if time_up else None


def _progress(total: int, start: int, rt: device.Runtime) -> Any:
    if not rt.is_main or not sys.stderr.isatty():
        return None  # plain log lines instead
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
