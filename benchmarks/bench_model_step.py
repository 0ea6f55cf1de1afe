"""Forward+backward time of one training batch per preset on this machine (median of repeats).

    python benchmarks/bench_model_step.py [--presets quick seed-927-quick] [--repeats 5] [--bf16]

Model only; `bench.py` adds MFU, the reference baselines, evaluation and export.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from recur_lib import Config, build_model


def time_step(preset: str, repeats: int, bf16: bool) -> tuple[float, float, int]:
    cfg = Config.from_name(preset)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    B = cfg.train.batch_tokens // cfg.train.seq_len
    x, y = torch.randint(0, cfg.model.vocab_size, (2, B, cfg.train.seq_len))
    times = []
    for i in range(repeats + 2):  # two warm-up steps
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), max(times) - min(times), cfg.train.batch_tokens


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--presets", nargs="+", default=["quick", "seed-927-quick", "seed-1406-quick",
                                                     "seed-341-quick", "seed-1096-quick"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bf16", action="store_true")
    a = p.parse_args()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {'bf16 autocast' if a.bf16 else 'float32'}")
    print(f"{'preset':<18} {'tokens':>7} {'median s':>9} {'spread s':>9} {'tok/s':>8}")
    for name in a.presets:
        med, spread, toks = time_step(name, a.repeats, a.bf16)
        print(f"{name:<18} {toks:>7} {med:>9.3f} {spread:>9.3f} {toks / med:>8.0f}")


if __name__ == "__main__":
    main()
