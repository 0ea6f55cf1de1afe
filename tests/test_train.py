"""Training jobs: outputs, bitwise resume, interruption (Ctrl-C, SIGTERM), divergence and its monitor,
one owner per run folder, damaged run files, refusals, schedules, and 1 process vs 2 processes
(torchrun, gloo) giving the same loss curve."""
from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import numpy as np

from recur_lib import Config, ConfigError, build_model
from recur_lib.data.loader import DistributedTokenLoader
from recur_lib.data.shards import ShardError
from recur_lib.data.tokenizer import TokenizerError
from recur_lib.rundir import RunExistsError, RunFileError, RunLock, RunLockedError
from recur_lib.train import LossWatch, WeightAverager, lr_scale, muon_momentum, train, watch_loss

from conftest import TINY_VOCAB

# A run that touches every piece of state: a shared core with per-loop LoRA on Muon, EMA and SWA,
# late QAT, noisy QAT on the shared block (random draws), grad clipping, and a learning rate with warmup
# and warmdown.
RICH = {"model.loop_lora_rank": 2, "model.loop_lora_form": "matrices", "optim.lora_optimizer": "muon",
        "model.use_loop_scales": True, "train.ema_decay": 0.9, "train.swa_start_frac": 0.5, "train.swa_every": 2,
        "quant.qat_bits": 6, "quant.qat_start_frac": 0.5, "train.grad_clip": 1.0, "train.lr_warmup_steps": 2,
        "train.warmdown_iters": 4, "train.log_every": 3, "quant.noisy_qat_bits": 6}


def cfg_for(data: Path, runs: Path, name: str, iterations: int = 8, **over) -> Config:
    return Config.from_name("smoke", {"data.root": str(data), "model.vocab_size": TINY_VOCAB, "run.out_dir": str(runs),
                                      "run.name": name, "train.iterations": iterations, **over})


def losses(run_dir: Path) -> list[float]:
    return [r["train_loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "train_loss" in r]


def test_finished_run_writes_everything(tiny_data: Path, tmp_path: Path) -> None:
    r = train(cfg_for(tiny_data, tmp_path, "a", **RICH, **{"train.val_every": 4}))
    assert r.status == "finished"
    for f in ("config.json", "metrics.jsonl", "summary.json", "train.log", "ckpt.pt", "model.pt"):
        assert (r.run_dir / f).exists(), f
    s = json.loads((r.run_dir / "summary.json").read_text())
    assert s["steps"] == 8 and s["tokens"] == 8 * 512 and s["eval_weights"] == "swa"
    assert math.isfinite(s["final_val_bpb"]) and s["config"] == Config.load(r.run_dir / "config.json").to_dict()
    assert s["torch"] == torch.__version__ and "git_commit" in s and s["tokens_per_s"] > 0
    recs = [json.loads(x) for x in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs if "train_loss" in x] == list(range(1, 9))
    assert recs[0]["step"] == 0 and "train_loss" not in recs[0]  # val before the first step
    logged = [x for x in recs if "update_rms" in x]
    assert [x["step"] for x in logged] == [3, 6, 8]
    assert set(logged[0]["update_rms"]) == {"scalars", "embed", "matrices", "lora"}
    norms = logged[-1]["lora_norms"]
    assert set(norms) == {f"b1_l{loop}.{t}" for loop in (0, 1) for t in ("q", "k", "v", "o", "fc", "proj")}
    assert all(len(v) == 4 and v[1] > 0 and v[3] > 0 for v in norms.values())  # B moved off its zero init
    assert [x["step"] for x in recs if "val_bpb" in x] == [0, 4, 8] and recs[-1]["final"]
    assert "matrices      muon" in (r.run_dir / "train.log").read_text()


def test_lora_product_norm_is_the_norm_of_BA(tiny_data: Path, tmp_path: Path) -> None:
    from recur_lib.model import build_model
    from recur_lib.train import lora_norms
    m = build_model(cfg_for(tiny_data, tmp_path, "n", **RICH))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    f = m.loop_lora["b1_l1"]["fc"]
    a, b, ba, ratio = lora_norms(m)["b1_l1.fc"]
    assert (a, b) == pytest.approx((f.A.norm().item(), f.B.norm().item()))
    assert ba == pytest.approx((f.B @ f.A).norm().item(), rel=1e-4)
    w = m.blocks[1].mlp.fc.weight
    s = torch.linalg.svdvals
    assert ratio == pytest.approx((s(f.B @ f.A)[0] / s(w)[0]).item(), rel=1e-4)


def test_resume_reproduces_the_uninterrupted_run_bitwise(tiny_data: Path, tmp_path: Path) -> None:
    straight = train(cfg_for(tiny_data, tmp_path, "straight", iterations=10, **RICH))
    cfg = cfg_for(tiny_data, tmp_path, "split", iterations=10, **RICH)
    half = train(cfg, stop_at_step=5)
    assert half.status == "interrupted" and (half.run_dir / "ckpt.pt").exists()
    with pytest.raises(RunExistsError, match="--resume"):
        train(cfg)
    resumed = train(cfg, resume=True)
    assert resumed.status == "finished"
    assert losses(resumed.run_dir) == losses(straight.run_dir)  # bitwise: exact float equality
    assert resumed.summary["final_val_bpb"] == straight.summary["final_val_bpb"]


def test_a_checkpoint_of_another_world_size_is_refused_and_kept(tiny_data: Path, tmp_path: Path) -> None:
    """A 2-process run resumed by 1 process would read other tokens per step (each rank its slice) and end at
    another val_bpb: refused, naming both sizes and the command, with the checkpoint and metrics untouched."""
    cfg = cfg_for(tiny_data, tmp_path, "world", iterations=8)
    half = train(cfg, stop_at_step=4)
    ck_path = half.run_dir / "ckpt.pt"
    ck = torch.load(ck_path, weights_only=True)
    assert ck["world_size"] == 1
    ck["world_size"] = 2
    torch.save(ck, ck_path)
    before = (ck_path.read_bytes(), (half.run_dir / "metrics.jsonl").read_bytes())
    with pytest.raises(ValueError, match=r"written by a 2-process run; this one has 1: resume it with "
                                         r"`torchrun --nproc_per_node 2`"):
        train(cfg, resume=True)
    assert (ck_path.read_bytes(), (half.run_dir / "metrics.jsonl").read_bytes()) == before
    ck["world_size"] = 1
    torch.save(ck, ck_path)
    assert train(cfg, resume=True).status == "finished"


def test_crash_after_a_checkpoint_resumes_from_it(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight = train(cfg_for(tiny_data, tmp_path, "straight", iterations=9, **RICH))
    cfg = cfg_for(tiny_data, tmp_path, "crash", iterations=9, **{**RICH, "train.ckpt_every": 4})
    real = DistributedTokenLoader.next_batch
    calls = {"n": 0}

    def flaky(self, *a, **k):  # dies while computing step 7, after the step-4 checkpoint
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("simulated crash")
        return real(self, *a, **k)

    monkeypatch.setattr(DistributedTokenLoader, "next_batch", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    monkeypatch.setattr(DistributedTokenLoader, "next_batch", real)
    run_dir = tmp_path / "crash"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    assert len(losses(run_dir)) == 6  # steps 5-6 were logged after the checkpoint
    resumed = train(cfg, resume=True)
    assert losses(resumed.run_dir) == losses(straight.run_dir)


def test_ctrl_c_finishes_the_step_and_leaves_a_resumable_checkpoint(tiny_data: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A real SIGINT in the middle of step 4: the step completes, a checkpoint of step 4 is written, and
    the resumed run computes what the uninterrupted one does."""
    straight = train(cfg_for(tiny_data, tmp_path, "straight", iterations=6, **RICH))
    cfg = cfg_for(tiny_data, tmp_path, "ctrlc", iterations=6, **RICH)
    real = DistributedTokenLoader.next_batch
    calls = {"n": 0}

    def interrupt(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, *a, **k)

    monkeypatch.setattr(DistributedTokenLoader, "next_batch", interrupt)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs as a background job
    r = train(cfg)
    assert (r.status, r.summary["reason"], r.summary["steps"], r.summary["checkpoint_step"]) == \
        ("interrupted", "SIGINT", 4, 4)
    assert torch.load(r.run_dir / "ckpt.pt", weights_only=True)["step"] == 4
    monkeypatch.setattr(DistributedTokenLoader, "next_batch", real)
    resumed = train(cfg, resume=True)
    assert losses(resumed.run_dir) == losses(straight.run_dir)
    assert signal.getsignal(signal.SIGINT) is before  # handlers given back


def test_a_second_signal_interrupts_at_once_only_when_it_repeats_the_first() -> None:
    """Ctrl-C twice means now; SIGTERM after SIGINT (the job's runner dying after it asked the job to
    stop) waits for the step boundary with the first."""
    from recur_lib.train import _StopSignals
    with _StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # handlers run between bytecodes of the main thread
        assert signals.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)


def test_an_interrupt_that_tears_a_step_writes_no_checkpoint(tiny_data: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt raised inside a step (a second Ctrl-C) leaves a partly updated state: it is
    not saved; the run stays resumable from the last checkpoint, and the resume is still bitwise."""
    straight = train(cfg_for(tiny_data, tmp_path, "straight", iterations=8, **RICH))
    cfg = cfg_for(tiny_data, tmp_path, "torn", iterations=8, **{**RICH, "train.ckpt_every": 3})
    from recur_lib.optim import Optimizers
    real = Optimizers.step
    calls = {"n": 0}

    def torn(self, *a, **k):  # dies in step 5's update, after the weights of some groups moved
        calls["n"] += 1
        real(self, *a, **k)
        if calls["n"] == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(Optimizers, "step", torn)
    r = train(cfg)
    assert r.status == "interrupted" and r.summary["checkpoint_step"] == 3
    assert torch.load(r.run_dir / "ckpt.pt", weights_only=True)["step"] == 3
    assert "no checkpoint is written" in (r.run_dir / "train.log").read_text()
    monkeypatch.setattr(Optimizers, "step", real)
    assert losses(train(cfg, resume=True).run_dir) == losses(straight.run_dir)


def test_automatic_checkpoints_follow_training_time(tiny_data: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """train.ckpt_every = 0 (the default) writes a checkpoint whenever AUTO_CKPT_S of training time have
    passed since the last one, so a crash loses minutes, not the run."""
    import recur_lib.train as trainer
    from dataclasses import fields
    help_text = {f.name: f.metadata["help"] for f in fields(type(Config().train))}["ckpt_every"]
    assert Config().train.ckpt_every == 0 and "0 = auto" in help_text and "5 minutes" in help_text
    monkeypatch.setattr(trainer, "AUTO_CKPT_S", 1e-9)  # every step: each takes more than a nanosecond
    cfg = cfg_for(tiny_data, tmp_path, "auto", iterations=6)
    real = DistributedTokenLoader.next_batch
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash")
        return real(self, *a, **k)

    monkeypatch.setattr(DistributedTokenLoader, "next_batch", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    assert torch.load(tmp_path / "auto" / "ckpt.pt", weights_only=True)["step"] == 4
    monkeypatch.setattr(trainer, "AUTO_CKPT_S", 300.0)
    monkeypatch.setattr(DistributedTokenLoader, "next_batch", real)
    r = train(cfg, resume=True)
    assert r.status == "finished" and "resumed from step 4" in (r.run_dir / "train.log").read_text()


def test_divergence_is_a_result_with_the_last_good_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    hot = {"optim.matrix_lr": 5.0, "optim.scalar_lr": 5.0, "optim.tied_embed_lr": 5.0,
           "train.diverge_loss": 10.0, "train.diverge_patience": 2, "train.ckpt_every": 1}
    r = train(cfg_for(tiny_data, tmp_path, "hot", iterations=20, **hot))
    assert r.status == "diverged" and r.summary["diverged_at_step"] < 20
    good = r.summary["last_good_step"]
    assert r.summary["last_good_checkpoint"] and good < r.summary["diverged_at_step"]
    ck = torch.load(r.run_dir / "ckpt.pt", weights_only=True)
    assert ck["step"] == good and losses(r.run_dir)[good - 1] <= 10.0
    with pytest.raises(RunExistsError, match="diverged run"):
        train(cfg_for(tiny_data, tmp_path, "hot", iterations=20, **hot))


def _scan(series, rel: float = 1.0, patience: int = 10, limit: float = 0.0):
    """Feed a loss series through the monitor: (final state, step it diverged at or None, reason)."""
    w = LossWatch()
    for step, loss in enumerate(series, 1):
        w, why = watch_loss(w, loss, rel, patience, limit)
        if why:
            return w, step, why
    return w, None, None


def test_monitor_catches_a_rising_loss() -> None:
    """Falls from 7 to 3 in 100 steps, then climbs 0.05 nat a step: diverged once the smoothed loss has
    stayed more than 1 nat above its minimum for `patience` steps, and not before the climb."""
    fall = [7 - 4 * i / 100 for i in range(100)]
    climb = [3 + 0.05 * i for i in range(1, 200)]
    w, at, why = _scan(fall + climb, patience=20)
    # the smoothed loss lags a climb of 0.05 nat/step by 0.05 / alpha = 0.5 nat: 1 nat up ~30 steps in, + 20
    assert at is not None and 100 + 25 + 20 <= at <= 100 + 40 + 20, at
    assert "nat above its minimum" in why and w.bad == 20
    assert _scan(fall, patience=20)[1] is None


def test_monitor_counts_spikes_it_recovers_from() -> None:
    """Two one-step spikes on a flat loss: not a divergence; counted, with the peak smoothed rise (a
    jump of 8 nats moves a 10-step EMA by 0.8); a small one (3 nats: 0.3) is no spike."""
    series = [3.0] * 150
    series[30], series[80], series[120] = 11.0, 9.0, 6.0
    w, at, _ = _scan(series, patience=20)
    assert at is None and w.spikes == 2 and w.peak_excess == pytest.approx(0.8)
    assert _scan([3.0] * 100)[0].spikes == 0


def test_monitor_leaves_a_noisy_but_healthy_run_alone() -> None:
    """Gaussian noise around a slowly falling curve, 3,000 steps: at 0.25 nat per step (3x the smoke
    preset's) no spike is counted; at 0.5 nat still no divergence."""
    for sigma, peak, spikes in ((0.25, 0.5, 0), (0.5, 0.75, 10)):
        rng = random.Random(0)
        series = [4 - 1.5 * i / 3000 + rng.gauss(0, sigma) for i in range(3000)]
        w, at, _ = _scan(series, patience=50)
        assert at is None and w.bad == 0 and w.peak_excess < peak and w.spikes <= spikes, (sigma, w)


def test_monitor_stops_at_nan_or_inf_and_keeps_the_absolute_limit() -> None:
    for bad in (float("nan"), float("inf")):
        _, at, why = _scan([5.0, 4.0, bad, 3.0])
        assert at == 3 and str(bad) in why
    _, at, why = _scan([5.0, 12.0, 12.0, 12.0, 4.0], rel=0.0, patience=3, limit=10.0)
    assert at == 4 and "above 10.0 for 3 steps" in why
    assert _scan([5.0, 12.0, 12.0, 4.0, 12.0], rel=0.0, patience=3, limit=10.0)[1] is None  # not consecutive


def _offset_forward(monkeypatch: pytest.MonkeyPatch, offset) -> None:
    """Add offset(n) (n = the forward call, from 1) to the loss the model reports: a constant changes
    no gradient, so training goes on as before while the loss the monitor sees is what the test wants."""
    from recur_lib.model.gpt import RecurGPT
    real, calls = RecurGPT.forward, {"n": 0}

    def forward(self, *a, **k):
        calls["n"] += 1
        return real(self, *a, **k) + offset(calls["n"])

    monkeypatch.setattr(RecurGPT, "forward", forward)


def test_a_run_whose_loss_climbs_diverges_by_default(tiny_data: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """No train.diverge_loss set (the default): a loss that climbs 0.5 nat a step from step 10 on (as
    with a logit softcap, no NaN ever comes) ends the run as diverged, not finished."""
    _offset_forward(monkeypatch, lambda n: 0.5 * max(0, n - 10))
    cfg = cfg_for(tiny_data, tmp_path, "climb", iterations=60, **{"train.ckpt_every": 5})
    assert cfg.train.diverge_loss == 0.0
    r = train(cfg)
    assert r.status == "diverged" and "nat above its minimum" in r.summary["reason"]
    assert 15 < r.summary["diverged_at_step"] < 40 and r.summary["diverge_patience"] == 12  # 60 steps: capped
    assert r.summary["last_good_step"] <= 15 and r.summary["loss_peak_excess"] > 1.0


def test_instability_statistics_and_the_uniform_level_warning(tiny_data: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-step jump of 8 nats is a spike in summary.json, not a divergence; a loss above ln(vocab)
    late in the run is a warning there."""
    _offset_forward(monkeypatch, lambda n: 8.0 if n == 8 else 0.0)
    r = train(cfg_for(tiny_data, tmp_path, "spike", iterations=20))
    assert r.status == "finished" and r.summary["loss_spikes"] == 1 and r.summary["loss_peak_excess"] > 0.5
    assert r.summary["warnings"] == []
    _offset_forward(monkeypatch, lambda n: 10.0)  # ~16 nats, above ln(400) = 5.99 throughout
    r = train(cfg_for(tiny_data, tmp_path, "uniform", iterations=10))
    assert r.status == "finished" and len(r.summary["warnings"]) == 1
    assert "ln(vocab) = 5.991" in r.summary["warnings"][0]
    assert json.loads((r.run_dir / "summary.json").read_text())["warnings"] == r.summary["warnings"]


def test_a_damaged_checkpoint_is_named_with_what_to_do(tiny_data: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """Empty (a full disk) or garbage: the error names the file and --force, and never passes on torch's
    advice to load with weights_only=False (which would run whatever code the file holds)."""
    from recur_lib.cli import main
    cfg = cfg_for(tiny_data, tmp_path, "dmg", iterations=4)
    cfg.save(tmp_path / "c.json")
    train(cfg, stop_at_step=2)
    ckpt = tmp_path / "dmg" / "ckpt.pt"
    for content, why in ((b"", "empty"), (b"\x80\x02garbage" * 50, "unreadable")):
        ckpt.write_bytes(content)
        with pytest.raises(RunFileError, match="--force") as e:
            train(cfg, resume=True)
        assert str(ckpt) in str(e.value) and why in str(e.value)
        assert e.value.__cause__ is None and e.value.__suppress_context__  # torch's message is not chained
        assert main(["train", "--config", str(tmp_path / "c.json"), "--resume"]) == 2
        err = capsys.readouterr().err
        assert str(ckpt) in err and "weights_only" not in err


def test_a_torn_metrics_line_is_trimmed_and_a_damaged_one_named(tiny_data: Path, tmp_path: Path) -> None:
    """A process killed while appending leaves a torn last line: --resume drops it with the other lines
    after the checkpoint, and the resumed run is bitwise the straight one. A bad line before the end is
    no crash residue: refused, naming the file and line."""
    straight = train(cfg_for(tiny_data, tmp_path, "straight", iterations=6))
    cfg = cfg_for(tiny_data, tmp_path, "torn", iterations=6)
    train(cfg, stop_at_step=3)
    metrics = tmp_path / "torn" / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text(good + '{"step": 4, "time": 0.1, "train_loss": 5.1}\n{"step": 5, "tim')
    r = train(cfg, resume=True)
    assert losses(r.run_dir) == losses(straight.run_dir)
    assert "dropped 2 metrics lines written after it, the last one torn" in (r.run_dir / "train.log").read_text()
    cfg2 = cfg_for(tiny_data, tmp_path, "bad", iterations=6)
    train(cfg2, stop_at_step=3)
    metrics = tmp_path / "bad" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines[:1] + ['{"step": 1, "tr'] + lines[1:]) + "\n")
    with pytest.raises(RunFileError, match=r"metrics\.jsonl line 2 .*--force"):
        train(cfg2, resume=True)


def test_a_locked_folder_is_refused_naming_the_owner(tiny_data: Path, tmp_path: Path) -> None:
    cfg = cfg_for(tiny_data, tmp_path, "owned", iterations=2)
    lock = RunLock.acquire(tmp_path / "owned")
    try:
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}.*train.lock"):
            train(cfg)
        assert not (tmp_path / "owned" / "summary.json").exists()  # the refusal writes nothing
    finally:
        lock.release()
    assert train(cfg).status == "finished"  # released: the folder is free
    assert train(cfg, force=True).status == "finished"  # --force moves the folder aside and locks the new one


def test_nan_loss_diverges_immediately(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recur_lib.model.gpt import RecurGPT
    real = RecurGPT.forward
    monkeypatch.setattr(RecurGPT, "forward", lambda self, *a, **k: real(self, *a, **k) * float("nan"))
    r = train(cfg_for(tiny_data, tmp_path, "nan", iterations=5))
    assert r.status == "diverged" and r.summary["diverged_at_step"] == 1 and "nan" in r.summary["reason"]


def test_finished_run_is_refused_unless_forced(tiny_data: Path, tmp_path: Path) -> None:
    cfg = cfg_for(tiny_data, tmp_path, "done", iterations=2)
    first = train(cfg)
    with pytest.raises(RunExistsError, match="--force"):
        train(cfg)
    with pytest.raises(RunExistsError):
        train(cfg, resume=True)
    again = train(cfg, force=True)
    assert again.status == "finished"
    backups = list(tmp_path.glob("done.replaced-*"))
    assert len(backups) == 1 and json.loads((backups[0] / "summary.json").read_text())["status"] == "finished"
    assert first.summary["final_val_bpb"] == again.summary["final_val_bpb"]  # seeded and deterministic


def test_resume_with_a_different_model_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    train(cfg_for(tiny_data, tmp_path, "r", iterations=4), stop_at_step=2)
    with pytest.raises(Exception, match=r"model\.dim"):
        train(cfg_for(tiny_data, tmp_path, "r", iterations=4, **{"model.dim": 64}), resume=True)


def test_bad_data_is_explained(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=f"model.vocab_size={TINY_VOCAB}"):
        train(Config.from_name("smoke", {"data.root": str(tiny_data), "run.out_dir": str(tmp_path)}))
    with pytest.raises(ShardError, match="recur data build"):
        train(cfg_for(tmp_path / "nowhere", tmp_path, "x"))
    assert json.loads((tmp_path / "x" / "summary.json").read_text())["status"] == "failed"


def test_lr_schedule_and_momentum_warmup() -> None:
    c = Config.from_name("smoke", {"train.iterations": 100, "train.lr_warmup_steps": 10, "train.warmdown_iters": 20})
    assert [lr_scale(s, 0.0, c) for s in (0, 4, 9, 50)] == [0.1, 0.5, 1.0, 1.0]
    assert lr_scale(80, 0.0, c) == 1.0 and lr_scale(90, 0.0, c) == pytest.approx(0.5)
    w = c.override({"train.max_wallclock_s": 100.0})
    assert lr_scale(50, 50.0, w) == 1.0  # 1 s/step: warmdown is the last 20 s
    assert lr_scale(90, 90.0, w) == pytest.approx(0.5) and lr_scale(99, 120.0, w) == 0.0
    m = Config.from_name("smoke", {"optim.muon_momentum_warmup_steps": 10})
    assert [muon_momentum(s, m) for s in (0, 5, 10, 50)] == pytest.approx([0.85, 0.90, 0.95, 0.95])


def test_weight_averager_math() -> None:
    lin = torch.nn.Linear(2, 1, bias=False)
    cfg = Config.from_name("smoke", {"train.iterations": 10, "train.ema_decay": 0.5, "train.swa_start_frac": 0.2,
                                     "train.swa_every": 2})
    avg = WeightAverager(lin, cfg)
    seen = []
    for step in range(1, 7):
        with torch.no_grad():
            lin.weight.fill_(float(step))
        avg.update(lin, step)
        seen.append(step)
    assert avg.swa["weight"][0, 0].item() == pytest.approx((2 + 4 + 6) / 3) and avg.swa_count == 3
    ema = 0.0  # init weights were random; after 6 updates with decay .5 the init weighs 1/64
    assert avg.choose("auto")[0] == "swa" and avg.choose("ema")[0] == "ema"
    del ema, seen


def _wait_for(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _train_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line being written
        if "train_loss" in rec:
            out.append(rec["step"])
    return out


def test_two_trainings_of_one_folder_one_trains_one_refuses(tiny_data: Path, tmp_path: Path) -> None:
    """Two `recur train` on one folder at once: exactly one trains; the other exits 2 naming its pid.
    Then SIGTERM (a scheduler's) stops the one training with a checkpoint and exit code 143."""
    cfg = cfg_for(tiny_data, tmp_path, "shared", iterations=5000)
    cfg.save(tmp_path / "c.json")
    cmd = [sys.executable, "-m", "recur_lib.cli", "train", "--config", str(tmp_path / "c.json")]
    procs, outs = [], []
    try:
        for i in range(2):
            outs.append(open(tmp_path / f"out{i}.txt", "w+"))
            procs.append(subprocess.Popen(cmd, env=_two_process_env(), stdout=outs[i], stderr=subprocess.STDOUT))
        _wait_for(lambda: any(p.poll() is not None for p in procs), 120, "one of the two to exit")
        loser = next(i for i, p in enumerate(procs) if p.poll() is not None)
        winner = procs[1 - loser]
        outs[loser].seek(0)
        err = outs[loser].read()
        assert procs[loser].returncode == 2, err[-2000:]
        assert f"pid {winner.pid}" in err and "is in use" in err and "train.lock" in err
        run_dir = tmp_path / "shared"
        _wait_for(lambda: len(_train_steps(run_dir)) >= 3, 120, "the winner's first steps")
        assert winner.poll() is None
        winner.send_signal(signal.SIGTERM)
        assert winner.wait(60) == 143
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in outs:
            f.close()
    s = json.loads((run_dir / "summary.json").read_text())
    assert (s["status"], s["reason"]) == ("interrupted", "SIGTERM")
    steps = _train_steps(run_dir)
    assert steps == list(range(1, s["steps"] + 1))  # one writer: no step twice, none interleaved
    assert torch.load(run_dir / "ckpt.pt", weights_only=True)["step"] == s["steps"] == s["checkpoint_step"]


def test_sigterm_checkpoints_and_the_resume_is_bitwise(tiny_data: Path, tmp_path: Path) -> None:
    """SIGTERM to a `recur train` process mid-run: status interrupted, exit 143, and --resume (here in
    this process, one thread as there) continues to the uninterrupted run's losses."""
    over = {**RICH, "train.log_every": 50}
    cfg = cfg_for(tiny_data, tmp_path, "term", iterations=60, **over)
    cfg.save(tmp_path / "c.json")
    out = open(tmp_path / "out.txt", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "recur_lib.cli", "train", "--config", str(tmp_path / "c.json")],
                            env=_two_process_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: len(_train_steps(tmp_path / "term")) >= 5, 120, "the first steps")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
    assert rc == 143, (tmp_path / "out.txt").read_text()[-2000:]
    s = json.loads((tmp_path / "term" / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["reason"] == "SIGTERM" and 5 <= s["steps"] < 60
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = train(cfg, resume=True)
        straight = train(cfg_for(tiny_data, tmp_path, "straight", iterations=60, **over))
    finally:
        torch.set_num_threads(threads)
    assert resumed.status == "finished" and losses(resumed.run_dir) == losses(straight.run_dir)


def _two_process_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_give_the_one_process_loss_curve(tiny_data: Path, tmp_path: Path) -> None:
    """2 ranks x 1 micro-batch and 1 rank x 2 micro-batches read the same tokens in the official
    span layout (rank r / micro-step r gets span[r*(L+1):(r+1)*(L+1)]), so their curves must agree up
    to summation order and bf16 Newton-Schulz rounding."""
    over = {"train.iterations": 6, "run.nproc": 2, "train.log_every": 3, "model.loop_lora_rank": 2,
            "model.loop_lora_form": "matrices", "optim.lora_optimizer": "muon"}
    cfg = cfg_for(tiny_data, tmp_path, "ddp", **over)
    cfg.save(tmp_path / "cfg.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "recur_lib.cli", "train", "--config", str(tmp_path / "cfg.json")]
    res = subprocess.run(cmd, env=_two_process_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    two = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert two["world_size"] == 2 and two["status"] == "finished"
    torch.set_num_threads(1)
    try:
        one = train(cfg_for(tiny_data, tmp_path, "single", **{**over, "run.nproc": 1, "train.grad_accum_steps": 2}))
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    a, b = losses(tmp_path / "ddp"), losses(one.run_dir)
    assert len(a) == len(b) == 6
    assert a == pytest.approx(b, rel=1e-5), (a, b)
    assert two["final_val_bpb"] == pytest.approx(one.summary["final_val_bpb"], rel=1e-5)


def test_cli_reuse_reports_finished_and_resumes_unfinished(tiny_data: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    from recur_lib.cli import main
    cfg = cfg_for(tiny_data, tmp_path, "cli", iterations=4)
    cfg.save(tmp_path / "c.json")
    train(cfg, stop_at_step=2)
    assert main(["train", "--config", str(tmp_path / "c.json")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "c.json"), "--reuse"]) == 0  # resumes
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["steps"] == 4
    assert main(["train", "--config", str(tmp_path / "c.json"), "--reuse"]) == 0
    assert "reusing the finished run" in capsys.readouterr().out


def test_priming_steps_change_no_number(tiny_data: Path, tmp_path: Path) -> None:
    """train.warmup_steps as the baseline means it: N primed steps, then everything restored. The run
    with 3 priming steps and the run with none have identical losses and bitwise identical weights."""
    plain = train(cfg_for(tiny_data, tmp_path, "plain", iterations=5, **RICH))
    primed = train(cfg_for(tiny_data, tmp_path, "primed", iterations=5, **RICH, **{"train.warmup_steps": 3}))
    assert losses(primed.run_dir) == losses(plain.run_dir)
    a = torch.load(plain.run_dir / "model.pt", weights_only=True)
    b = torch.load(primed.run_dir / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "primed 3 steps" in (primed.run_dir / "train.log").read_text()
    assert lr_scale(0, 0.0, cfg_for(tiny_data, tmp_path, "x", **{"train.warmup_steps": 20})) == 1.0  # no LR warmup


def test_a_warmdown_longer_than_the_run_is_a_warning_in_the_log(tiny_data: Path, tmp_path: Path) -> None:
    r = train(cfg_for(tiny_data, tmp_path, "long-warmdown", iterations=3, **{"train.warmdown_iters": 6}))
    log = (r.run_dir / "train.log").read_text()
    assert "warning: the warmdown (6 steps) is longer than the run (train.iterations = 3)" in log
    assert "starts at 0.5, not 1" in log
    r = train(cfg_for(tiny_data, tmp_path, "short-warmdown", iterations=3, **{"train.warmdown_iters": 2}))
    assert "warning: the warmdown" not in (r.run_dir / "train.log").read_text()


def test_phases_as_fractions_of_the_run() -> None:
    """A *_frac field resolves against train.iterations, so a 250-step run and a 5,000-step run go
    through the same phases; step counts stay as given when no fraction is set."""
    c = Config.from_name("smoke", {"train.iterations": 250, "train.lr_warmup_frac": 0.04, "train.warmdown_frac": 0.3,
                                   "optim.muon_momentum_warmup_frac": 0.3, "train.ema_horizon_frac": 0.1,
                                   "optim.lora_warmup_frac": 0.4, "train.swa_start_frac": 0.6,
                                   "quant.qat_bits": 6, "quant.qat_start_frac": 0.85})
    ph = c.phases()
    assert (ph["lr_warmup_steps"], ph["warmdown_steps"], ph["muon_momentum_warmup_steps"], ph["lora_warmup_steps"]) \
        == (10, 75, 75, 100)
    assert ph["ema_decay"] == pytest.approx(1 - 1 / 25) and ph["swa_start_step"] == 150 and ph["qat_start_step"] == 213
    assert muon_momentum(75, c) == pytest.approx(c.optim.muon_momentum) and muon_momentum(0, c) == 0.85
    assert lr_scale(9, 0.0, c) == 1.0 and lr_scale(4, 0.0, c) == pytest.approx(0.5)
    steps = Config.from_name("smoke", {"train.iterations": 250})
    assert steps.phases()["muon_momentum_warmup_steps"] == 500 and steps.phases()["ema_decay"] == 0.0


def test_lora_warmup_scales_only_the_lora_groups() -> None:
    from recur_lib.optim import Optimizers
    from recur_lib.train import lora_lr_scale
    cfg = Config.from_name("smoke", {"model.loop_lora_rank": 2, "model.loop_lora_form": "matrices",
                                     "optim.lora_warmup_steps": 4})
    opt = Optimizers(build_model(cfg), cfg)
    opt.set_lr_scale(0.5, lora_scale=lora_lr_scale(0, cfg))
    lrs = {g: o.param_groups[0]["lr"] for g, o in opt.optimizers.items()}
    assert lrs["lora"] == pytest.approx(cfg.optim.lora_lr * 0.5 * 0.25)
    assert lrs["matrices"] == pytest.approx(cfg.optim.matrix_lr * 0.5)
    assert lora_lr_scale(3, cfg) == 1.0 and lora_lr_scale(10, cfg) == 1.0


def test_weight_averager_equals_torch_swa_utils_primed_at_init() -> None:
    """torch.optim.swa_utils gives the same EMA and SWA bitwise, once its EMA is given the initial
    weights (its first update copies rather than averages): why ours stays is in WeightAverager."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    cfg = Config.from_name("smoke", {"train.ema_decay": 0.9, "train.swa_start_frac": 0.5, "train.swa_every": 1,
                                     "train.iterations": 8})
    torch.manual_seed(0)
    model = build_model(cfg)
    ours = WeightAverager(model, cfg)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=False)
    swa = AveragedModel(model, use_buffers=False)
    ema.update_parameters(model)
    unprimed = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=False)
    for step in range(1, 9):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        ours.update(model, step)
        ema.update_parameters(model)
        unprimed.update_parameters(model)
        if step >= ours.swa_start:
            swa.update_parameters(model)
    for avg, mine in ((ema, ours.ema), (swa, ours.swa)):
        assert all(torch.equal(mine[n], p) for n, p in avg.module.named_parameters())
    assert not all(torch.equal(ours.ema[n], p) for n, p in unprimed.module.named_parameters())


def test_sampled_loops_are_huginns_draw_fixed_by_seed_and_step() -> None:
    from recur_lib.train import sampled_loops
    cfg = Config.from_name("smoke", {"schedule.kind": "looped", "schedule.n_prelude": 0, "schedule.n_coda": 0,
                                     "schedule.n_core": 2, "schedule.n_loops": 3})
    assert sampled_loops(5, cfg) is None  # fixed: the schedule's own count, the forward unchanged
    hug = cfg.override({"train.loop_sampling": "poisson_lognormal", "train.loop_sampling_max": 64})
    draws = [sampled_loops(i, hug) for i in range(4000)]
    assert draws == [sampled_loops(i, hug) for i in range(4000)] and min(draws) >= 1 and max(draws) <= 64
    assert abs(np.mean(draws) - 3) < 0.15  # E[Poisson(tau)] = E[tau] = 3 (clipping at 1 adds ~P(0) x 1)
    assert draws != [sampled_loops(i, hug.override({"run.seed": 2})) for i in range(4000)]
    uni = cfg.override({"train.loop_sampling": "uniform"})
    assert set(sampled_loops(i, uni) for i in range(500)) == set(range(1, 7))  # 1 .. 2 x n_loops
    with pytest.raises(ConfigError, match="without per-loop parameters"):
        uni.override({"model.loop_lora_rank": 1})
    with pytest.raises(ConfigError, match="looped core"):
        Config.from_name("smoke", {"schedule.kind": "flat", "train.loop_sampling": "uniform"})


def test_a_run_with_sampled_loops_trains_at_the_drawn_counts(tiny_data: Path, tmp_path: Path) -> None:
    over = {"schedule.kind": "looped", "schedule.n_prelude": 0, "schedule.n_coda": 0, "schedule.n_core": 2,
            "schedule.n_loops": 2, "train.loop_sampling": "uniform", "train.loop_sampling_max": 4}
    r = train(cfg_for(tiny_data, tmp_path, "hug", iterations=12, **over))
    recs = [json.loads(line) for line in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
    from recur_lib.train import sampled_loops
    got = [(x["step"], x["loops"]) for x in recs if "loops" in x]
    assert got == [(s, sampled_loops(s - 1, Config.load(r.run_dir / "config.json")))
                   for s, _ in got] and len({k for _, k in got}) > 1
    assert r.status == "finished"
