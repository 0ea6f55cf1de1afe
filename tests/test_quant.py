"""Quantizers shared by QAT and export: codes in range, exact train/export agreement, STE gradients."""
from __future__ import annotations

import pytest
import torch

from recur_lib import Config, build_model
from recur_lib.quant import QLinear, dequantize_rows, fake_quant, qmax, quantize_rows, set_qat


@pytest.mark.parametrize("bits", [4, 5, 6, 8])
def test_codes_and_scales(bits: int) -> None:
    w = torch.randn(32, 48)
    w[3] = 0.0  # an all-zero row
    q, s = quantize_rows(w, bits)
    assert q.dtype == torch.int8 and s.dtype == torch.float16
    assert q.abs().max() <= qmax(bits) and (q.abs().amax(dim=1)[torch.arange(32) != 3] == qmax(bits)).all()
    err = (dequantize_rows(q, s) - w).abs()
    assert (err <= s.float()[:, None] / 2 + 1e-6).all()  # round-to-nearest within half a step
    assert (q[3] == 0).all()


def test_clip_percentile_clips_outliers() -> None:
    w = torch.randn(4, 1000)
    w[:, 0] = 100.0
    q_max, s_max = quantize_rows(w, 8, 100.0)
    q_clip, s_clip = quantize_rows(w, 8, 99.0)
    assert (s_clip < s_max).all() and (q_clip[:, 0] == 127).all()


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_fake_quant_forward_is_export_rounding_and_backward_is_identity(bits: int) -> None:
    w = torch.randn(16, 24, requires_grad=True)
    fq = fake_quant(w, bits)
    assert torch.equal(fq.detach(), dequantize_rows(*quantize_rows(w.detach(), bits)))
    (fq * torch.arange(24.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(24.0).expand(16, 24))


def test_qat_switch_on_a_model() -> None:
    torch.manual_seed(0)
    m = build_model(Config.from_name("smoke"))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randint(0, 1024, (2, 16))
    plain = m(x)
    assert set_qat(m, 6) == 3 * 6  # six projections in each of three blocks
    quantized = m(x)
    assert not torch.equal(plain, quantized)
    # the QAT forward is the forward of a model holding the exported (dequantized) weights
    ref = build_model(Config.from_name("smoke"))
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        for mod in ref.modules():
            if isinstance(mod, QLinear):
                mod.weight.copy_(dequantize_rows(*quantize_rows(mod.weight, 6)))
    assert torch.equal(ref(x), quantized)
    set_qat(m, 0)
    assert torch.equal(m(x), plain)
