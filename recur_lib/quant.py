"""Symmetric per-row integer quantization, shared by QAT (training) and export.

A matrix row r is stored as int codes q in [-qmax, qmax] (qmax = 2^(bits-1) - 1) and one fp16 scale
s_r = clip_r / qmax, where clip_r is the row's |w| percentile (100 = the row's max). The scale is
rounded to fp16 *before* rounding the weights, so the codes QAT simulates are exactly the codes export
writes: `fake_quant` and `quantize_rows` share every line. QAT uses the straight-through estimator:
the forward sees dequantized weights, the backward passes gradients through unchanged.
Sources: the parameter-golf baseline (per-row int8, fp16 scales); #927 (int6 STE QAT from step 0,
against quantization error compounding through loops); #1406 (late QAT).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

BITS = (4, 5, 6, 8)


def qmax(bits: int) -> int:
    if bits not in BITS:
        raise ValueError(f"unsupported bit width {bits}; choose from {BITS}")
    return 2 ** (bits - 1) - 1


def row_scales(w: torch.Tensor, bits: int, clip_percentile: float = 100.0) -> torch.Tensor:
    """fp16-representable per-row scales (float32 tensor of shape (rows,)); all-zero rows get 1."""
    a = w.detach().float().abs()
    clip = a.amax(dim=1) if clip_percentile >= 100.0 else torch.quantile(a, clip_percentile / 100.0, dim=1)
    scale = (clip / qmax(bits)).to(torch.float16).float()
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize_rows(w: torch.Tensor, bits: int, clip_percentile: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 (rows, cols), scales fp16 (rows,)) of a 2-D tensor."""
    if w.ndim != 2:
        raise ValueError(f"quantize_rows needs a 2-D tensor, got shape {tuple(w.shape)}")
    scale = row_scales(w, bits, clip_percentile)
    m = qmax(bits)
    q = torch.clamp(torch.round(w.detach().float() / scale[:, None]), -m, m).to(torch.int8)
    return q, scale.half()


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


def fake_quant(w: torch.Tensor, bits: int, clip_percentile: float = 100.0) -> torch.Tensor:
    """w on the quantization grid in the forward; identity gradient in the backward (STE)."""
    dq = dequantize_rows(*quantize_rows(w, bits, clip_percentile)).to(w.dtype)
    return w + (dq - w).detach()


class QLinear(nn.Linear):
    """nn.Linear whose weight is fake-quantized while `qat_bits` > 0 (set by `set_qat`)."""
    qat_bits: int = 0
    qat_clip: float = 100.0

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward multiplies by: fake-quantized while QAT is on."""
        return fake_quant(self.weight, self.qat_bits, self.qat_clip) if self.qat_bits else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


def set_qat(model: nn.Module, bits: int, clip_percentile: float = 100.0) -> int:
    """Switch STE fake quantization on (bits > 0) or off (0) for every QLinear; returns how many."""
    n = 0
    for mod in model.modules():
        if isinstance(mod, QLinear):
            mod.qat_bits, mod.qat_clip = bits, clip_percentile
            n += 1
    return n
