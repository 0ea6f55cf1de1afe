"""Symmetric per-row integer quantization, shared by QAT (training) and export.

A matrix row r is stored as int codes q in [-qmax, qmax] (qmax = 2^(bits-1) - 1) and one fp16 scale.
Two rules for the scale (`quant.scheme`):

* "baseline", the parameter-golf baseline's int8 export (`quantize_float_tensor` in `train_gpt.py`),
  generalised to any width: clip_r = the row's |w| quantile at quant.clip_percentile (99.99984 there),
  the row clamped to [-clip_r, clip_r], scale_r = max(clip_r / qmax, 1 / qmax) in fp32, codes
  round(w / scale_r), and the scale stored in fp16 (so loading multiplies by the fp16 scale, not the
  one the codes were rounded with). The floor 1/qmax means a row whose clip is below 1 sits on a fixed
  grid of step 1/qmax whatever its magnitude: in trained small models most rows do, and "int8" then
  behaves like about 7 bits. Only int8 is the baseline's; other widths keep its rule (assumed).
* "rowmax": scale_r = clip_r / qmax (clip_r the row's max at clip_percentile 100), rounded to fp16
  *before* the weights are, with no floor: every row uses its whole code range.

`fake_quant` and `quantize_rows` share every line, so the codes QAT simulates are exactly the codes
export writes, under either rule. QAT uses the straight-through estimator: the forward sees
dequantized weights, the backward passes gradients through unchanged.
Sources: the parameter-golf baseline (per-row int8, fp16 scales, the clip and the floor); #927 (int6
STE QAT from step 0, against quantization error compounding through loops); #1406 (late QAT).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

BITS = (3, 4, 5, 6, 8)
SCHEMES = ("baseline", "rowmax")
BASELINE_CLIP_PERCENTILE = 99.99984  # train_gpt.py: INT8_CLIP_PERCENTILE


def qmax(bits: int) -> int:
    if bits not in BITS:
        raise ValueError(f"unsupported bit width {bits}; choose from {BITS}")
    return 2 ** (bits - 1) - 1


def row_quantile(a: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile(a, q, dim=1) with linear interpolation, bitwise, from the top few values of
    each row instead of a full sort when q is near 1 (QAT runs this in every forward)."""
    n = a.size(1)
    rank = torch.tensor(q, dtype=a.dtype) * (n - 1)     # computed in the input dtype, as torch.quantile does
    below = int(rank)
    k = n - below
    if k > 16 or n < 2:
        return torch.quantile(a, q, dim=1)
    top = torch.topk(a, k, dim=1, sorted=True).values  # descending: top[:, -1] is rank `below`
    lo = top[:, -1]
    hi = top[:, -2] if rank.item() > below else lo
    return torch.lerp(lo, hi, (rank - below).to(a.dtype))


def row_clip(w: torch.Tensor, clip_percentile: float) -> torch.Tensor:
    a = w.detach().float().abs()
    return a.amax(dim=1) if clip_percentile >= 100.0 else row_quantile(a, clip_percentile / 100.0)


def row_scales(w: torch.Tensor, bits: int, clip_percentile: float = 100.0, scheme: str = "rowmax"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(clip, scale) per row, float32: the clip the row is clamped to and the scale its codes are
    rounded with (fp16-representable under "rowmax"; all-zero rows get scale 1 there)."""
    m = qmax(bits)
    clip = row_clip(w, clip_percentile)
    if scheme == "baseline":
        return clip, (clip / m).clamp_min(1.0 / m)
    if scheme != "rowmax":
        raise ValueError(f"unknown quantization scheme {scheme!r}; choose from {SCHEMES}")
    scale = (clip / m).to(torch.float16).float()
    return clip, torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize_rows(w: torch.Tensor, bits: int, clip_percentile: float = 100.0, scheme: str = "rowmax"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 (rows, cols), scales fp16 (rows,)) of a 2-D tensor."""
    if w.ndim != 2:
        raise ValueError(f"quantize_rows needs a 2-D tensor, got shape {tuple(w.shape)}")
    clip, scale = row_scales(w, bits, clip_percentile, scheme)
    m = qmax(bits)
    x = w.detach().float()
    if scheme == "baseline":
        x = torch.maximum(torch.minimum(x, clip[:, None]), -clip[:, None])
    q = torch.clamp(torch.round(x / scale[:, None]), -m, m).to(torch.int8)
    return q, scale.half()


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


def quantize_tensor_baseline(t: torch.Tensor, bits: int, clip_percentile: float = BASELINE_CLIP_PERCENTILE
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline's rule for a float tensor that is not a matrix (vectors, scalars, 3-D): one fp32
    scale for the whole tensor, clip / qmax from the same quantile, 1.0 when the clip is 0, no floor.
    Returns (codes int8 of t's shape, scale float32 of shape (1,))."""
    m = qmax(bits)
    x = t.detach().float()
    flat = x.abs().reshape(1, -1)
    clip = float(row_clip(flat, clip_percentile)[0]) if x.numel() else 0.0
    scale = torch.tensor([clip / m if clip > 0 else 1.0], dtype=torch.float32)
    q = torch.clamp(torch.round(torch.clamp(x, -clip, clip) / scale), -m, m).to(torch.int8)
    return q, scale


def fake_quant(w: torch.Tensor, bits: int, clip_percentile: float = 100.0, scheme: str = "rowmax") -> torch.Tensor:
    """w on the quantization grid in the forward; identity gradient in the backward (STE)."""
    dq = dequantize_rows(*quantize_rows(w, bits, clip_percentile, scheme)).to(w.dtype)
    return w + (dq - w).detach()


def quant_noise(w: torch.Tensor, bits: int, clip_percentile: float = 100.0, scheme: str = "rowmax") -> torch.Tensor:
    """Noisy QAT: w plus uniform noise of one quantization step of its row (U(-s/2, s/2), s the row's
    scale at `bits`), the gradient flowing to w unchanged. The weight learns to tolerate rounding
    without being rounded. Source: parameter-golf #363 (one int8 step on shared weights: gap 0.37 ->
    0.002) and #1096 (int6 noise on the shared blocks for the whole run). Ours draws from torch's
    global generator, so a resumed run repeats the same noise."""
    _, scale = row_scales(w, bits, clip_percentile, scheme)
    return w + (torch.rand_like(w) - 0.5) * scale.to(w.dtype)[:, None]


class QLinear(nn.Linear):
    """nn.Linear whose weight is fake-quantized while `qat_bits` > 0 (set by `set_qat`), and noised
    by one quantization step while training with `noise_bits` > 0 (set by `set_quant_noise`)."""
    qat_bits: int = 0
    qat_clip: float = 100.0
    qat_scheme: str = "rowmax"
    noise_bits: int = 0

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward multiplies by: noised in training, fake-quantized while QAT is on."""
        w = self.weight
        if self.noise_bits and self.training:
            w = quant_noise(w, self.noise_bits, self.qat_clip, self.qat_scheme)
        if not self.qat_bits:
            return w
        return fake_quant(w, self.qat_bits, self.qat_clip, self.qat_scheme)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


def _set_qlinears(module: nn.Module, **attrs: object) -> int:
    layers = [m for m in module.modules() if isinstance(m, QLinear)]
    for m in layers:
        for k, v in attrs.items():
            setattr(m, k, v)
    return len(layers)


def set_quant_noise(module: nn.Module, bits: int, clip_percentile: float = 100.0, scheme: str = "rowmax") -> int:
    """Noisy QAT on (bits > 0) or off for every QLinear under `module`; returns how many."""
    return _set_qlinears(module, noise_bits=bits, qat_clip=clip_percentile, qat_scheme=scheme)


def set_qat(model: nn.Module, bits: int, clip_percentile: float = 100.0, scheme: str = "rowmax") -> int:
    """Switch STE fake quantization on (bits > 0) or off (0) for every QLinear; returns how many."""
    return _set_qlinears(model, qat_bits=bits, qat_clip=clip_percentile, qat_scheme=scheme)
