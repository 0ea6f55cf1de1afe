"""Fused ops: the same math as the plain PyTorch expression they replace, in fewer passes over memory.

At the CPU presets' widths (dim 64, vocab 1024) the logits are the largest tensor of a training step,
so the softcap + cross-entropy head is worth fusing; measured before/after in README's Performance.
"""
from __future__ import annotations

import torch


class _SoftcapCrossEntropy(torch.autograd.Function):
    """mean CE of cap * tanh(logits / cap). The backward is softmax - onehot times tanh's derivative,
    written into the saved buffer: one exp pass and one tanh_backward pass instead of autograd's chain
    of div, tanh, mul, log_softmax and nll backward ops (each a full pass over the logits)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, cap: float) -> torch.Tensor:  # type: ignore[override]
        t = torch.tanh(logits.float() / cap)
        z = t * cap
        lse = torch.logsumexp(z, dim=-1)
        loss = (lse - z.gather(-1, targets[:, None]).squeeze(-1)).mean()
        ctx.save_for_backward(z, t, lse, targets)
        ctx.in_dtype, ctx.used = logits.dtype, False
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        if ctx.used:  # the saved buffer became the gradient on the first call
            raise RuntimeError("softcap_cross_entropy: backward through this graph twice is not supported "
                               "(set run.fused_head=false to use autograd's version)")
        ctx.used = True
        z, t, lse, targets = ctx.saved_tensors
        p = z.sub_(lse[:, None]).exp_()                                   # softmax, in place
        p[torch.arange(len(targets), device=p.device), targets] -= 1.0
        p.mul_(grad / len(targets))
        return torch.ops.aten.tanh_backward(p, t).to(ctx.in_dtype), None, None


def softcap_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, cap: float) -> torch.Tensor:
    """F.cross_entropy(cap * tanh(logits / cap), targets) for (N, V) logits, in float32."""
    return _SoftcapCrossEntropy.apply(logits, targets, cap)
