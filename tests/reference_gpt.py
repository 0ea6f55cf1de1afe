"""An independent, minimal parameter-golf baseline GPT (flat, no tricks), written from the facts in
shared/reference/parameter-golf.md. Parameter names match RecurGPT so state dicts load across; the
code shares nothing with recur_lib.model, so agreement is evidence, not tautology."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RefAttn(nn.Module):
    def __init__(self, d: int, h: int, kv: int) -> None:
        super().__init__()
        self.h, self.kv, self.hd = h, kv, d // h
        self.q, self.o = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.k, self.v = nn.Linear(d, kv * self.hd, bias=False), nn.Linear(d, kv * self.hd, bias=False)
        self.q_gain = nn.Parameter(torch.ones(h))

    def forward(self, x: torch.Tensor, base: float) -> torch.Tensor:
        B, T, D = x.shape
        q = self.q(x).reshape(B, T, self.h, self.hd).permute(0, 2, 1, 3)
        k = self.k(x).reshape(B, T, self.kv, self.hd).permute(0, 2, 1, 3)
        v = self.v(x).reshape(B, T, self.kv, self.hd).permute(0, 2, 1, 3)
        q = F.rms_norm(q, (self.hd,))
        k = F.rms_norm(k, (self.hd,))
        freqs = torch.arange(T, dtype=torch.float32)[:, None] * (base ** (-torch.arange(0, self.hd, 2).float() / self.hd))[None]
        cos, sin = freqs.cos(), freqs.sin()

        def rope(t: torch.Tensor) -> torch.Tensor:
            a, b = t.chunk(2, dim=-1)
            return torch.cat([a * cos + b * sin, b * cos - a * sin], dim=-1)

        q, k = rope(q), rope(k)
        q = q * self.q_gain.view(1, -1, 1, 1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o(y.permute(0, 2, 1, 3).reshape(B, T, D))


class RefMLP(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.fc, self.proj = nn.Linear(d, hidden, bias=False), nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.relu(self.fc(x)) ** 2)


class RefBlock(nn.Module):
    def __init__(self, d: int, h: int, kv: int, hidden: int) -> None:
        super().__init__()
        self.attn, self.mlp = RefAttn(d, h, kv), RefMLP(d, hidden)
        self.attn_scale, self.mlp_scale = nn.Parameter(torch.ones(d)), nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.zeros(2, d))


class RefGPT(nn.Module):
    def __init__(self, vocab: int, d: int, n_layers: int, h: int, kv: int, hidden: int, softcap: float, base: float) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(RefBlock(d, h, kv, hidden) for _ in range(n_layers))
        self.skip_weights = nn.Parameter(torch.ones(n_layers // 2, d))
        self.softcap, self.base = softcap, base

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        norm = lambda t: F.rms_norm(t, (t.shape[-1],))  # noqa: E731
        x = x0 = norm(self.tok_emb(idx))
        n_enc = len(self.blocks) // 2
        stack = []
        for i, blk in enumerate(self.blocks):
            if i >= n_enc and stack:
                x = x + self.skip_weights[i - n_enc] * stack.pop()
            x = blk.resid_mix[0] * x + blk.resid_mix[1] * x0
            x = x + blk.attn_scale * blk.attn(norm(x), self.base)
            x = x + blk.mlp_scale * blk.mlp(norm(x))
            if i < n_enc:
                stack.append(x)
        logits = norm(x) @ self.tok_emb.weight.t()
        return self.softcap * torch.tanh(logits / self.softcap)
