"""Muon, and the explicit routing table that decides which optimizer trains each parameter.

Muon (Keller Jordan, 2024): SGD with Nesterov momentum whose update matrix is replaced by the nearest
semi-orthogonal matrix, computed with 5 Newton-Schulz steps (coefficients 3.4445, -4.7750, 2.0315) in
bf16, then scaled by a shape rule:

    keller     sqrt(max(1, rows/cols))       the parameter-golf baseline
    moonlight  0.2 * sqrt(max(rows, cols))   matches AdamW's update RMS (Moonlight, 2025)
    none       1

Distributed like the baseline: every rank keeps the (cheap, elementwise) momentum of every matrix, but
orthogonalises only the matrices i with i % world_size == rank; one all-reduce of the flat bf16 update
then gives all ranks every update. Momentum buffers are thus identical on all ranks, so rank 0's
optimizer state is the whole state.
Warnings: for 2-D matrices only; not for embeddings, heads or 1-D tensors (hence the routing table).
For thin matrices (a rank-8 LoRA factor of 576x8: keller scale 8.49) the scale rule matters: #1096
reports rank-8 per-loop LoRA diverging under Muon; the LoRA ablation varies exactly this.

Why not torch.optim.Muon (torch 2.13): ours computes the baseline's update bitwise (the official
train_gpt.py's `Muon.step`, every shape, nesterov on and off, with its momentum warmup), and torch's
does not, in four ways (`benchmarks/muon_compare.py`, `results/benchmarks/muon_compare.csv`: 7 shapes
from 8x64 to 1024x512, 10 steps, lr 0.04):

* Momentum is an EMA there (`buf.lerp_(g, 1 - m)`, nesterov `g.lerp(buf, m)`), a sum here
  (`buf = m * buf + g`, nesterov `g + m * buf`). At constant momentum torch's input to Newton-Schulz
  is ours times (1 - m), which the normalisation removes; while the trainer warms the momentum up
  (0.85 -> 0.95 by setting group["momentum"]) the weights of past gradients differ, and the update
  direction with them: 38-61% relative (Frobenius) difference per step by step 10.
* Its Newton-Schulz iteration is also bf16, but fuses scale and sum into `addmm`, so it rounds
  differently: 2.6-3.6% relative difference on the same input; a step takes 19-30% less time on one CPU thread.
  With constant momentum its updates differ from ours by 2.6-4.7% per step, about what bf16 rounding
  itself is worth (the same iteration in float32 differs from ours by 2.4-4.3%).
* No work split: every rank orthogonalises every matrix (world_size times our work; a two-process gloo
  run: 12 Newton-Schulz calls per rank against our 6), where ours splits them over ranks and sums
  one bf16 all-reduce. Both give every rank the single-process result bitwise.
* Only the `keller` ("original") and `moonlight` ("match_rms_adamw") rules, applied to the lr in
  float32 rather than to the bf16 update; no `none` rule and no MuonEq-R row normalisation.
Weight decay is the same in both (p *= 1 - lr * wd, before the scaled update); torch's defaults to 0.1.

Routing: `ROUTES` maps name patterns to groups; every parameter must match exactly one rule, or
construction fails naming it. There is no `ndim == 2 -> Muon` default.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .config import Config

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise G (the U V^T of its SVD) in bf16."""
    a, b, c = NS_COEFFS
    X = G.bfloat16()
    X = X / (X.norm() + eps)
    transposed = G.size(0) > G.size(1)
    if transposed:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if transposed else X


SCALE_RULES = {
    "keller": lambda rows, cols: math.sqrt(max(1.0, rows / cols)),
    "moonlight": lambda rows, cols: 0.2 * math.sqrt(max(rows, cols)),
    "none": lambda rows, cols: 1.0,
}


class Muon(torch.optim.Optimizer):
    """Muon: momentum, Newton-Schulz orthogonalisation, a shape scale, decoupled weight decay.

    `row_normalize` is MuonEq-R (parameter-golf #1217): each row of the momentum update is scaled to
    unit norm before Newton-Schulz, so rows with large gradients do not dominate the orthogonalised
    direction. Our reading of #1217's text ("row-normalize the update before NS"). #1406's README names
    it; its code has no row normalisation (reference/seeds/1406.json), so seed-1406 leaves it off.
    """

    def __init__(self, params: list[torch.Tensor] | list[dict[str, Any]], lr: float, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, scale_rule: str = "keller", weight_decay: float = 0.0,
                 row_normalize: bool = False) -> None:
        """params: tensors, or param groups (dicts with "params" and per-group settings such as "lr")."""
        if scale_rule not in SCALE_RULES:
            raise ValueError(f"unknown Muon scale rule {scale_rule!r}; choose from {list(SCALE_RULES)}")
        params = list(params)
        tensors = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
        for p in tensors:
            if p.ndim != 2:
                raise ValueError(f"Muon trains 2-D matrices only, got a tensor of shape {tuple(p.shape)}")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                      scale_rule=scale_rule, weight_decay=weight_decay, row_normalize=row_normalize))

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        world = dist.get_world_size() if dist.is_initialized() else 1
        rank = dist.get_rank() if dist.is_initialized() else 0
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=torch.bfloat16)
            scale_fn = SCALE_RULES[group["scale_rule"]]
            offset = 0
            for i, p in enumerate(params):
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.mul_(group["momentum"]).add_(p.grad)
                if i % world == rank:
                    g = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                    if group.get("row_normalize"):
                        g = g / (g.norm(dim=1, keepdim=True) + 1e-7)
                    g = newton_schulz(g, group["ns_steps"]) * scale_fn(*p.shape)
                    flat[offset:offset + p.numel()] = g.flatten()
                offset += p.numel()
            if world > 1:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p in params:
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(flat[offset:offset + p.numel()].view_as(p).to(p.dtype), alpha=-group["lr"])
                offset += p.numel()


# -- routing ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    pattern: str   # full match against the parameter name
    group: str
    why: str


ROUTES: tuple[Route, ...] = (
    Route(r"blocks\.\d+\.(attn\.(q|k|v|o)|mlp\.(fc|proj))\.weight", "matrices", "block projections: Muon"),
    Route(r"(bigram|value_embed)\.proj\.weight", "matrices", "trick projections into the model width: Muon"),
    Route(r"loop_lora\.b\d+_l\d+\.\w+\.(A|B)", "lora", "LoRA factor matrices: optim.lora_optimizer"),
    Route(r"loop_lora\.b\d+_l\d+\.\w+\.(u|v)", "lora_vectors", "rank-1 LoRA vectors: AdamW (1-D)"),
    Route(r"tok_emb\.weight", "embed", "token embedding (tied head): Adam"),
    Route(r"(bigram|value_embed)\.table\.weight", "embed", "lookup tables: Adam"),
    Route(r"lm_head\.weight", "head", "untied head: Adam"),
    Route(r"blocks\.\d+\.(attn_scale|mlp_scale|resid_mix|mix_logit|attn\.q_gain)", "scalars", "control tensors: Adam"),
    Route(r"skip_weights|loop_gains|loop_embed|step_scales|smear\.gate", "scalars", "control tensors: Adam"),
    Route(r"step_controls\.(attn_scale|mlp_scale|resid_mix|q_gain)", "scalars", "per-step control tensors: Adam"),
)


class RoutingError(ValueError):
    """A parameter matches no routing rule, or more than one."""


def route_parameters(model: torch.nn.Module) -> dict[str, list[tuple[str, torch.Tensor]]]:
    groups: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for name, p in model.named_parameters():
        hits = [r for r in ROUTES if re.fullmatch(r.pattern, name)]
        if len(hits) != 1:
            what = "no routing rule" if not hits else f"{len(hits)} rules ({[r.pattern for r in hits]})"
            raise RoutingError(f"parameter {name!r} {tuple(p.shape)} matches {what}; "
                               "add or fix a rule in recur_lib/muon.py ROUTES")
        groups.setdefault(hits[0].group, []).append((name, p))
    return groups


def _lora_parts(named: list[tuple[str, torch.Tensor]], o: Any) -> list[dict[str, Any]]:
    """The LoRA factors as two param groups of one optimizer, A then B, each with its lr: the LoRA
    ablation steers the factors apart (optim.lora_lr_a, lora_lr_b, lora_b_step_mult). Two groups
    with equal lr compute what one group does, bitwise (each matrix is updated on its own)."""
    a = [p for n, p in named if n.endswith(".A")]
    b = [p for n, p in named if n.endswith(".B")]
    return [part for part in ({"params": a, "lr": o.lora_lr_a or o.lora_lr},
                              {"params": b, "lr": (o.lora_lr_b or o.lora_lr) * o.lora_b_step_mult}) if part["params"]]


class Optimizers:
    """The optimizers of one model, built from the routing table and the config."""

    def __init__(self, model: torch.nn.Module, cfg: Config) -> None:
        o = cfg.optim
        self.groups = route_parameters(model)
        adam = dict(betas=(o.beta1, o.beta2), eps=o.adam_eps)
        spec = {  # group -> (kind, lr, weight decay, scale rule)
            "matrices": ("muon", o.matrix_lr, o.weight_decay, o.muon_scale_rule),
            "lora": (o.lora_optimizer, o.lora_lr, o.lora_weight_decay, o.lora_scale_rule),
            "lora_vectors": ("adamw", o.lora_lr, o.lora_weight_decay, None),
            "embed": ("adamw", o.tied_embed_lr, o.embed_weight_decay, None),
            "head": ("adamw", o.head_lr, 0.0, None),
            "scalars": ("adamw", o.scalar_lr, o.scalar_weight_decay, None),
        }
        self.spec = {g: spec[g] for g in self.groups}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        for g, named in self.groups.items():
            kind, lr, wd, rule = spec[g]
            parts = _lora_parts(named, o) if g == "lora" else [{"params": [p for _, p in named], "lr": lr}]
            if kind == "muon":
                opt: torch.optim.Optimizer = Muon(parts, lr=lr, momentum=o.muon_momentum, ns_steps=o.muon_ns_steps,
                                                  scale_rule=rule, weight_decay=wd,
                                                  row_normalize=o.muon_row_normalize and g == "matrices")
            else:
                opt = torch.optim.AdamW(parts, lr=lr, weight_decay=wd, **adam)
            for pg in opt.param_groups:
                pg["base_lr"] = pg["lr"]
            self.optimizers[g] = opt

    def set_lr_scale(self, scale: float, lora_scale: float = 1.0) -> None:
        """Every group's lr = its base lr x scale (the LR schedule); LoRA groups also x lora_scale."""
        for g, opt in self.optimizers.items():
            for pg in opt.param_groups:
                pg["lr"] = pg["base_lr"] * scale * (lora_scale if g in ("lora", "lora_vectors") else 1.0)

    def set_muon_momentum(self, momentum: float) -> None:
        for opt in self.optimizers.values():
            if isinstance(opt, Muon):
                for pg in opt.param_groups:
                    pg["momentum"] = momentum

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {g: opt.state_dict() for g, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"checkpoint optimizer groups {sorted(state)} differ from this model's {sorted(self.optimizers)}")
        for g, opt in self.optimizers.items():
            opt.load_state_dict(state[g])

    def table(self) -> str:
        """The routing table as text: group, optimizer, lr, wd, scale rule, tensors, parameters, examples."""
        rows = [f"{'group':<13} {'optimizer':<9} {'lr':>8} {'wd':>6} {'scale':<9} {'tensors':>7} {'params':>11}  examples"]
        for g, named in self.groups.items():
            kind, _, wd, rule = self.spec[g]
            n = sum(p.numel() for _, p in named)
            ex = ", ".join(name for name, _ in named[:2]) + (", ..." if len(named) > 2 else "")
            lr = "/".join(f"{pg['base_lr']:.4g}" for pg in self.optimizers[g].param_groups)  # A/B for LoRA factors
            rows.append(f"{g:<13} {kind:<9} {lr:>8} {wd:>6.3g} {rule or '-':<9} {len(named):>7} {n:>11,}  {ex}")
        return "\n".join(rows)
