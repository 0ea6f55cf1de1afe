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


# -- the baseline's rule (train_gpt.py quantize_float_tensor), pinned on hand-computed cases ---------------

def _fp16(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float16))


def test_baseline_row_under_the_floor() -> None:
    """max |w| < 1: the scale floors at 1/127 and the clip (a hair under the max) shaves the top code."""
    q, s = quantize_rows(torch.tensor([[0.5, -0.25, 0.1, 0.0]]), 8, 99.99984, "baseline")
    # clip = 0.25 + (0.9999984 * 3 - 2) * 0.25 = 0.4999988; scale = max(clip / 127, 1 / 127) = 1 / 127
    assert q.tolist() == [[63, -32, 13, 0]]  # 0.4999988 * 127 = 63.4998 -> 63 (the row max alone would give 64)
    assert float(s[0]) == _fp16(1 / 127)


def test_baseline_row_above_the_floor() -> None:
    q, s = quantize_rows(torch.tensor([[2.0, -1.0, 0.5, 3.0]]), 8, 99.99984, "baseline")
    clip = 2.0 + (0.9999984 * 3 - 2) * 1.0  # 2.9999952
    scale = clip / 127
    assert q.tolist() == [[round(2.0 / scale), round(-1.0 / scale), round(0.5 / scale), 127]] == [[85, -42, 21, 127]]
    assert float(s[0]) == _fp16(scale)


def test_baseline_clips_an_outlier_and_rowmax_does_not_floor() -> None:
    w = torch.tensor([[0.1, 0.2, 0.3, 0.4, 10.0]])
    q, s = quantize_rows(w, 8, 75.0, "baseline")  # rank 0.75 * 4 = 3: clip = 0.4 exactly, under the floor
    assert q.tolist() == [[13, 25, 38, 51, 51]] and float(s[0]) == _fp16(1 / 127)  # 10.0 clipped to 0.4
    qr, sr = quantize_rows(torch.tensor([[0.1, 0.2, 0.3, 0.4]]), 8, 100.0, "rowmax")
    assert qr.tolist() == [[32, 64, 95, 127]] and float(sr[0]) == _fp16(0.4 / 127)  # whole range, no floor


def test_baseline_vector_gets_one_fp32_scale_without_floor() -> None:
    from recur_lib.quant import quantize_tensor_baseline
    q, s = quantize_tensor_baseline(torch.tensor([0.5, -0.25, 0.1, 0.0]), 8)
    scale = (0.25 + (0.9999984 * 3 - 2) * 0.25) / 127  # clip / 127, no 1/127 floor for vectors
    assert s.dtype == torch.float32 and float(s[0]) == pytest.approx(scale, rel=1e-6)
    assert q.tolist() == [127, -64, 25, 0]
    zero_q, zero_s = quantize_tensor_baseline(torch.zeros(3), 8)
    assert float(zero_s[0]) == 1.0 and zero_q.tolist() == [0, 0, 0]


def test_baseline_keeps_small_tensors_float_and_quantizes_large_ones() -> None:
    from recur_lib.export import tensor_plan
    base = Config.from_name("smoke", {"quant.scheme": "baseline", "quant.keep_float_max_numel": 1000})
    row = base.override({"quant.scheme": "rowmax"})
    assert tensor_plan("blocks.0.attn_scale", torch.ones(64), base) == ("fp32", 32)      # control, small: fp32
    assert tensor_plan("blocks.0.attn.q.weight", torch.ones(16, 16), base) == ("fp16", 16)  # small matrix: fp16
    assert tensor_plan("blocks.0.attn.q.weight", torch.ones(64, 64), base) == ("int", 8)
    assert tensor_plan("blocks.0.attn_scale", torch.ones(4096), base) == ("int_tensor", 8)  # the baseline's order
    assert tensor_plan("blocks.0.attn_scale", torch.ones(4096), row) == ("fp32", 32)
    assert tensor_plan("tok_emb.weight", torch.ones(64, 64), base.override({"quant.embed_bits": 16})) == ("fp16", 16)


@pytest.mark.parametrize("n", [2, 3, 17, 64, 1000, 70_000])
@pytest.mark.parametrize("pct", [99.99984, 99.9, 97.0, 50.0])
def test_row_quantile_is_torch_quantile_bitwise(n: int, pct: float) -> None:
    from recur_lib.quant import row_quantile
    a = torch.randn(5, n).abs()
    assert torch.equal(row_quantile(a, pct / 100), torch.quantile(a, pct / 100, dim=1))


@pytest.mark.parametrize("scheme", ["baseline", "rowmax"])
@pytest.mark.parametrize("bits", [3, 6, 8])
def test_qat_simulates_the_export_codes_of_either_scheme(scheme: str, bits: int) -> None:
    from recur_lib.export import quantize_tensor
    cfg = Config.from_name("smoke", {"quant.scheme": scheme, "quant.export_bits": bits})
    w = torch.randn(24, 40) * 0.05
    lin = QLinear(40, 24, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    set_qat(lin, bits, cfg.quant.clip_percentile, scheme)
    assert torch.equal(lin.effective_weight().detach(), dequantize_rows(*quantize_tensor(w, bits, cfg)))
    q, _ = quantize_rows(w, bits, cfg.quant.clip_percentile, scheme)
    assert q.abs().max() <= qmax(bits) == 2 ** (bits - 1) - 1


def test_quant_noise_is_within_half_a_step_trains_through_and_stops_in_eval() -> None:
    from recur_lib.quant import quant_noise, row_scales, set_quant_noise
    w = torch.randn(8, 32, requires_grad=True)
    noisy = quant_noise(w, 6, 100.0, "rowmax")
    _, scale = row_scales(w, 6, 100.0, "rowmax")
    assert ((noisy - w).detach().abs() <= scale[:, None] / 2 + 1e-7).all() and not torch.equal(noisy, w)
    noisy.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    lin = QLinear(32, 8, bias=False)
    assert set_quant_noise(lin, 6) == 1
    assert not torch.equal(lin.effective_weight(), lin.weight)
    lin.eval()
    assert torch.equal(lin.effective_weight(), lin.weight)


def test_late_qat_by_step_or_by_lr_multiplier() -> None:
    from recur_lib.train import lr_scale, qat_on
    by_step = Config.from_name("smoke", {"train.iterations": 100, "quant.qat_bits": 6, "quant.qat_start_frac": 0.85})
    assert [qat_on(s, 1.0, by_step) for s in (84, 85)] == [False, True]
    by_lr = Config.from_name("smoke", {"train.iterations": 100, "train.warmdown_iters": 40, "quant.qat_bits": 6,
                                       "quant.qat_start_frac": 1.0, "quant.qat_below_lr_scale": 0.5})
    on = [s for s in range(100) if qat_on(s, lr_scale(s, 0.0, by_lr), by_lr)]
    assert on[0] == 81 and on == list(range(81, 100))  # warmdown from 60: the multiplier is 0.475 at step 81
    assert not qat_on(99, 0.0, Config.from_name("smoke"))  # no QAT bits, no QAT
