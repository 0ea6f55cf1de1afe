"""The tricks, one unit each: the seeds' (off by default and, when off, never called) and the
baseline's U-Net skips (on by default, as in `train_gpt.py`).

Each docstring says what the trick does, where it comes from, how ours differs, and what to watch.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..quant import QLinear
from .schedule import Step


def exclusive_self_attention(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """XSA: remove from each head's attention output its component along the token's own value.

    y: (B, H, T, hd) attention output; v: (B, KV, T, hd) values. Per head, `y - (y . v_hat) v_hat`
    with v_hat the unit value vector of the same token in the head's KV group, so a token cannot
    simply copy itself and must gather from its context.
    Source: parameter-golf #927 (last 4 loops) and #1406 (last 4 layers); "exclusive self-attention".
    Differences: none intended; applied to the last N *schedule steps*, whatever blocks they run.
    Warnings: a step whose attention is mostly on itself loses most of its output.
    """
    H, KV = y.size(1), v.size(1)
    v_hat = F.normalize(v, dim=-1)
    if H != KV:
        v_hat = v_hat.repeat_interleave(H // KV, dim=1)                   # (B, H, T, hd)
    return y - (y * v_hat).sum(-1, keepdim=True) * v_hat


class SmearGate(nn.Module):
    """SmearGate: x_t <- (1 - g) * x_t + g * x_{t-1} after the embedding, g = sigmoid(per-dim gate).

    A cheap bigram signal: each position sees its predecessor's embedding before any attention.
    Position 0 blends with zeros, so it stays causal. Source: parameter-golf #927.
    Differences: the gate logits start at -3 (g ~ 0.05) so training starts near the plain embedding.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.full((dim,), -3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate).to(x.dtype)
        prev = F.pad(x[:, :-1], (0, 0, 1, 0))                              # (B, T, dim), x_{t-1}, zeros at t=0
        return (1 - g) * x + g * prev


class BigramHash(nn.Module):
    """BigramHash: embed hash(prev, cur) into B buckets and add a projection of it to the embedding.

    bucket = (prev_id * 92821 + cur_id) mod B with prev_id = 0 at position 0; table B x d_h (std 0.01)
    and a zero-initialised projection d_h -> dim, so it starts as a no-op.
    Source: parameter-golf #927 (B = 10240, d_h = 128) and #1406 (B = 1536).
    Warnings: collisions grow as B shrinks; the table counts towards the artifact like any matrix.
    """

    def __init__(self, buckets: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.buckets = buckets
        self.table = nn.Embedding(buckets, hidden)
        nn.init.normal_(self.table.weight, std=0.01)
        self.proj = QLinear(hidden, dim, bias=False)
        nn.init.zeros_(self.proj.weight)

    def bucket_ids(self, idx: torch.Tensor) -> torch.Tensor:
        prev = F.pad(idx[:, :-1], (1, 0))                                  # (B, T), 0 at position 0
        return (prev * 92821 + idx) % self.buckets

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.proj(self.table(self.bucket_ids(idx)))


class ValueEmbedding(nn.Module):
    """Value embedding: a second token embedding projected to the value width, added to the values.

    Re-injects token identity deep into the network, where the residual stream has drifted from it.
    Used in the last N schedule steps. Source: parameter-golf #927 (dim 128, last 2 loops), #1406.
    Differences: one table and one projection shared by all N steps; the projection starts at zero.
    """

    def __init__(self, vocab_size: int, ve_dim: int, kv_dim: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, ve_dim)
        nn.init.normal_(self.table.weight, std=0.02)
        self.proj = QLinear(ve_dim, kv_dim, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.proj(self.table(idx))                                  # (B, T, kv_dim)


class UNetSkips:
    """U-Net skips across schedule steps, for one forward pass: the outputs of the first `n_encoder`
    steps are pushed on a stack, and each later step j = i - n_encoder (while the stack and the weights
    last) starts from x + weights[j] * (the most recent pushed output), mirroring encoder and decoder.

    Source: the parameter-golf baseline `train_gpt.py` (9 layers: 4 encoder, 5 decoder, 4 skips); #927
    runs it over the 28 looped steps with 12 encoder steps. Ours counts schedule steps, not blocks, so
    a shared block can sit on both sides. When a pass runs another number of steps than training did
    (evaluating at more loops), the encoder side is scaled with it.
    """

    def __init__(self, weights: torch.Tensor | None, n_encoder: int) -> None:
        self.weights, self.n_encoder = weights, n_encoder
        self.stack: list[torch.Tensor] = []

    def enter(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The input of step i: x, plus the mirrored encoder output on the decoder side."""
        j = i - self.n_encoder
        if self.weights is not None and j >= 0 and self.stack and j < len(self.weights):
            x = x + self.weights[j].to(x.dtype) * self.stack.pop()
        return x

    def leave(self, i: int, x: torch.Tensor) -> None:
        if i < self.n_encoder:
            self.stack.append(x)


def add_loop_embedding(x: torch.Tensor, table: torch.Tensor, steps: Sequence[Step], i: int) -> torch.Tensor:
    """Loop embedding: at the first step of each pass of a shared core (role core or repeat), add a
    learned vector for the loop index, so a shared block can tell its passes apart.

    Source: per-iteration embeddings of parameter-golf #1110 (via the field notes); the table starts at
    zero, so it begins as a no-op. Loops beyond the trained ones (evaluation at more loops) reuse the
    last row.
    """
    st = steps[i]
    if st.role in ("core", "repeat") and (i == 0 or steps[i - 1].loop != st.loop or steps[i - 1].role != st.role):
        x = x + table[min(st.loop, len(table) - 1)].to(x.dtype)
    return x
