"""The benchmark's reference model and FLOP count (the timings themselves live in benchmarks/, not tests)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench import PlainGPT, flops_per_token  # noqa: E402

from recur_lib import Config, build_model
from reference.baseline_gpt import BaselineGPT


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


def test_baseline_reference_computes_what_our_flat_model_computes() -> None:
    # the ours/baseline ratio compares equal math: same weights in, same loss and gradients out
    cfg = Config.from_name("smoke", {"schedule.kind": "flat", "schedule.n_layers": 4, "model.vocab_size": 64})
    m = cfg.model
    torch.manual_seed(0)
    ours = build_model(cfg)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    base = BaselineGPT(m.vocab_size, m.dim, 4, m.n_heads, m.n_kv_heads, int(m.mlp_mult * m.dim), m.logit_softcap)
    base.load_state_dict(ours.state_dict(), strict=True)
    x, y = torch.randint(0, m.vocab_size, (2, 3, 32))
    assert torch.allclose(ours(x, y), base(x, y), rtol=1e-5, atol=1e-6)


def test_flops_per_token_formula() -> None:
    cfg = Config.from_name("pg-baseline")
    d, kv, hidden, L, T, V = 512, 256, 1024, 9, 1024, 1024
    n = L * (2 * d * d + 2 * d * kv + 2 * d * hidden) + V * d
    assert flops_per_token(cfg, T) == 6 * n + 12 * L * T * d
