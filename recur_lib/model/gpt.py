"""RecurGPT: unique blocks run by a static schedule, with the seeds' loop tricks.

    embed (+ BigramHash) -> RMSNorm (-> SmearGate) = x0
    for each schedule step i:  [U-Net skip in] [loop embedding] block(x, x0, extras_i) [skip out]
    RMSNorm -> tied head -> logit softcap

`extras_i` carries what step i adds to its block: per-loop LoRA and gains for shared blocks, the
clamped per-step scales, XSA and the value embedding in the last N steps (or loops). Per-block options
(Output-LN, Birkhoff mixing, LN scale, LeakyReLU^2, partial RoPE) are fixed when the blocks are built;
"core" scopes mean the blocks of the looped core (steps of role core or repeat). With every trick off,
extras are None and the forward is the parameter-golf baseline's, operation for operation.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config
from .blocks import Block, StepControls, StepExtras, control_init, rms_norm
from .fused import softcap_cross_entropy
from .lora import LoopLoRA
from .schedule import Step, build_schedule, format_schedule, n_unique_blocks, shared_blocks
from .tricks import (BigramHash, SmearGate, UNetSkips, ValueEmbedding, add_loop_embedding, clamped_step_scales,
                     last_n_mask, ln_scale_factor)


class RecurGPT(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        m, s = cfg.model, cfg.schedule
        self.steps = build_schedule(s)
        # #1406 switches its repeats on part-way through training: a second static schedule.
        self.repeats_on = True
        self.steps_no_repeat = build_schedule(s, repeats_on=False) if s.kind == "repeat" else self.steps
        self.tok_emb = nn.Embedding(m.vocab_size, m.dim)
        nn.init.normal_(self.tok_emb.weight, std=m.tied_embed_init_std)
        hidden = int(m.mlp_mult * m.dim)
        # the looped core's blocks: scope "core" of output_norm / birkhoff_mix, and loops of last_n_unit
        self.core_blocks = frozenset(st.block for st in self.steps if st.role in ("core", "repeat"))
        in_scope = lambda scope, b: scope == "all" or (scope == "core" and b in self.core_blocks)  # noqa: E731
        self.blocks = nn.ModuleList(
            Block(m.dim, m.n_heads, m.n_kv_heads, hidden, m.rope_base, m.qk_gain_init, mlp_act=m.mlp_act,
                  rope_dims=m.rope_dims, output_norm=in_scope(m.output_norm, b),
                  birkhoff=in_scope(m.birkhoff_mix, b), ln_scale=ln_scale_factor(b) if m.ln_scale else 1.0,
                  step_controls=m.step_controls)
            for b in range(n_unique_blocks(s)))
        n = len(self.steps)
        self.n_encoder = m.unet_encoder_steps or n // 2
        if self.n_encoder >= n:
            raise ValueError(f"model.unet_encoder_steps = {m.unet_encoder_steps} must be < the {n} schedule steps")
        n_skip = min(self.n_encoder, n - self.n_encoder) if m.use_unet_skips else 0
        self.skip_weights = nn.Parameter(torch.ones(n_skip, m.dim)) if n_skip else None
        self.smear = SmearGate(m.dim) if m.use_smear_gate else None
        self.bigram = BigramHash(m.bigram_buckets, m.bigram_dim, m.dim) if m.bigram_buckets else None
        kv_dim = m.n_kv_heads * (m.dim // m.n_heads)
        self.value_embed = ValueEmbedding(m.vocab_size, m.ve_dim, kv_dim) if m.ve_last_n or m.ve_steps else None
        self._build_loop_params(kv_dim, hidden)
        self.lm_head = None
        if not m.tie_embeddings:
            self.lm_head = nn.Linear(m.dim, m.vocab_size, bias=False)
            nn.init.zeros_(self.lm_head.weight)

    # -- per-loop parameters of shared blocks ------------------------------------------------------

    def _build_loop_params(self, kv_dim: int, hidden: int) -> None:
        m = self.cfg.model
        shared = shared_blocks(self.steps)
        self.max_loop = {b: max(st.loop for st in self.steps if st.block == b) for b in shared}
        keys = [(b, loop) for b in shared for loop in range(self.max_loop[b] + 1)]
        self.loop_keys = {k: i for i, k in enumerate(keys)}
        d = m.dim
        shapes = {"q": (d, d), "k": (d, kv_dim), "v": (d, kv_dim), "o": (d, d), "fc": (d, hidden), "proj": (hidden, d)}
        shapes = {t: shapes[t] for t in m.loop_lora_targets}
        self.loop_lora = None
        if m.loop_lora_rank and keys:
            self.loop_lora = nn.ModuleDict({f"b{b}_l{loop}": LoopLoRA(shapes, m.loop_lora_rank, m.loop_lora_form)
                                            for b, loop in keys})
        # (key, [attn, mlp], dim): float gains so one shared block can scale its branches per loop
        self.loop_gains = nn.Parameter(torch.ones(len(keys), 2, d)) if m.use_loop_scales and keys else None
        n_loops = 1 + max((st.loop for st in self.steps), default=0)
        self.loop_embed = nn.Parameter(torch.zeros(n_loops, d)) if m.use_loop_embedding and keys else None
        # (step, [attn, mlp], dim): every schedule step's branch scales, clamped at use (#1096 ts_attn/ts_mlp)
        self.step_scales = nn.Parameter(torch.ones(len(self.steps), 2, d)) if m.use_step_scales else None
        self.step_index = {(st.block, st.loop): i for i, st in enumerate(self.steps)}  # (block, loop) is unique
        # model.step_controls: (step, ...) tables of the blocks' control tensors, one row per schedule step, with
        # the blocks' inits (#927 and #341 keep attn/mlp scales, resid_mix and q_gain per effective layer)
        self.step_controls = None
        if m.step_controls:
            n = len(self.steps)
            self.step_controls = nn.ParameterDict({k: nn.Parameter(torch.stack(
                [control_init(k, d, m.n_heads, m.qk_gain_init)] * n)) for k in m.step_controls})

    def _key(self, st: Step) -> tuple[int, int] | None:
        if st.block not in self.max_loop:
            return None
        return st.block, min(st.loop, self.max_loop[st.block])  # extra eval loops reuse the last loop's

    def step_scale_row(self, st: Step) -> int:
        """The row of `step_scales` a step uses: its own in the trained schedule; loops beyond the trained
        ones reuse the last loop's row, and a repeat segment run with repeats off uses its first pass's."""
        return self.step_index[(st.block, min(st.loop, self.max_loop.get(st.block, 0)))]

    def last_n_masks(self, steps: tuple[Step, ...]) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
        """(XSA on, value embedding on) per step of this pass (`tricks.last_n_mask`)."""
        m = self.cfg.model
        ve = (tuple(i in m.ve_steps for i in range(len(steps))) if m.ve_steps
              else last_n_mask(steps, m.ve_last_n, m.last_n_unit, self.core_blocks))
        return last_n_mask(steps, m.xsa_last_n, m.last_n_unit, self.core_blocks), ve

    def _extras(self, st: Step, xsa: bool, ve_i: torch.Tensor | None) -> StepExtras | None:
        m = self.cfg.model
        key = self._key(st)
        lora = self.loop_lora[f"b{key[0]}_l{key[1]}"] if key and self.loop_lora is not None else None
        gains = self.loop_gains[self.loop_keys[key]] if key and self.loop_gains is not None else None
        if self.step_scales is not None:
            scales = clamped_step_scales(self.step_scales, self.step_scale_row(st), m.step_scale_clamp)
            gains = scales if gains is None else gains * scales
        controls = None
        if self.step_controls is not None:
            row = self.step_scale_row(st)
            controls = StepControls(**{k: t[row] for k, t in self.step_controls.items()})
        if lora is None and gains is None and not xsa and ve_i is None and controls is None:
            return None
        return StepExtras(lora=lora, attn_gain=None if gains is None else gains[0],
                          mlp_gain=None if gains is None else gains[1], xsa=xsa, ve=ve_i, controls=controls)

    # -- forward -------------------------------------------------------------------------------------

    def schedule(self, n_loops: int | None = None) -> tuple[Step, ...]:
        """The steps a forward pass runs (n_loops: evaluate at another loop count)."""
        if n_loops is not None and n_loops != self.cfg.schedule.n_loops:
            return build_schedule(self.cfg.schedule, n_loops=n_loops)
        return self.steps if self.repeats_on else self.steps_no_repeat

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, n_loops: int | None = None,
                reduction: str = "mean") -> torch.Tensor:
        """Logits (B, T, V) without targets; else the cross-entropy (mean, or per token with 'none')."""
        steps = self.schedule(n_loops)
        x = self.tok_emb(idx)
        if self.bigram is not None:
            x = x + self.bigram(idx)
        x = rms_norm(x)
        if self.smear is not None:
            x = self.smear(x)
        x0 = x
        ve = self.value_embed(idx) if self.value_embed is not None else None
        n = len(steps)
        n_enc = self.n_encoder if n == len(self.steps) else round(self.n_encoder * n / len(self.steps))
        skips = UNetSkips(self.skip_weights, n_enc)
        xsa_on, ve_on = self.last_n_masks(steps)
        for i, st in enumerate(steps):
            x = skips.enter(i, x)
            if self.loop_embed is not None:
                x = add_loop_embedding(x, self.loop_embed, steps, i)
            x = self.blocks[st.block](x, x0, self._extras(st, xsa_on[i], ve if ve_on[i] else None))
            skips.leave(i, x)
        x = rms_norm(x)
        logits = F.linear(x, self.tok_emb.weight.to(x.dtype)) if self.lm_head is None else self.lm_head(x)
        cap = self.cfg.model.logit_softcap
        if (cap > 0 and targets is not None and reduction == "mean" and self.cfg.run.fused_head
                and torch.is_grad_enabled()):
            return softcap_cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), cap)
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        return loss if reduction != "none" else loss.view_as(targets)

    # -- bookkeeping -------------------------------------------------------------------------------

    def param_groups(self) -> dict[str, int]:
        """Unique parameter counts by group (a shared block counts once)."""
        shared = set(self.max_loop)
        groups: dict[str, int] = {}
        for name, p in self.named_parameters():
            head = name.split(".")[0]
            if head == "blocks":
                head = "blocks.shared" if int(name.split(".")[1]) in shared else "blocks.unique"
            groups[head] = groups.get(head, 0) + p.numel()
        groups["total"] = sum(p.numel() for p in self.parameters())
        return groups

    def payload_bytes(self, bits: int) -> int:
        """Quantized weight payload before compression: 2-D tensors of >= 16384 entries at `bits` per
        entry plus an fp16 scale per row, everything else in fp16: a quick estimate from shapes alone
        (`export.export_artifact` measures the real artifact)."""
        total = 0
        for p in self.parameters():
            if p.ndim == 2 and p.numel() >= 16384:
                total += math.ceil(p.numel() * bits / 8) + 2 * p.shape[0]
            else:
                total += 2 * p.numel()
        return total

    def describe(self) -> str:
        s, steps = self.cfg.schedule, self.steps
        shared = sorted(self.max_loop)
        lines = [f"schedule  {s.kind}: {format_schedule(steps)}",
                 f"steps     {len(steps)} effective layers from {len(self.blocks)} unique blocks"
                 + (f"; shared blocks {shared}" if shared else ""),
                 f"unet      {self.n_encoder} encoder steps, {0 if self.skip_weights is None else len(self.skip_weights)} skips"]
        m = self.cfg.model
        unit = f" {m.last_n_unit}" if m.last_n_unit != "steps" else ""  # steps: the label as before
        tricks = [name for name, on in [
            (f"xsa(last {m.xsa_last_n}{unit})", m.xsa_last_n),
            (f"value_embed(steps {list(m.ve_steps)})" if m.ve_steps else f"value_embed(last {m.ve_last_n}{unit})",
             self.value_embed is not None),
            ("smear_gate", self.smear is not None), ("bigram_hash", self.bigram is not None),
            (f"loop_lora(r{m.loop_lora_rank}, {m.loop_lora_form})", self.loop_lora is not None),
            ("loop_scales", self.loop_gains is not None), ("loop_embedding", self.loop_embed is not None),
            (f"output_norm({m.output_norm})", m.output_norm != "off"),
            (f"birkhoff_mix({m.birkhoff_mix})", m.birkhoff_mix != "off"),
            (f"step_scales(clamp {m.step_scale_clamp:g})", self.step_scales is not None),
            ("leaky_relu2", m.mlp_act == "leaky_relu2"), (f"partial_rope({m.rope_dims})", m.rope_dims),
            ("ln_scale", m.ln_scale), (f"step_controls({', '.join(m.step_controls)})", m.step_controls)] if on]
        lines.append("tricks    " + (", ".join(tricks) if tricks else "none"))
        for k, v in self.param_groups().items():
            lines.append(f"params    {k:<14} {v:>12,}")
        for bits in (8, 6):
            lines.append(f"payload   int{bits}: {self.payload_bytes(bits):,} bytes before zstd (estimate)")
        return "\n".join(lines)


def build_model(cfg: Config) -> RecurGPT:
    return RecurGPT(cfg)
