"""The Parameter Golf baseline model, written flat: the best first read before recur_lib.model.

This is the GPT of the challenge's `train_gpt.py`, 9 blocks x dim 512 by default: GQA attention
(8 query heads, 4 KV heads) with RoPE, RMS-normalised q and k and a learned per-head query gain; a
relu^2 MLP; per-block `attn_scale`, `mlp_scale` and `resid_mix` (a learned mix of the residual
stream with x0, the normalised input embedding); U-Net skip weights that add the first half's
outputs to the mirrored second half; a head tied to the embedding; a tanh logit softcap.

It shares no code with recur_lib.model, so agreement between the two is evidence, not tautology;
parameter names match RecurGPT's, so a flat RecurGPT with tricks off loads here with strict=True.
tests/test_model.py checks RecurGPT against it bitwise (float32 logits); benchmarks/bench.py times it
as "baseline", the architecture without our schedule machinery. Weights start at PyTorch's defaults
except where the init is part of the architecture (q_gain 1.5, resid_mix [1, 0], unit scales, skips):
both users load weights or only time them.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))  # the baseline's RMSNorm has no learned gain


def rope_tables(T: int, head_dim: int, base: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, (T, hd/2) each, rebuilt every forward: microseconds, and no cache to go stale."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    freqs = torch.outer(torch.arange(T, dtype=torch.float32, device=device), inv_freq)  # (T, hd/2)
    return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # train_gpt.py rotates channel i with channel i + hd/2 (two halves), not adjacent pairs
    a, b = x.chunk(2, dim=-1)
    return torch.cat((a * cos + b * sin, b * cos - a * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        kv_dim = n_kv_heads * self.head_dim
        self.q, self.k = nn.Linear(dim, dim, bias=False), nn.Linear(dim, kv_dim, bias=False)
        self.v, self.o = nn.Linear(dim, kv_dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.q_gain = nn.Parameter(torch.full((n_heads,), 1.5))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        kv_dim = self.n_kv_heads * self.head_dim
        # one GEMM for q, k and v (as the benchmark has always timed it), kept as three parameters so
        # the names match RecurGPT's
        w = torch.cat((self.q.weight, self.k.weight, self.v.weight))
        q, k, v = F.linear(x, w).split((D, kv_dim, kv_dim), dim=-1)
        q = q.reshape(B, T, self.n_heads, self.head_dim).transpose(1, 2)     # (B, H, T, hd)
        k = k.reshape(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        v = v.reshape(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        # normalising q and k bounds the logits, so q_gain alone sets each head's sharpness
        q, k = apply_rope(rms_norm(q), cos, sin), apply_rope(rms_norm(k), cos, sin)
        q = q * self.q_gain[:, None, None]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.o(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc, self.proj = nn.Linear(dim, hidden, bias=False), nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.attn, self.mlp = CausalSelfAttention(dim, n_heads, n_kv_heads), MLP(dim, mlp_hidden)
        self.attn_scale, self.mlp_scale = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.ones(dim))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))  # rows: x, x0

    def forward(self, x: torch.Tensor, x0: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # every block may pull the token embedding back in, so deep blocks still see token identity
        x = self.resid_mix[0] * x + self.resid_mix[1] * x0
        x = x + self.attn_scale * self.attn(rms_norm(x), cos, sin)
        return x + self.mlp_scale * self.mlp(rms_norm(x))


class BaselineGPT(nn.Module):
    def __init__(self, vocab_size: int = 1024, dim: int = 512, n_layers: int = 9, n_heads: int = 8,
                 n_kv_heads: int = 4, mlp_hidden: int = 1024, logit_softcap: float = 30.0,
                 rope_base: float = 10000.0) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(Block(dim, n_heads, n_kv_heads, mlp_hidden) for _ in range(n_layers))
        self.skip_weights = nn.Parameter(torch.ones(n_layers // 2, dim))  # one per (encoder, decoder) pair
        self.head_dim, self.logit_softcap, self.rope_base = dim // n_heads, logit_softcap, rope_base

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) without targets; with them, the mean cross-entropy the baseline trains on."""
        cos, sin = rope_tables(idx.size(1), self.head_dim, self.rope_base, idx.device)
        x = x0 = rms_norm(self.tok_emb(idx))
        n_enc, skips = len(self.blocks) // 2, []
        for i, block in enumerate(self.blocks):
            if i >= n_enc and skips:  # last in, first out: block n_enc gets block n_enc - 1's output
                x = x + self.skip_weights[i - n_enc] * skips.pop()
            x = block(x, x0, cos, sin)
            if i < n_enc:
                skips.append(x)
        logits = F.linear(rms_norm(x), self.tok_emb.weight)  # tied head: no separate output matrix to pay for
        logits = self.logit_softcap * torch.tanh(logits / self.logit_softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
