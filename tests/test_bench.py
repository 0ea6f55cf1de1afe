"""The benchmark's reference model and FLOP count (the timings themselves live in benchmarks/, not tests)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench import PlainGPT, flops_per_token  # noqa: E402

from recur_lib import Config, build_model


def test_plain_model_has_the_same_matmul_work_as_the_unrolled_schedule() -> None:
    cfg = Config.from_name("quick")
    m = cfg.model
    ours = build_model(cfg)
    steps = len(ours.steps)
    plain = PlainGPT(m.vocab_size, m.dim, steps, m.n_heads, m.n_kv_heads, int(m.mlp_mult * m.dim))
    plain_mats = sum(p.numel() for n, p in plain.named_parameters() if n.startswith("blocks."))
    ours_per_step = sum(sum(p.numel() for n, p in ours.blocks[s.block].named_parameters() if n.endswith(".weight"))
                        for s in ours.steps)
    assert plain_mats == ours_per_step
    x = torch.randint(0, m.vocab_size, (2, 16))
    assert torch.isfinite(plain(x, x))


def test_flops_per_token_formula() -> None:
    cfg = Config.from_name("pg-baseline")
    d, kv, hidden, L, T, V = 512, 256, 1024, 9, 1024, 1024
    n = L * (2 * d * d + 2 * d * kv + 2 * d * hidden) + V * d
    assert flops_per_token(cfg, T) == 6 * n + 12 * L * T * d
