"""Validation bits per byte with the official byte accounting, distributed with an exact reduction.

Each rank scores a contiguous share of the non-overlapping windows; the NLL (float64) and byte
counts are summed over ranks before dividing, so the result does not depend on the world size.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .bpb import ByteTables, count_bytes_torch
from .device import Runtime, all_reduce_sum, autocast


@torch.no_grad()
def eval_bpb(model: torch.nn.Module, tokens: np.ndarray, tables: ByteTables, seq_len: int, batch_tokens: int,
             rt: Runtime, n_loops: int | None = None) -> dict[str, float]:
    """val loss (nats/token) and bpb over `tokens` (trimmed to whole windows: see loader.trim_for_eval)."""
    was_training = model.training
    model.eval()
    n_windows = (len(tokens) - 1) // seq_len
    lo, hi = n_windows * rt.rank // rt.world_size, n_windows * (rt.rank + 1) // rt.world_size
    per_batch = max(1, batch_tokens // seq_len)
    t_tables = tables.to_torch(rt.device)
    nll = torch.zeros((), dtype=torch.float64, device=rt.device)
    n_bytes = torch.zeros((), dtype=torch.int64, device=rt.device)
    n_tok = torch.zeros((), dtype=torch.int64, device=rt.device)
    toks = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    for w0 in range(lo, hi, per_batch):
        w1 = min(w0 + per_batch, hi)
        span = toks[w0 * seq_len: w1 * seq_len + 1].to(rt.device)
        x = span[:-1].view(w1 - w0, seq_len)
        y = span[1:].view(w1 - w0, seq_len)
        with autocast(rt):
            loss = model(x, y, n_loops=n_loops, reduction="none")
        nll += loss.double().sum()
        n_bytes += count_bytes_torch(x, y, t_tables).sum()
        n_tok += y.numel()
    for t in (nll, n_bytes, n_tok):
        all_reduce_sum(t, rt)
    model.train(was_training)
    total_bytes = int(n_bytes.item())
    return {"val_loss": nll.item() / max(1, int(n_tok.item())),
            "val_bpb": nll.item() / math.log(2) / total_bytes if total_bytes else float("nan"),
            "val_tokens": int(n_tok.item()), "val_bytes": total_bytes}
