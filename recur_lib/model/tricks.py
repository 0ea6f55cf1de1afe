"""The tricks, one unit each: the seeds' (off by default and, when off, never called) and the
baseline's U-Net skips (on by default, as in `train_gpt.py`).

Each docstring says what the trick does, where it comes from, how ours differs, and what to watch.
"""
from __future__ import annotations

import math
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
    Source: parameter-golf #927 (all 7 applications in its code; "last 4 loops" in its README) and #1406
    (its last 4 blocks); "exclusive self-attention".
    Differences: none intended; applied to the last N schedule steps, or the last N loops with
    `model.last_n_unit = "loops"` (`last_n_mask`), whatever blocks they run.
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
    Used in the last N schedule steps (or loops or blocks: `last_n_mask`), or at chosen steps
    (`model.ve_steps`). Source: parameter-golf #927 (dim 128, its last 2 applications), #1406 (its last 2
    blocks), #1096 (steps 9-10 of 14). Differences: one table and one projection shared by all N steps; the
    projection starts at zero; no learned VE scales (the three PRs have them).
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
    runs it over its 7 block applications with 3 encoder steps. Ours counts schedule steps, not blocks, so
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

    Source: per-iteration embeddings of parameter-golf #1110
    (https://github.com/openai/parameter-golf/pull/1110); the table starts at zero, so it begins as a
    no-op. Loops beyond the trained ones (evaluation at more loops) reuse the last row.
    """
    st = steps[i]
    if st.role in ("core", "repeat") and (i == 0 or steps[i - 1].loop != st.loop or steps[i - 1].role != st.role):
        x = x + table[min(st.loop, len(table) - 1)].to(x.dtype)
    return x


# -- the #1096 / #855 stability tricks and the #1406-lineage block details ----------------------------

LEAKY_SLOPE = 0.5


def leaky_relu2(x: torch.Tensor) -> torch.Tensor:
    """LeakyReLU(0.5)^2: the MLP activation `leaky_relu(x, 0.5) ** 2` in place of the baseline's relu(x)^2.

    Negative pre-activations keep a gradient (slope 0.5 before squaring, so x^2 / 4 on that side) instead
    of a dead zero. Source: parameter-golf #1096 (`F.leaky_relu(up(x), negative_slope=0.5).square()`), the
    same line in the #1406 records lineage (#549 onward). Differences: none intended (slope fixed at 0.5).
    Warnings: the output is never negative and is symmetric-ish around 0, so the down projection sees a
    larger mean input than with relu^2; nothing is re-scaled for that.
    """
    return F.leaky_relu(x, LEAKY_SLOPE).square()


def output_norm(y: torch.Tensor) -> torch.Tensor:
    """Output-LN: a parameter-free RMSNorm on a branch's *output* (attention, MLP), applied in place of
    the usual RMSNorm on the branch's *input*: `x + a * norm(attn(x))`, `x + m * norm(mlp(x))`.

    Every branch then adds a unit-RMS update whatever its weights do, so the stream cannot blow up
    over loops of a shared block. Source: parameter-golf #1096 ("outputln" block mode, from #855: "nothing
    works without it"): in its code the shared (core) blocks drop both input norms and normalise both
    branch outputs (attn_out_norm, mlp_out_norm); prelude and coda stay pre-norm. q and k are still
    RMS-normalised inside attention, so only v and the MLP see the un-normalised stream.
    Differences: ours keeps the block's attn_scale / mlp_scale gains (1 at init, after the norm; #1096's
    outputln blocks have none and rely on the per-step scales), and `model.output_norm = "all"` also
    applies it to unique blocks. Warnings: output projections start at zero, and RMSNorm of a zero
    vector is zero with gradient 1/sqrt(eps) (~2900 in fp32), so the first steps see very large
    gradients through the zero-initialised projections (#1096 has the same init); ln_scale is not
    applied in these blocks (no input norm to scale, as in #1096).
    """
    return F.rms_norm(y, (y.size(-1),))


def birkhoff_mix(x: torch.Tensor, x0: torch.Tensor, logit: torch.Tensor) -> torch.Tensor:
    """Birkhoff residual mixing: a block's input is the convex combination `s x + (1 - s) x0`,
    s = sigmoid(logit), of the residual stream x and the embedding x0, in place of the baseline's
    unconstrained learned mix `resid_mix[0] * x + resid_mix[1] * x0`.

    The two weights are non-negative and sum to 1 (a doubly-stochastic, "Birkhoff polytope" mix), so
    the mix cannot amplify the stream. Source: parameter-golf #1096 code (`resid_mix_logit`, one scalar
    per shared block, init 0.0 so s = 0.5 at the start; from #855). Differences: none intended; the
    logit is a (1,) tensor. Note what it is *not*: the branches are still added plainly
    (`x + attn_out`); the convex combination is between the stream and x0, not stream and branch.
    Warnings: at init the block input is half stream, half embedding (the baseline starts at all stream).
    """
    s = torch.sigmoid(logit).to(x.dtype)
    return s * x + (1 - s) * x0


def clamped_step_scales(table: torch.Tensor, i: int, clamp: float) -> torch.Tensor:
    """Per-step scale vectors: row i of a (steps, 2, dim) table, clamped to [-clamp, clamp] in the forward;
    [0] multiplies step i's attention branch, [1] its MLP branch.

    Every schedule step (prelude, each loop of the core, coda) gets its own gains, so a shared block
    can weight its branches per pass. Source: parameter-golf #1096 (`ts_attn`, `ts_mlp`: (num_effective,
    dim), init 1, `.clamp(-4, 4)` at use, multiplying the attn/MLP branch outputs of every effective
    layer; after the output norm in its outputln blocks, before attn_scale/mlp_scale in pre-norm ones)
    and #855 ("timestep gamma capped +-4": quant gap -26-30%, stored fp16 passthrough; ours are fp32
    control tensors). Differences: one (steps, 2, dim) parameter; evaluating at more loops reuses the
    last trained loop's scales. Warnings: the clamp is on the value used, not on the parameter: a
    parameter pushed past the clamp gets zero gradient there and stays stuck at the clamp value.
    """
    return table[i].clamp(-clamp, clamp)


def ln_scale_factor(block: int) -> float:
    """LN scale: the RMS-normalised input of a block's attention and MLP is multiplied by 1/sqrt(b + 1),
    b the unique block's index, so deeper blocks start with smaller branch updates.

    Source: parameter-golf #1406 records lineage (`LN_SCALE=1`, `ln_scale_factor = 1/sqrt(layer_idx+1)`
    with layer_idx the physical block, so the repeated blocks keep theirs) and #1096 (on by default;
    only its pre-norm prelude/coda use it). Differences: none intended; a shared block has one factor for
    all its loops. Warnings: q and k are RMS-normalised after the projection, so in attention the factor
    only scales v; in the MLP relu^2 makes it a factor 1/(b + 1) on the hidden activations.
    """
    return 1.0 / math.sqrt(block + 1)


def last_n_mask(steps: Sequence[Step], n: int, unit: str, core_blocks: set[int] | frozenset[int]) -> tuple[bool, ...]:
    """Which steps of a pass count as "the last n", for XSA (`model.xsa_last_n`) and the value
    embedding (`model.ve_last_n`), in `model.last_n_unit`:

      steps  the last n schedule steps, whatever they run;
      blocks the steps running one of the last n unique blocks (by index), on every pass that runs them;
      loops  the last n passes of the looped core (steps running a core block, counted by Step.loop from
             the last pass of this schedule), plus every step after the core's last step (a hybrid's
             coda, the flat blocks after a repeat segment): they are deeper than any loop, so "the end of
             the network" includes them. Steps before the core (prelude) are never selected, even when
             n exceeds the loop count.

    core_blocks: the blocks of the trained schedule's core (role core or repeat), so a repeat schedule
    run with its repeats off counts its single segment pass as one loop.
    Source: parameter-golf #927 counts its 7 block applications (steps: VE on the last 2; XSA on all 7,
    where its README says "last 4 loops"); #1406 places them by physical block (XSA on blocks 7-10, VE on
    9-10, never on its repeated passes of blocks 4-5, which run after the stack). Differences: the
    "loops" unit and its coda rule are ours. Warnings: with unit "loops", n = 1 on a 1 + 4x3 + 1 schedule already
    selects 5 steps.
    """
    T = len(steps)
    if n <= 0:
        return (False,) * T
    if unit == "steps":
        return tuple(i >= T - n for i in range(T))
    if unit == "blocks":  # the last n unique blocks, wherever the schedule runs them
        n_blocks = 1 + max(st.block for st in steps)
        return tuple(st.block >= n_blocks - n for st in steps)
    core = [i for i, st in enumerate(steps) if st.block in core_blocks]
    if not core:
        raise ValueError("last_n_unit = 'loops' needs a schedule with a looped core (looped, hybrid, repeat)")
    first = 1 + max(steps[i].loop for i in core) - n
    core_set = set(core)
    return tuple((i in core_set and st.loop >= first) or i > core[-1] for i, st in enumerate(steps))
