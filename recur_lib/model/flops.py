"""Training FLOPs per token: what "fixed compute" holds fixed when arms differ in depth.

Two counts that must agree (tested):
* `measured_flops`: torch's own FlopCounterMode over one forward and backward of one training sequence
  of the real model, built on the meta device (no memory, no time). Every matmul, every attention
  product and the LM head is counted as executed, with every trick the config switches on.
* `flops_breakdown`: the closed form for the parts, to read where the FLOPs go: 6 x the matmul
  parameters a token meets per schedule step (forward 2, backward 4), the attention products
  12 x seq_len x dim per step (QK^T and AV over the full seq_len x seq_len matrix, as the fused kernel
  computes it, causal mask or not), and the head 6 x dim x vocab.

Counting params x steps alone (the usual 6N) misses the head and attention: in the quick model (a
1 + 2xL + 1 hybrid at dim 64, seq 128, vocab 1024) the head is 27% of the training FLOPs at L = 1 and
13% at L = 4, attention 27% and 32% (`flops_breakdown`). A "steps x effective layers" match therefore
gives the deeper arms less compute than it claims: L = 4 got 84% of L = 1's FLOPs that way.
"""
from __future__ import annotations

import torch

from ..config import Config


def measured_flops(cfg: Config, seq_len: int | None = None, backward: bool = True) -> float:
    """FLOPs per token of one training step's forward (and backward) on one sequence of seq_len
    (default: train.seq_len), counted by torch.utils.flop_counter on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from .gpt import build_model
    T = seq_len or cfg.train.seq_len
    with torch.device("meta"):
        model = build_model(cfg)
        x = torch.zeros(1, T, dtype=torch.long)
        y = torch.zeros(1, T, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        loss = model(x, y)
        if backward:
            loss.backward()
    return counter.get_total_flops() / T


def flops_breakdown(cfg: Config, seq_len: int | None = None) -> dict[str, float]:
    """Training FLOPs per token by part (blocks, attention, head) and their total, for the plain
    architecture (tricks that add matmuls, such as LoRA or value embeddings, are in measured_flops
    only)."""
    from .schedule import build_schedule
    m = cfg.model
    T = seq_len or cfg.train.seq_len
    head_dim = m.dim // m.n_heads
    kv = m.n_kv_heads * head_dim
    hidden = int(m.mlp_mult * m.dim)
    per_block = m.dim * m.dim * 2 + m.dim * kv * 2 + m.dim * hidden * 2  # q, o; k, v; fc, proj
    steps = len(build_schedule(cfg.schedule))
    parts = {"blocks": 6.0 * per_block * steps, "attention": 12.0 * T * m.dim * steps,
             "head": 6.0 * m.dim * m.vocab_size}
    parts["total"] = sum(parts.values())
    return parts
