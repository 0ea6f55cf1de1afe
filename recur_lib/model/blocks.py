"""The transformer block of the parameter-golf baseline: attention, MLP, block.

Follows `train_gpt.py` of openai/parameter-golf: parameter-free RMSNorm, GQA attention through
`F.scaled_dot_product_attention` with RoPE, RMS-normalised q/k and a learnable per-head query gain,
relu^2 MLP, and per-block `attn_scale`, `mlp_scale` and `resid_mix` (a learned mix of the residual
with the input embedding x0). Output projections start at zero, so each block starts as identity.

A block's forward takes an optional `StepExtras` so that one shared block can run differently per
loop (LoRA deltas, loop gains, XSA, value embedding) without any branching on the block itself.

Per-block options (all off by default, and then the forward is the baseline's op for op): partial RoPE
(`rope_dims`), the LeakyReLU(0.5)^2 MLP (`mlp_act`), Output-LN (`output_norm`), Birkhoff mixing
(`birkhoff`) and LN scale (`ln_scale`); each is a documented unit in tricks.py or here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..quant import QLinear
from .tricks import birkhoff_mix, exclusive_self_attention, leaky_relu2, output_norm


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    """RoPE tables, computed for the longest length seen so far and cached (not saved).

    Partial RoPE (rope_dims < head_dim, 0 = all): the tables cover only the first rope_dims dims of
    each head, with frequencies base^(-2i / rope_dims), and `apply_rotary` leaves the other dims as they
    are, so they carry position-free content. Source: the parameter-golf #1406 records lineage
    (ROPE_DIMS=16 of head dim 64; the same code in #1096). Differences: no NTK rescaling of the base for
    sequences longer than training (the lineage's Rotary has one). Warnings: rope_dims must be even;
    the fewer rotated dims, the lower the positional resolution of q.k.
    """

    def __init__(self, head_dim: int, base: float, rope_dims: int = 0) -> None:
        super().__init__()
        rd = rope_dims or head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, rd, 2, dtype=torch.float32) / rd))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: tuple[int, torch.device, torch.Tensor, torch.Tensor] | None = None

    def forward(self, T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        stale = self._cache is None or self._cache[0] < T or self._cache[1] != device
        if stale or (self._cache[2].is_inference() and not torch.is_inference_mode_enabled()):
            t = torch.arange(T, device=device, dtype=torch.float32)
            freqs = torch.outer(t, self.inv_freq.to(device))
            # tables made under inference_mode (TTT scoring) cannot enter autograd later: rebuilt then
            self._cache = (T, device, freqs.cos()[None, None], freqs.sin()[None, None])
        _, _, cos, sin = self._cache
        return cos[:, :, :T], sin[:, :, :T]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first 2 * cos.size(-1) dims of x (all of them unless partial RoPE); the rest pass."""
    rd = 2 * cos.size(-1)
    if rd < x.size(-1):
        return torch.cat((apply_rotary(x[..., :rd], cos, sin), x[..., rd:]), dim=-1)
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


@dataclass
class StepExtras:
    """What one schedule step adds to a (possibly shared) block."""
    lora: nn.Module | None = None          # LoopLoRA of this (block, loop), or None
    attn_gain: torch.Tensor | None = None  # (dim,) per-loop gain x clamped step scale on the attention branch
    mlp_gain: torch.Tensor | None = None   # (dim,) per-loop gain x clamped step scale on the MLP branch
    xsa: bool = False                      # exclusive self-attention at this step
    ve: torch.Tensor | None = None         # (B, T, kv_dim) value embedding to add to v
    controls: "StepControls | None" = None  # this step's own control tensors (model.step_controls)


@dataclass
class StepControls:
    """One schedule step's control tensors, used in place of its block's (`model.step_controls`): a
    shared block then scales its branches, mixes in x0 or sharpens its queries per application. None:
    the block's own."""
    attn_scale: torch.Tensor | None = None  # (dim,)
    mlp_scale: torch.Tensor | None = None   # (dim,)
    resid_mix: torch.Tensor | None = None   # (2, dim)
    q_gain: torch.Tensor | None = None      # (n_heads,)


def control_init(name: str, dim: int, n_heads: int, qk_gain_init: float) -> torch.Tensor:
    """A block's control tensor at init: branch scales 1, resid_mix [x, x0] = [1, 0] (the block starts as
    the stream itself), the query gain qk_gain_init per head. `model.step_controls` tables repeat it per step."""
    return {"attn_scale": lambda: torch.ones(dim), "mlp_scale": lambda: torch.ones(dim),
            "resid_mix": lambda: torch.stack((torch.ones(dim), torch.zeros(dim))),
            "q_gain": lambda: torch.full((n_heads,), qk_gain_init)}[name]()


def _control(own: torch.Tensor | None, c: StepControls | None, name: str) -> torch.Tensor:
    """The block's control tensor `name`, or the step's where it has its own."""
    step = getattr(c, name) if c is not None else None
    return own if step is None else step


def _weight(linear: QLinear, extras: StepExtras | None, name: str) -> torch.Tensor:
    """The projection's weight at this step: fake-quantized while QAT is on, plus this loop's LoRA delta.
    Adding B A to the (out, in) weight costs out x in x r; applying it to the activations would cost
    tokens x (in + out) x r and two passes over a (tokens, out) tensor, per target and per step."""
    w = linear.effective_weight()
    if extras is not None and extras.lora is not None:
        w = extras.lora.merge(name, w)
    return w


def _proj(linear: QLinear, x: torch.Tensor, extras: StepExtras | None, name: str) -> torch.Tensor:
    return F.linear(x, _weight(linear, extras, name), linear.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, rope_base: float, qk_gain_init: float,
                 rope_dims: int = 0, own_q_gain: bool = True) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        kv_dim = n_kv_heads * self.head_dim
        self.q = QLinear(dim, dim, bias=False)
        self.k = QLinear(dim, kv_dim, bias=False)
        self.v = QLinear(dim, kv_dim, bias=False)
        self.o = QLinear(dim, dim, bias=False)
        nn.init.zeros_(self.o.weight)  # the block starts as identity
        # with model.step_controls the steps hold the query gains (StepControls), not the block
        self.q_gain = nn.Parameter(control_init("q_gain", dim, n_heads, qk_gain_init)) if own_q_gain else None
        self.rotary = Rotary(self.head_dim, rope_base, rope_dims)

    def forward(self, x: torch.Tensor, extras: StepExtras | None = None) -> torch.Tensor:
        B, T, D = x.shape
        kv_dim = self.n_kv_heads * self.head_dim
        # one GEMM for q, k and v (three parameters, so Muon still orthogonalises each on its own)
        w = torch.cat([_weight(lin, extras, name) for lin, name in ((self.q, "q"), (self.k, "k"), (self.v, "v"))])
        q, k, v = F.linear(x, w).split((D, kv_dim, kv_dim), dim=-1)
        q = q.reshape(B, T, self.n_heads, self.head_dim).transpose(1, 2)                               # (B, H, T, hd)
        k = k.reshape(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)                            # (B, KV, T, hd)
        if extras is not None and extras.ve is not None:
            v = v + extras.ve
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)                               # (B, KV, T, hd)
        q, k = rms_norm(q), rms_norm(k)
        cos, sin = self.rotary(T, x.device)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        gain = _control(self.q_gain, extras.controls if extras is not None else None, "q_gain")
        q = q * gain.to(q.dtype)[None, :, None, None]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads)
        if extras is not None and extras.xsa:
            y = exclusive_self_attention(y, v)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)                                              # (B, T, dim)
        return _proj(self.o, y, extras, "o")


class MLP(nn.Module):
    """relu^2 MLP (baseline: hidden = 2 x dim); act = "leaky_relu2" uses `tricks.leaky_relu2` (#1096)."""

    def __init__(self, dim: int, hidden: int, act: str = "relu2") -> None:
        super().__init__()
        if act not in ("relu2", "leaky_relu2"):
            raise ValueError(f"unknown MLP activation {act!r}")
        self.leaky = act == "leaky_relu2"
        self.fc = QLinear(dim, hidden, bias=False)
        self.proj = QLinear(hidden, dim, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: torch.Tensor, extras: StepExtras | None = None) -> torch.Tensor:
        h = _proj(self.fc, x, extras, "fc")
        h = leaky_relu2(h) if self.leaky else torch.relu(h).square()
        return _proj(self.proj, h, extras, "proj")


class Block(nn.Module):
    """x <- mix(x, x0); x <- x + attn_scale * attn(norm(x)) [* gain]; x <- x + mlp_scale * mlp(norm(x)) [* gain].

    Options: output_norm moves the RMSNorm from each branch's input to its output (`tricks.output_norm`);
    birkhoff replaces resid_mix by one logit (`tricks.birkhoff_mix`; the block then has `mix_logit`
    and no `resid_mix`); ln_scale multiplies the normed branch inputs (`tricks.ln_scale_factor`; 1.0 =
    off; unused under output_norm); mlp_act and rope_dims go to the MLP and the attention.
    """

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, mlp_hidden: int, rope_base: float,
                 qk_gain_init: float, *, mlp_act: str = "relu2", rope_dims: int = 0, output_norm: bool = False,
                 birkhoff: bool = False, ln_scale: float = 1.0, step_controls: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(dim, n_heads, n_kv_heads, rope_base, qk_gain_init, rope_dims,
                                        own_q_gain="q_gain" not in step_controls)
        self.mlp = MLP(dim, mlp_hidden, mlp_act)
        # the controls named in step_controls (model.step_controls) come with each step's StepControls instead
        def own(name: str) -> nn.Parameter | None:
            return None if name in step_controls else nn.Parameter(control_init(name, dim, n_heads, qk_gain_init))
        self.attn_scale, self.mlp_scale = own("attn_scale"), own("mlp_scale")
        self.mix_logit = self.resid_mix = None
        if birkhoff:
            self.mix_logit = nn.Parameter(torch.zeros(1))  # sigmoid(0) = 0.5: half stream, half x0 (#1096)
        else:
            self.resid_mix = own("resid_mix")  # (2, dim): [x, x0]
        self.out_norm = output_norm  # Output-LN: norm the branch outputs, not their inputs
        self.ln_scale = ln_scale

    def _branch_in(self, x: torch.Tensor) -> torch.Tensor:
        if self.out_norm:
            return x
        h = rms_norm(x)
        return h * self.ln_scale if self.ln_scale != 1.0 else h

    def _branch_out(self, y: torch.Tensor) -> torch.Tensor:
        return output_norm(y) if self.out_norm else y

    def forward(self, x: torch.Tensor, x0: torch.Tensor, extras: StepExtras | None = None) -> torch.Tensor:
        c = extras.controls if extras is not None else None
        if self.mix_logit is not None:
            x = birkhoff_mix(x, x0, self.mix_logit)
        else:
            mix = _control(self.resid_mix, c, "resid_mix").to(x.dtype)
            x = mix[0] * x + mix[1] * x0
        attn_scale, mlp_scale = _control(self.attn_scale, c, "attn_scale"), _control(self.mlp_scale, c, "mlp_scale")
        a = attn_scale.to(x.dtype) * self._branch_out(self.attn(self._branch_in(x), extras))
        if extras is not None and extras.attn_gain is not None:
            a = a * extras.attn_gain.to(x.dtype)
        x = x + a
        m = mlp_scale.to(x.dtype) * self._branch_out(self.mlp(self._branch_in(x), extras))
        if extras is not None and extras.mlp_gain is not None:
            m = m * extras.mlp_gain.to(x.dtype)
        return x + m
