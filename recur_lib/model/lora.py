"""Per-loop LoRA: a low-rank delta on a shared block's projections, different in every loop.

For a shared block run in loop l, projection W gets `W + B_l A_l` (A: r x in, B: out x r), added to
the weight before the matmul (cheaper than on the activations when tokens >> dim). B (or u)
starts at zero, so training starts from the shared weights and a zero-initialised LoRA is an exact
no-op. Two storage forms, because the LoRA ablation is about how the optimizer treats them:

    matrices  A (r, in) and B (out, r): 2-D tensors, which a `ndim == 2 -> Muon` rule would grab
    vectors   u (out,) and v (in,), delta = u v^T: rank 1 only, 1-D tensors (#1096, on AdamW)

Tensor names are `loop_lora.b{block}_l{loop}.{target}.{A|B|u|v}`, so the optimizer's routing table can
select every factor by pattern.
Source: parameter-golf #1096 (rank-1 vectors on AdamW; rank 8 diverged); Relaxed Recursive
Transformers (Bae et al. 2024) for per-loop LoRA on shared layers.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class LoRAFactor(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int, form: str) -> None:
        super().__init__()
        self.form = form
        if form == "vectors":
            if rank != 1:
                raise ValueError(f"the 'vectors' LoRA form is rank 1, got rank {rank}")
            self.u = nn.Parameter(torch.zeros(out_features))
            self.v = nn.Parameter(torch.randn(in_features) / in_features ** 0.5)
        else:
            self.A = nn.Parameter(torch.randn(rank, in_features) / in_features ** 0.5)
            self.B = nn.Parameter(torch.zeros(out_features, rank))

    def weight_delta(self) -> torch.Tensor:
        """B A (or u v^T) as an (out, in) matrix, to add to the projection's weight."""
        if self.form == "vectors":
            return torch.outer(self.u, self.v)
        return self.B @ self.A


class LoopLoRA(nn.ModuleDict):
    """The LoRA factors of one (block, loop): one LoRAFactor per target projection."""

    def __init__(self, shapes: dict[str, tuple[int, int]], rank: int, form: str) -> None:
        super().__init__({name: LoRAFactor(i, o, rank, form) for name, (i, o) in shapes.items()})

    def merge(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """weight + this loop's delta for projection `name` (weight itself when it has no factor)."""
        if name not in self:
            return weight
        return weight + self[name].weight_delta().to(weight.dtype)
