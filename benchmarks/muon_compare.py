"""recur_lib's Muon against torch.optim.Muon (torch 2.13) and the parameter-golf baseline, on the same gradients.

    OMP_NUM_THREADS=1 python benchmarks/muon_compare.py [--out results/benchmarks] [--steps 10] [--repeats 5]

For every shape (square, tall, wide: the baseline's block matrices at dim 512 and rank-8 LoRA factors)
and setting (nesterov on/off, weight decay 0/0.04, constant momentum 0.95 or the baseline's warmup
0.85 -> 0.95 compressed into the run, keller or moonlight scale), each optimizer starts from the same
matrix and gets the same sequence of random gradients; the table compares their per-step updates
(parameter after minus before) at step 1 and at the last step:

    ours_vs_baseline   recur_lib.optim.Muon against the official train_gpt.py arithmetic (bf16 iteration)
    torch_vs_ours      torch.optim.Muon (adjust_lr_fn "original" = keller, "match_rms_adamw" = moonlight)
    fp32_vs_ours       the same arithmetic with the Newton-Schulz iteration in float32: the size of bf16
                       rounding itself, against which torch_vs_ours is read

`max_abs` is the largest entry of the update difference, `rel_fro` its Frobenius norm over that of
the second optimizer's update; `final_rel` compares the parameters after the last step, relative to how
far the second one moved. Also measured: Newton-Schulz alone on one input (ours vs torch's), the median
time of one optimizer step (512x512, 1024x4096), a two-process gloo run (what each rank computes), and
library equivalents of other hand-written pieces of recur_lib (`library_equivalents` in the JSON).
Writes muon_compare.csv (the update table) and muon_compare.json (everything).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import recur_lib.optim as ours_mod  # noqa: E402
from recur_lib.optim import NS_COEFFS, SCALE_RULES, Muon, newton_schulz  # noqa: E402

LR = 0.04  # optim.matrix_lr, the baseline's MATRIX_LR

SHAPES = {  # name -> (rows, cols)
    "q/o 64x64 (quick)": (64, 64),
    "q/o 512x512": (512, 512),
    "k/v 256x512 (wide)": (256, 512),
    "mlp.fc 1024x512 (tall)": (1024, 512),
    "mlp.proj 512x1024 (wide)": (512, 1024),
    "lora B 64x8 (tall)": (64, 8),
    "lora A 8x64 (wide)": (8, 64),
}
TORCH_RULE = {"keller": "original", "moonlight": "match_rms_adamw"}


def momentum_at(schedule: str, step: int, steps: int) -> float:
    """'const': 0.95 throughout; 'warmup': the baseline's 0.85 -> 0.95 ramp squeezed into the run."""
    if schedule == "const":
        return 0.95
    frac = min(step / max(steps - 1, 1), 1.0)
    return (1 - frac) * 0.85 + frac * 0.95


def grads_for(shape: tuple[int, int], steps: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) * 1e-2 for _ in range(steps)]


def _ns(G: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
    """train_gpt.py's zeropower_via_newtonschulz5, with the iteration's dtype as a parameter."""
    a, b, c = NS_COEFFS
    X = G.to(dtype, copy=True)  # in place below: never the caller's tensor
    X /= X.norm() + 1e-7
    transposed = G.size(0) > G.size(1)
    if transposed:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.T if transposed else X


def run_reference(p0: torch.Tensor, grads: list[torch.Tensor], s: dict[str, Any], dtype: torch.dtype) -> list[torch.Tensor]:
    """The official Muon.step of train_gpt.py (one rank), plus the decoupled weight decay ours and
    torch's apply (the baseline has none); returns the parameter after each step."""
    p, buf, out = p0.clone(), torch.zeros_like(p0), []
    for i, g in enumerate(grads):
        m = momentum_at(s["momentum"], i, len(grads))
        buf.mul_(m).add_(g)
        u = g.add(buf, alpha=m) if s["nesterov"] else buf
        u = _ns(u, 5, dtype)
        u *= SCALE_RULES[s["scale_rule"]](*p.shape)
        flat = torch.zeros(p.numel(), dtype=dtype)
        flat[:] = u.reshape(-1)
        if s["weight_decay"]:
            p.mul_(1 - LR * s["weight_decay"])
        p.add_(flat.view_as(p).to(p.dtype), alpha=-LR)
        out.append(p.clone())
    return out


def run_optimizer(make: Callable[[torch.nn.Parameter], torch.optim.Optimizer], p0: torch.Tensor,
                  grads: list[torch.Tensor], schedule: str) -> list[torch.Tensor]:
    p = torch.nn.Parameter(p0.clone())
    opt, out = make(p), []
    for i, g in enumerate(grads):
        for pg in opt.param_groups:  # the momentum warmup sets the group's momentum, as the trainer does
            pg["momentum"] = momentum_at(schedule, i, len(grads))
        p.grad = g.clone()
        opt.step()
        out.append(p.detach().clone())
    return out


def ours(s: dict[str, Any]) -> Callable[[torch.nn.Parameter], torch.optim.Optimizer]:
    return lambda p: Muon([p], lr=LR, momentum=0.95, nesterov=s["nesterov"], scale_rule=s["scale_rule"],
                          weight_decay=s["weight_decay"])


def torchs(s: dict[str, Any]) -> Callable[[torch.nn.Parameter], torch.optim.Optimizer]:
    return lambda p: torch.optim.Muon([p], lr=LR, momentum=0.95, nesterov=s["nesterov"],
                                      weight_decay=s["weight_decay"], adjust_lr_fn=TORCH_RULE[s["scale_rule"]])


def compare(a: list[torch.Tensor], b: list[torch.Tensor], p0: torch.Tensor) -> dict[str, Any]:
    """Per-step update differences of trajectory a against b (b is the reference)."""
    prev_a = prev_b = p0
    per_step = []
    for pa, pb in zip(a, b):
        ua, ub = pa - prev_a, pb - prev_b
        d = ua - ub
        per_step.append((d.abs().max().item(), (d.norm() / ub.norm()).item()))
        prev_a, prev_b = pa, pb
    moved = (b[-1] - p0).norm().item()
    return {"step1_max_abs": per_step[0][0], "step1_rel_fro": per_step[0][1],
            "last_max_abs": per_step[-1][0], "last_rel_fro": per_step[-1][1],
            "max_rel_fro": max(r for _, r in per_step),
            "final_rel": ((a[-1] - b[-1]).norm() / moved).item() if moved else 0.0,
            "bitwise": all(torch.equal(x, y) for x, y in zip(a, b))}


def settings() -> list[dict[str, Any]]:
    grid = [dict(nesterov=n, weight_decay=wd, momentum="const", scale_rule="keller")
            for n in (True, False) for wd in (0.0, 0.04)]
    grid.append(dict(nesterov=True, weight_decay=0.0, momentum="warmup", scale_rule="keller"))
    grid.append(dict(nesterov=True, weight_decay=0.0, momentum="const", scale_rule="moonlight"))
    return grid


def update_table(steps: int) -> list[dict[str, Any]]:
    rows = []
    for si, (name, shape) in enumerate(SHAPES.items()):
        p0 = torch.randn(*shape, generator=torch.Generator().manual_seed(100 + si)) * 0.05
        for s in settings():
            grads = grads_for(shape, steps, seed=si)
            traj = {"ours": run_optimizer(ours(s), p0, grads, s["momentum"]),
                    "torch": run_optimizer(torchs(s), p0, grads, s["momentum"]),
                    "baseline": run_reference(p0, grads, s, torch.bfloat16),
                    "fp32": run_reference(p0, grads, s, torch.float32)}
            for pair, (x, y) in {"ours_vs_baseline": ("ours", "baseline"), "torch_vs_ours": ("torch", "ours"),
                                 "fp32_vs_ours": ("fp32", "ours")}.items():
                rows.append({"shape": name, "rows": shape[0], "cols": shape[1], **s, "steps": steps, "pair": pair,
                             **compare(traj[x], traj[y], p0)})
    return rows


def ns_alone() -> list[dict[str, Any]]:
    """Newton-Schulz only, on one input: whatever differs here is the iteration's rounding (torch uses
    addmm, fusing a scale and a sum into each product)."""
    from torch.optim._muon import _zeropower_via_newtonschulz
    out = []
    for si, (name, shape) in enumerate(SHAPES.items()):
        G = grads_for(shape, 1, seed=si)[0]
        x, y = _zeropower_via_newtonschulz(G, NS_COEFFS, 5, 1e-7).float(), newton_schulz(G).float()
        out.append({"shape": name, "max_abs": (x - y).abs().max().item(), "rel_fro": ((x - y).norm() / y.norm()).item(),
                    "bitwise": torch.equal(x, y), "dtype_torch": str(_zeropower_via_newtonschulz(G, NS_COEFFS, 5, 1e-7).dtype)})
    return out


def speed(repeats: int) -> list[dict[str, Any]]:
    out = []
    for shape in ((512, 512), (1024, 4096)):
        g = torch.randn(*shape) * 1e-2
        for label, make in (("ours", ours(settings()[0])), ("torch", torchs(settings()[0]))):
            p = torch.nn.Parameter(torch.randn(*shape) * 0.05)
            opt = make(p)
            times = []
            for _ in range(repeats + 1):  # the first step allocates the momentum buffer: not timed
                p.grad = g
                t0 = time.perf_counter()
                opt.step()
                times.append(time.perf_counter() - t0)
            out.append({"shape": f"{shape[0]}x{shape[1]}", "optimizer": label, "median_s": statistics.median(times[1:]),
                        "repeats": repeats, "threads": torch.get_num_threads()})
    return out


# -- two processes over gloo: what each rank computes ------------------------------------------------


def _three_steps(out_file: Path) -> None:
    """Three steps of each optimizer on four 64x32 matrices, counting Newton-Schulz calls; saves the
    parameters and the counts. Run in one process, or on every rank of a process group."""
    from torch.optim import _muon
    calls = {"ours": 0, "torch": 0}
    ns_ours, ns_torch = ours_mod.newton_schulz, _muon._zeropower_via_newtonschulz

    def count(key: str, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def wrapped(*a: Any, **k: Any) -> torch.Tensor:
            calls[key] += 1
            return fn(*a, **k)
        return wrapped
    ours_mod.newton_schulz, _muon._zeropower_via_newtonschulz = count("ours", ns_ours), count("torch", ns_torch)
    try:
        result = {}
        for label, make in (("ours", lambda ps: Muon(ps, lr=LR)),
                            ("torch", lambda ps: torch.optim.Muon(ps, lr=LR, weight_decay=0.0))):
            params = [torch.nn.Parameter(torch.randn(64, 32, generator=torch.Generator().manual_seed(i)) * 0.05)
                      for i in range(4)]
            opt = make(params)
            for step in range(3):
                for i, p in enumerate(params):  # DDP has already averaged the gradients: the same on every rank
                    p.grad = torch.randn(64, 32, generator=torch.Generator().manual_seed(1000 * step + i)) * 1e-2
                opt.step()
            result[label] = [p.detach().clone() for p in params]
    finally:
        ours_mod.newton_schulz, _muon._zeropower_via_newtonschulz = ns_ours, ns_torch
    torch.save({"calls": calls, "params": result}, out_file)


def _dist_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _three_steps(Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def distributed_check() -> dict[str, Any]:
    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory() as d:
        _three_steps(Path(d) / "single.pt")
        mp.spawn(_dist_worker, args=(2, 29500 + os.getpid() % 1000, d), nprocs=2)
        single, r0, r1 = (torch.load(Path(d) / f"{n}.pt") for n in ("single", "rank0", "rank1"))
    same = {k: all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in
                   zip(single["params"][k], r0["params"][k], r1["params"][k])) for k in ("ours", "torch")}
    return {"world_size": 2, "matrices": 4, "steps": 3,
            "ns_calls_per_rank": {k: [r0["calls"][k], r1["calls"][k]] for k in ("ours", "torch")},
            "ns_calls_single_process": single["calls"],
            "bitwise_equal_to_single_process": same}


# -- other hand-written pieces against what torch has ------------------------------------------------


def library_equivalents() -> list[dict[str, Any]]:
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from recur_lib.config import Config
    from recur_lib.model.fused import softcap_cross_entropy
    from recur_lib.quant import fake_quant, row_scales
    from recur_lib.train import WeightAverager
    out = []

    # fused softcap cross-entropy vs F.cross_entropy(cap * tanh(logits / cap))
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4096, 1024, generator=gen) * 20
    targets = torch.randint(0, 1024, (4096,), generator=gen)
    timing = {}
    for label, fn in (("fused", lambda x: softcap_cross_entropy(x, targets, 30.0)),
                      ("plain", lambda x: F.cross_entropy(30.0 * torch.tanh(x / 30.0), targets))):
        ts = []
        for _ in range(6):
            x = logits.clone().requires_grad_(True)
            t0 = time.perf_counter()
            loss = fn(x)
            loss.backward()
            ts.append(time.perf_counter() - t0)
        timing[label] = (loss.detach(), x.grad, statistics.median(ts[1:]))
    (lf, gf, tf), (lp, gp, tp) = timing["fused"], timing["plain"]
    out.append({"piece": "model/fused.py softcap_cross_entropy", "library": "F.cross_entropy(cap * tanh(logits / cap))",
                "loss_abs_diff": (lf - lp).abs().item(), "grad_max_abs": (gf - gp).abs().max().item(),
                "grad_rel_fro": ((gf - gp).norm() / gp.norm()).item(), "bitwise": bool(torch.equal(gf, gp)),
                "median_s_fused": tf, "median_s_plain": tp, "shape": "4096x1024"})

    # EMA and SWA of the weights vs torch.optim.swa_utils.AveragedModel
    cfg = Config.from_name("smoke", {"train.ema_decay": 0.9, "train.swa_start_frac": 0.25, "train.swa_every": 1})
    net = torch.nn.Linear(16, 16)
    ours_avg = WeightAverager(net, cfg)
    ema_t = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    ema_primed = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    ema_primed.update_parameters(net)  # its first update copies: this one makes the initial weights count, as ours do
    swa_t = AveragedModel(net)
    for step in range(1, 11):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        ours_avg.update(net, step)
        ema_t.update_parameters(net)
        ema_primed.update_parameters(net)
        if step >= ours_avg.swa_start:
            swa_t.update_parameters(net)
    for label, mine, theirs, lib in (
            ("ema", ours_avg.ema, ema_t, "AveragedModel(multi_avg_fn=get_ema_multi_avg_fn(0.9))"),
            ("ema", ours_avg.ema, ema_primed, "the same, updated once before the first step"),
            ("swa", ours_avg.swa, swa_t, "AveragedModel() (SWA)")):
        d = max((mine[n] - p).abs().max().item() for n, p in theirs.module.named_parameters())
        out.append({"piece": f"train.py WeightAverager ({label})", "library": lib,
                    "max_abs_after_10_updates": d, "bitwise": d == 0.0})

    # the LR multiplier vs LambdaLR: the same lr in step mode; the wall-clock warmdown needs the elapsed
    # time, which a scheduler's lambda(step) does not get
    from recur_lib.train import lr_scale
    sched_cfg = Config.from_name("smoke", {"train.iterations": 100, "train.lr_warmup_steps": 10, "train.warmdown_iters": 30})
    opt_a = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.04)
    sched = torch.optim.lr_scheduler.LambdaLR(opt_a, lambda s: lr_scale(s, 0.0, sched_cfg))
    mismatches = 0
    for step in range(100):
        mismatches += opt_a.param_groups[0]["lr"] != 0.04 * lr_scale(step, 0.0, sched_cfg)
        opt_a.step()
        sched.step()
    out.append({"piece": "train.py lr_scale + Optimizers.set_lr_scale (step mode)",
                "library": "torch.optim.lr_scheduler.LambdaLR(lambda s: lr_scale(s, 0, cfg))",
                "lr_mismatches_in_100_steps": int(mismatches), "wallclock_mode_expressible": False})

    # STE fake quantization vs torch.fake_quantize_per_channel_affine
    w = torch.randn(512, 512, generator=gen) * 0.05
    for scheme, clip in (("rowmax", 100.0), ("baseline", 99.99984)):
        for bits in (8, 6):
            _, scale = row_scales(w, bits, clip, scheme)
            m = 2 ** (bits - 1) - 1
            x = w.clone().requires_grad_(True)
            y = torch.fake_quantize_per_channel_affine(x, scale, torch.zeros(512, dtype=torch.int32), 0, -m, m)
            y.sum().backward()
            mine = fake_quant(w, bits, clip, scheme)
            out.append({"piece": f"quant.py fake_quant ({scheme}, int{bits})",
                        "library": "torch.fake_quantize_per_channel_affine (same scales)",
                        "forward_mismatches": int((mine != y.detach()).sum()), "elements": w.numel(),
                        "forward_max_abs": (mine - y.detach()).abs().max().item(),
                        "grad_zeroed_by_torch": int((x.grad == 0).sum())})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    rows = update_table(a.steps)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "muon_compare.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    report = {"torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "lr": LR, "steps": a.steps, "updates": rows,
              "newton_schulz_alone": ns_alone(), "speed": speed(a.repeats), "distributed": distributed_check(),
              "library_equivalents": library_equivalents()}
    (out / "muon_compare.json").write_text(json.dumps(report, indent=2, default=str))
    worst = {}
    for r in rows:
        k = (r["pair"], r["momentum"])
        worst[k] = max(worst.get(k, 0.0), r["max_rel_fro"])
    for (pair, mom), v in sorted(worst.items()):
        print(f"{pair:<17} momentum {mom:<6} worst per-step rel Frobenius {v:.3g}")
    for s in report["speed"]:
        print(f"step {s['shape']:<10} {s['optimizer']:<6} {s['median_s'] * 1e3:8.1f} ms")
    print(json.dumps(report["distributed"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
