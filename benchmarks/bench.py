"""`make bench`: throughput, MFU, memory, export compression and scaling, written to results/benchmarks/.

Each measurement runs in its own subprocess (so peak RSS is per measurement), repeats, and reports the
median and spread. Reference points measured in the same process:
  * peak: a large dense float32 matmul (this machine's real ceiling, not a datasheet number);
  * plain: a minimal PyTorch GPT written below with the same effective depth, width and FLOPs as the
    model under test, but no schedule, sharing, LoRA or tricks;
  * baseline: the parameter-golf baseline's architecture (QK norm, RoPE, query gain, x0 mix, branch
    scales, U-Net skips, softcap) written flat in plain autograd PyTorch, same depth/width/FLOPs:
    reference/baseline_gpt.py, the same model tests/test_model.py checks ours against bitwise.
  ours/baseline is what our schedule machinery costs; baseline/plain what the architecture costs.
FLOPs per token (training) = 6 x (matmul parameters run per token, counting a shared block once per
step) + 12 x steps x seq_len x dim (attention scores and values), as nanoGPT's estimate_mfu.

    python benchmarks/bench.py [--quick] [--out results/benchmarks]
"""
from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recur_lib import Config, build_model  # noqa: E402
from recur_lib.model.schedule import build_schedule  # noqa: E402
from reference.baseline_gpt import BaselineGPT  # noqa: E402

# (the cpu preset is the quick model trained longer, so wide256 stands in for a wider CPU shape)
TRAIN_PRESETS = ["quick", "seed-927-quick", "seed-1406-quick", "seed-341-quick", "seed-1096-quick",
                 "wide256", "flat512"]


# -- the plain reference model ---------------------------------------------------------------------------


class PlainBlock(nn.Module):
    def __init__(self, d: int, h: int, kv: int, hidden: int) -> None:
        super().__init__()
        self.h, self.kv, self.hd = h, kv, d // h
        self.qkv = nn.Linear(d, d + 2 * kv * self.hd, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.fc, self.proj = nn.Linear(d, hidden, bias=False), nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(F.rms_norm(x, (D,))).split([D, self.kv * self.hd, self.kv * self.hd], dim=-1)
        q = q.view(B, T, self.h, self.hd).transpose(1, 2)
        k = k.view(B, T, self.kv, self.hd).transpose(1, 2)
        v = v.view(B, T, self.kv, self.hd).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv != self.h)
        x = x + self.o(y.transpose(1, 2).reshape(B, T, D))
        return x + self.proj(F.relu(self.fc(F.rms_norm(x, (D,)))).square())


class PlainGPT(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, h: int, kv: int, hidden: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(PlainBlock(d, h, kv, hidden) for _ in range(layers))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x)
        logits = F.linear(F.rms_norm(x, (x.size(-1),)), self.emb.weight)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))


def bench_config(name: str) -> Config:
    if name == "flat512":  # the parameter-golf baseline's width and depth at a CPU-sized batch
        return Config.from_name("pg-baseline", {"train.seq_len": 256, "train.batch_tokens": 4096, "run.device": "cpu",
                                                "run.dtype": "float32"})
    if name == "wide256":  # the first cpu preset's shape: hybrid 1 + 3x3 + 1 at dim 256, seq 512
        return Config.from_name("quick", {"model.dim": 256, "schedule.n_core": 3, "train.seq_len": 512,
                                          "train.batch_tokens": 8192})
    return Config.from_name(name)


def flops_per_token(cfg: Config, seq_len: int) -> float:
    m = cfg.model
    kv = m.n_kv_heads * (m.dim // m.n_heads)
    hidden = int(m.mlp_mult * m.dim)
    per_block = 2 * m.dim * m.dim + 2 * m.dim * kv + 2 * m.dim * hidden
    steps = len(build_schedule(cfg.schedule))
    n = steps * per_block + m.vocab_size * m.dim
    return 6 * n + 12 * steps * seq_len * m.dim


def _time(fn, repeats: int, warmup: int = 2) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), max(ts) - min(ts)


def matmul_peak(repeats: int) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    med, _ = _time(lambda: a @ b, repeats)
    return 2 * 2048 ** 3 / med


# -- one measurement per subprocess ------------------------------------------------------------------------


def one_train(name: str, which: str, repeats: int, variant: str = "eager") -> dict:
    """which: ours | plain | baseline; variant: eager | compile | bf16 (autocast) | threads1."""
    cfg = bench_config(name)
    t = cfg.train
    if variant == "threads1":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    m = cfg.model
    steps = len(build_schedule(cfg.schedule))
    hidden = int(m.mlp_mult * m.dim)
    if which == "ours":
        model = build_model(cfg)
    elif which == "baseline":
        model = BaselineGPT(m.vocab_size, m.dim, steps, m.n_heads, m.n_kv_heads, hidden, m.logit_softcap, m.rope_base)
    else:
        model = PlainGPT(m.vocab_size, m.dim, steps, m.n_heads, m.n_kv_heads, hidden)
    fwd = torch.compile(model) if variant == "compile" else model
    B = t.batch_tokens // t.seq_len
    x, y = torch.randint(0, m.vocab_size, (2, B, t.seq_len))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "bf16"):
            loss = fwd(x, y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step()  # compile happens here
    first = time.perf_counter() - t0
    med, spread = _time(step, repeats)
    return {"preset": name, "model": which, "variant": variant, "threads": torch.get_num_threads(),
            "tokens": t.batch_tokens, "seq_len": t.seq_len, "first_step_s": first, "median_s": med,
            "spread_s": spread, "tokens_per_s": t.batch_tokens / med,
            "flops_per_s": flops_per_token(cfg, t.seq_len) * t.batch_tokens / med,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def one_eval(name: str, repeats: int) -> list[dict]:
    """Plain, sliding and score-first TTT evaluation of the same 64 windows. TTT runs 4 chunks of 16
    windows, one epoch; its floor is the work it must do: score every token once, then one forward and
    backward over every token of the first 3 chunks (the last is only scored: nothing after it would use
    what it teaches) (`ttt_work_floor`, no optimizer); `ttt_vs_floor` is what the bookkeeping
    around that work costs. Each timing after one untimed call (allocator and autograd warm)."""
    from recur_lib.data.bpb import build_byte_tables
    from recur_lib.device import setup
    from recur_lib.evaluate import eval_windows, ttt_score_first
    from recur_lib.data.tokenizer import load_tokenizer
    import numpy as np
    import torch
    base = Config.from_name(name)
    L = base.eval.seq_len
    cfg = base.override({"eval.ttt_chunk_tokens": 16 * L, "eval.ttt_epochs": 1, "eval.stride": 0})
    rt = setup(cfg.run)
    model = build_model(cfg).eval()
    sp = load_tokenizer(ROOT / "data/default/tokenizer.model") if (ROOT / "data/default/tokenizer.model").exists() else None
    tables = build_byte_tables(sp, cfg.model.vocab_size) if sp else None
    toks = np.random.default_rng(0).integers(4, cfg.model.vocab_size, 64 * L + 1)
    if tables is None:
        return []
    rows = []
    for mode, stride in (("plain", 0), ("sliding64", 64), ("sliding32", 32)):
        med, spread = _time(lambda: eval_windows(model, toks, tables, L, stride, cfg.eval.batch_tokens, rt), repeats, 1)
        rows.append({"preset": name, "mode": mode, "seq_len": L, "stride": stride or L, "median_s": med,
                     "spread_s": spread, "tokens_per_s": (len(toks) - 1) / med})
    t = torch.from_numpy(toks)
    per_batch = max(1, cfg.eval.batch_tokens // L)

    def floor() -> None:
        eval_windows(model, toks, tables, L, 0, cfg.eval.batch_tokens, rt)
        for i in range(0, 48, per_batch):
            rows_ = range(i, min(48, i + per_batch))
            x = torch.stack([t[r * L:(r + 1) * L] for r in rows_])
            y = torch.stack([t[r * L + 1:(r + 1) * L + 1] for r in rows_])
            model(x, y).backward()
        model.zero_grad(set_to_none=True)
    for mode, fn in (("ttt_work_floor", floor), ("ttt_score_first_1ep", lambda: ttt_score_first(model, toks, tables, cfg, rt))):
        med, spread = _time(fn, repeats, 1)
        rows.append({"preset": name, "mode": mode, "seq_len": L, "stride": L, "median_s": med,
                     "spread_s": spread, "tokens_per_s": (len(toks) - 1) / med})
    plain = rows[0]["median_s"]
    for r in rows:
        r["cost_vs_plain"] = r["median_s"] / plain
        r["theoretical_L_over_s"] = L / r["stride"]
    rows[-1]["ttt_vs_floor"] = rows[-1]["median_s"] / rows[-2]["median_s"]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for r in rows:
        r["peak_rss_mb"] = rss
    return rows


def one_scaling(kind: str, value: int, repeats: int) -> dict:
    over = {"schedule.n_loops": value} if kind == "loops" else {
        "train.seq_len": value, "train.batch_tokens": max(4096, value * 8), "eval.seq_len": value}
    cfg = Config.from_name("quick", over)
    model = build_model(cfg)
    t = cfg.train
    x, y = torch.randint(0, 1024, (2, t.batch_tokens // t.seq_len, t.seq_len))

    def step() -> None:
        model(x, y).backward()
        model.zero_grad(set_to_none=True)

    med, spread = _time(step, repeats)
    return {"kind": kind, "value": value, "tokens_per_s": t.batch_tokens / med, "median_s": med, "spread_s": spread,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def export_compression() -> list[dict]:
    """Compressed bytes of the quantized payload per width: zstd-22 vs zlib-9 vs lzma, against the
    order-0 entropy bound, on trained weights when a workbook run exists."""
    import zstandard

    from recur_lib.export import _entropy_bytes, pack_codes, quantize_tensor, tensor_plan
    runs = sorted((ROOT / "runs").glob("*/quickstart-quick-*/model.pt")) + sorted((ROOT / "runs").glob("train-quick/quick/model.pt"))
    cfg = Config.from_name("quick")
    model = build_model(cfg)
    source = "random init"
    if runs:
        model.load_state_dict(torch.load(runs[0], weights_only=True))
        source = str(runs[0].relative_to(ROOT))
    rows = []
    for bits in (8, 6, 5, 4):
        c = cfg.override({"quant.export_bits": bits})
        codes, packed, entropy = [], [], 0.0
        for name, t in model.state_dict().items():
            if tensor_plan(name, t, c)[0] == "int" and not name.startswith("tok_emb"):
                q, s = quantize_tensor(t, bits, c)
                codes.append(q.numpy().astype("int8").tobytes())
                packed.append(pack_codes(q.numpy(), bits))
                entropy += _entropy_bytes(q.numpy())
        for layout, blob in (("int8 containers", b"".join(codes)), ("dense packed", b"".join(packed))):
            for comp, fn in (("zstd-22", lambda b: zstandard.ZstdCompressor(level=22).compress(b)),
                             ("zlib-9", lambda b: zlib.compress(b, 9)), ("lzma", lambda b: lzma.compress(b, preset=9))):
                t0 = time.perf_counter()
                n = len(fn(blob))
                rows.append({"bits": bits, "layout": layout, "compressor": comp, "raw_bytes": len(blob), "bytes": n,
                             "entropy_bytes": round(entropy), "over_bound": n / entropy,
                             "seconds": round(time.perf_counter() - t0, 3), "weights": source})
    return rows


def _child(args: list[str]) -> object:
    res = subprocess.run([sys.executable, __file__, "--one", *args], capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        return {"error": res.stderr[-1500:], "args": args}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="fewer presets and repeats (a smoke run of the bench)")
    p.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    a = p.parse_args()
    if a.one:
        kind, *rest = a.one
        if kind == "train":
            print(json.dumps(one_train(rest[0], rest[1], int(rest[2]), *rest[3:])))
        elif kind == "eval":
            print(json.dumps(one_eval(rest[0], int(rest[1]))))
        elif kind == "scaling":
            print(json.dumps(one_scaling(rest[0], int(rest[1]), int(rest[2]))))
        elif kind == "export":
            print(json.dumps(export_compression()))
        return
    import pandas as pd
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    reps = 2 if a.quick else a.repeats
    presets = TRAIN_PRESETS[:2] if a.quick else TRAIN_PRESETS
    machine = {"cpu": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                            if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor(),
               "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "date": time.strftime("%Y-%m-%d"), "dtype": "float32"}
    peak = matmul_peak(reps)
    machine["matmul_peak_gflops"] = peak / 1e9
    print(json.dumps(machine, indent=2))

    rows = []
    for name in presets:
        r = {which: _child(["train", name, which, str(reps)]) for which in ("ours", "plain", "baseline")}
        for which, row in r.items():
            if "error" in row:
                print(row)
                continue
            row["mfu"] = row["flops_per_s"] / peak
            rows.append(row)
        if not any("error" in row for row in r.values()):
            o = r["ours"]["tokens_per_s"]
            print(f"{name:<16} ours {o:>8,.0f} tok/s  plain {r['plain']['tokens_per_s']:>8,.0f}  baseline "
                  f"{r['baseline']['tokens_per_s']:>8,.0f}  ours/plain {o / r['plain']['tokens_per_s']:.3f}  "
                  f"ours/baseline {o / r['baseline']['tokens_per_s']:.3f}  MFU {r['ours']['mfu']:.3f}  "
                  f"RSS {r['ours']['peak_rss_mb']:.0f} MB")
    # torch.compile and bf16 autocast on this CPU, and one job on every core vs two one-thread jobs at once
    # (what the workbook's parallel sweeps do)
    for variant in ("compile", "bf16"):
        for which in ("ours", "plain"):
            row = _child(["train", "quick", which, str(reps), variant])
            if "error" not in row:
                row["mfu"] = row["flops_per_s"] / peak
                rows.append(row)
                print(f"quick {variant:<8} {which:<6} {row['tokens_per_s']:>8,.0f} tok/s (first step {row['first_step_s']:.1f} s)")
    if not a.quick:
        for jobs in (1, 2):
            procs = [subprocess.Popen([sys.executable, __file__, "--one", "train", "quick", "ours", str(reps),
                                       "threads1" if jobs == 2 else "eager"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
                     for _ in range(jobs)]
            got = [json.loads(pr.communicate()[0].strip().splitlines()[-1]) for pr in procs]
            for row in got:
                row.update({"variant": f"{jobs}-jobs", "mfu": row["flops_per_s"] / peak})
                rows.append(row)
            print(f"quick {jobs} job(s) at once: {sum(g['tokens_per_s'] for g in got):,.0f} tok/s in total")
    train = pd.DataFrame(rows)
    train.to_csv(out / "train.csv", index=False)

    ev = pd.DataFrame(_child(["eval", "quick", str(reps)]))
    ev.to_csv(out / "eval.csv", index=False)
    print(ev.to_string(index=False, float_format=lambda v: f"{v:.3f}"))

    scaling = [_child(["scaling", "loops", str(n), str(reps)]) for n in (1, 2, 3, 4, 6, 8)]
    scaling += [_child(["scaling", "seq", str(n), str(reps)]) for n in (64, 128, 256, 512, 1024)]
    sc = pd.DataFrame([s for s in scaling if "error" not in s])
    sc.to_csv(out / "scaling.csv", index=False)
    print(sc.to_string(index=False, float_format=lambda v: f"{v:.3f}"))

    ex = pd.DataFrame(_child(["export"]))
    ex.to_csv(out / "export.csv", index=False)
    print(ex.to_string(index=False, float_format=lambda v: f"{v:.3f}"))

    (out / "bench.json").write_text(json.dumps({"machine": machine, "train": rows, "eval": ev.to_dict("records"),
                                                "scaling": sc.to_dict("records"), "export": ex.to_dict("records")},
                                               indent=2) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, kind, label in ((axes[0], "loops", "loops (quick hybrid 1 + 2xL + 1)"), (axes[1], "seq", "sequence length")):
        s = sc[sc["kind"] == kind]
        ax.plot(s["value"], s["tokens_per_s"], marker="o")
        ax.set_xlabel(label)
        ax.set_ylabel("train tokens/s (fwd+bwd)")
        ax2 = ax.twinx()
        ax2.plot(s["value"], s["peak_rss_mb"], marker="s", color="tab:red")
        ax2.set_ylabel("peak RSS MB", color="tab:red")
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)


if __name__ == "__main__":
    main()
